"""Serving soak: a bounded run of mixed valid and invalid requests from many clients on loopback.

    python benchmarks/serving_soak.py [--seconds 180] [--clients 32] [--warmup 15]
                                      [--export DIR] [--quick] [--json out.json]

One ``qwthn-serve`` process (``serving.testing.ServerProcess``: ``python -m serving EXPORT``
with SERVER_FLAGS) serves the tiny demo model (``qwthn_onnx.demo``, exported here as
``benchmarks/serving_speed.py`` does) or ``--export DIR``. ``--clients`` asyncio clients, each
with its own connection, send requests back to back, each time a kind drawn at random (seeded)
by KINDS' weights:

- valid: infer with JSON tensors, infer with binary tensors both ways (Triton's extension),
  generate (greedy and seeded sampling), streamed generate, Triton's generate body (streamed or
  not), OpenAI-compatible completions and chat completions (streamed or not, several choices,
  seeded), metadata/health/metrics/config/stats GETs and ``/v1/models``, a client that drips
  its request body over ~1 s, clients that leave mid-stream or mid-generate;
- invalid: malformed JSON, wrong shapes, wrong datatypes, unknown model, bad generate
  parameters (ours, Triton's and OpenAI's), unsupported OpenAI fields, oversize bodies (declared
  and chunked), bad binary headers, unknown routes and methods; and on a raw socket: truncated
  bodies or headers, garbage bytes.

Every answer is checked. A valid one must be a 200 with the right content: infer outputs equal
(max abs <= TOLERANCE) the same request answered alone on the idle server before the load,
generated text equals the prompt's text alone, streamed pieces add up to it. An invalid one must
be refused with the expected 4xx and a JSON ``{"error": ...}`` body (OpenAI's error object
under ``/v1``), never a 5xx and never a dropped connection; a raw-socket request the client
broke itself may instead be closed without an answer (garbage gets uvicorn's own plain-text
400). The server's ``/metrics`` must count no 5xx (answers nobody read included), no
generation may still be in flight once the load stops, the server must exit 0 on SIGTERM and
log no traceback.

Resources: the server process is read from ``/proc`` every second (RSS, threads, open fds).
Phases: references on the idle server; ``--warmup`` s of the same load (allocator arenas,
onnxruntime's memory arena for each shape), ended by a burst of concurrent requests that grows
the server's lazily started thread pool to its working size (``run_burst``); a pause until the
connections are closed, whose threads and fds are the *baseline*; ``--seconds`` s of load; a
pause again. Verdict (``stability``, ``checks``): RSS over the load phase must not grow by more
than RSS_BOUND_MIB (median of its last quarter of samples minus the median of its first
quarter), and once the load stops threads and fds must be back to the baseline or below.
Exit 1 when any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from system_info import log, machine_info

from serving.testing import ProcessResources, ServerProcess, ServerProcessError, parse_sse

SEED = 0
SERVER_FLAGS = [
    "--threads", "1", "--max-batch-size", "8", "--max-body-mb", "1", "--max-tokens", "64",
    "--max-concurrent-generations", "8", "--log-level", "warning",
]  # fmt: skip
MAX_BODY = 2**20  # --max-body-mb 1
TOLERANCE = 1e-4  # max abs logits difference, answer under load vs the same request alone
GEN_TOKENS = 12
# Verdict: the load phase's RSS may grow by at most this much (last-quarter median minus
# first-quarter median). Measured here (2-core EPYC, 32 clients, 180 s): the demo server sits
# near 376 MiB after the warm-up and moves by about 2 MiB either way (glibc arenas trimmed and
# refilled); it grew 0.9 MiB over 39,000 requests. A leak of 1 KiB per request crosses the bound
# within ~16,400 requests: about 75 s of that load, or 60 s of the test's 8 clients.
RSS_BOUND_MIB = 16.0
SETTLE_S = 20.0  # longest wait for threads and fds to come back once the load stops
BURST = 64  # concurrent generate requests that end the warm-up (see run_burst)
RAW_TIMEOUT_S = 30.0  # a raw-socket client that gets neither an answer nor EOF: a hang
BINARY_HEADER = "Inference-Header-Content-Length"


class SoakError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# What the clients send, and what the answers must be
# --------------------------------------------------------------------------------------------


@dataclass
class Fixtures:
    """The requests the valid kinds choose from, with their answers alone (references)."""

    model: str
    infer_ids: list[np.ndarray]
    infer_logits: list[np.ndarray] = field(default_factory=list)
    generate_bodies: list[dict[str, Any]] = field(default_factory=list)
    generate_texts: list[str] = field(default_factory=list)
    triton_bodies: list[dict[str, Any]] = field(default_factory=list)
    triton_texts: list[str] = field(default_factory=list)
    # (path, body) of OpenAI-compatible requests; their answers alone: choice texts and usage
    openai_requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    openai_answers: list[tuple[list[str], dict[str, int]]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"/v2/models/{self.model}"


def make_fixtures(url: str, model: str, rng: np.random.Generator) -> Fixtures:
    """Requests of several shapes (some merge in a batch, some cannot), answered alone."""
    with httpx.Client(base_url=url, timeout=60) as client:
        meta = client.get(f"/v2/models/{model}")
        if meta.status_code != 200:
            raise SoakError(f"model {model!r}: {meta.status_code} {meta.text[:300]}")
        (logits,) = [o for o in meta.json()["outputs"] if o["name"] == "logits"]
        vocab = logits["shape"][-1]
        shapes = [(1, 4), (1, 4), (1, 9), (2, 4), (1, 16), (2, 9), (1, 1), (3, 5)]
        fixtures = Fixtures(model, [rng.integers(0, vocab, size=s) for s in shapes])
        for ids in fixtures.infer_ids:
            answer = client.post(f"{fixtures.base}/infer", json=_infer_json(ids))
            fixtures.infer_logits.append(_json_logits(_expect_200(answer)))
        prompts = ["12&34=", "7+8=", "99&1=", "hello", "a", "3*3="]
        fixtures.generate_bodies = [{"prompt": p, "max_new_tokens": GEN_TOKENS} for p in prompts]
        fixtures.generate_bodies.append(
            {"prompt": "42&", "max_new_tokens": GEN_TOKENS, "do_sample": True, "top_k": 20,
             "temperature": 0.8, "seed": 7}
        )  # fmt: skip
        for body in fixtures.generate_bodies:
            answer = client.post(f"{fixtures.base}/generate", json=body)
            fixtures.generate_texts.append(_expect_200(answer)["text"])
        fixtures.triton_bodies = [
            {"text_input": "12&34=", "parameters": {"max_tokens": GEN_TOKENS, "temperature": 0}},
            {"text_input": "42&", "max_tokens": GEN_TOKENS, "seed": 7, "top_k": 20,
             "exclude_input_in_output": True},
        ]  # fmt: skip
        for body in fixtures.triton_bodies:
            answer = client.post(f"{fixtures.base}/generate", json=body)
            fixtures.triton_texts.append(_expect_200(answer)["text_output"])
        chat = [{"role": "system", "content": "Add."}, {"role": "user", "content": "7+8="}]
        common = {"model": model, "max_tokens": GEN_TOKENS}
        fixtures.openai_requests = [
            ("/v1/completions", {**common, "prompt": "12&34=", "temperature": 0}),
            ("/v1/completions", {**common, "prompt": ["7+8=", "hello"], "seed": 5, "n": 2}),
            ("/v1/chat/completions", {**common, "messages": chat[1:], "temperature": 0}),
            ("/v1/chat/completions", {**common, "messages": chat, "seed": 9, "n": 2,
                                      "stop": ["&"]}),
        ]  # fmt: skip
        for path, body in fixtures.openai_requests:
            answer = _expect_200(client.post(path, json=body))
            texts = [
                c["text"] if "text" in c else c["message"]["content"] for c in answer["choices"]
            ]
            fixtures.openai_answers.append((texts, answer["usage"]))
    return fixtures


def _expect_200(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise SoakError(f"reference request: {response.status_code} {response.text[:300]}")
    return response.json()


def _infer_json(ids: np.ndarray) -> dict[str, Any]:
    tensor = {"name": "input_ids", "shape": list(ids.shape), "datatype": "INT64"}
    return {"inputs": [{**tensor, "data": ids.ravel().tolist()}], "outputs": [{"name": "logits"}]}


def _json_logits(answer: dict[str, Any]) -> np.ndarray:
    (output,) = [o for o in answer["outputs"] if o["name"] == "logits"]
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def _binary_request(ids: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """Input ids as raw little-endian INT64 after the JSON, logits asked back as raw FP32."""
    raw = ids.astype("<i8").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input_ids",
                    "shape": list(ids.shape),
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + raw, {BINARY_HEADER: str(len(header))}


def _binary_logits(response: httpx.Response) -> np.ndarray:
    length = int(response.headers[BINARY_HEADER])
    (output,) = json.loads(response.content[:length])["outputs"]
    data = response.content[length:]
    if output["name"] != "logits" or output["parameters"]["binary_data_size"] != len(data):
        raise ValueError(f"binary answer does not describe its {len(data)} bytes: {output}")
    return np.frombuffer(data, "<f4").reshape(output["shape"])


def _logits_problem(got: np.ndarray, expected: np.ndarray) -> str | None:
    if got.shape != expected.shape:
        return f"logits shape {list(got.shape)}, alone {list(expected.shape)}"
    diff = float(np.abs(got - expected).max())
    return None if diff <= TOLERANCE else f"logits differ from alone by {diff:.3g}"


def _stream_problem(events: list[tuple[str, str]], expected: str) -> str | None:
    if not events or events[-1] != ("message", "[DONE]"):
        return f"stream does not end with [DONE]: {events[-2:]}"
    if any(kind != "message" for kind, _ in events):
        return f"stream has an error event: {events[-2:]}"
    tokens = [json.loads(data) for _, data in events[:-2]]
    final = json.loads(events[-2][1])
    if [t["index"] for t in tokens] != list(range(len(tokens))):
        return "token events out of order"
    pieces = "".join(t["text"] for t in tokens)
    if pieces != final["text"] or final["text"] != expected:
        return f"streamed {pieces!r}, final {final['text']!r}, alone {expected!r}"
    return None


# --------------------------------------------------------------------------------------------
# Request kinds: each sends one request and says (status, problem or None)
# --------------------------------------------------------------------------------------------

Outcome = tuple[str, str | None]  # status ("200", "400", "closed", "left", ...), problem


@dataclass
class Client:
    """One client's connection, random stream and the shared fixtures."""

    http: httpx.AsyncClient
    host: str
    port: int
    rng: random.Random
    fixtures: Fixtures


async def infer_json(c: Client) -> Outcome:
    k = c.rng.randrange(len(c.fixtures.infer_ids))
    request = {**_infer_json(c.fixtures.infer_ids[k]), "id": f"soak-{k}"}
    r = await c.http.post(f"{c.fixtures.base}/infer", json=request)
    if r.status_code != 200:
        return str(r.status_code), r.text[:200]
    answer = r.json()
    if answer["id"] != f"soak-{k}":
        return "200", f"id {answer['id']!r} not echoed"
    return "200", _logits_problem(_json_logits(answer), c.fixtures.infer_logits[k])


async def infer_binary(c: Client) -> Outcome:
    k = c.rng.randrange(len(c.fixtures.infer_ids))
    body, headers = _binary_request(c.fixtures.infer_ids[k])
    r = await c.http.post(f"{c.fixtures.base}/infer", content=body, headers=headers)
    if r.status_code != 200:
        return str(r.status_code), r.text[:200]
    return "200", _logits_problem(_binary_logits(r), c.fixtures.infer_logits[k])


async def generate(c: Client) -> Outcome:
    k = c.rng.randrange(len(c.fixtures.generate_bodies))
    r = await c.http.post(f"{c.fixtures.base}/generate", json=c.fixtures.generate_bodies[k])
    if r.status_code != 200:
        return str(r.status_code), r.text[:200]
    text, expected = r.json()["text"], c.fixtures.generate_texts[k]
    return "200", None if text == expected else f"text {text!r}, alone {expected!r}"


async def generate_stream(c: Client) -> Outcome:
    k = c.rng.randrange(len(c.fixtures.generate_bodies))
    body = c.fixtures.generate_bodies[k]
    async with c.http.stream("POST", f"{c.fixtures.base}/generate_stream", json=body) as r:
        lines = [line async for line in r.aiter_lines()]
    if r.status_code != 200:
        return str(r.status_code), "\n".join(lines)[:200]
    return "200", _stream_problem(parse_sse(lines)[0], c.fixtures.generate_texts[k])


async def triton_generate(c: Client) -> Outcome:
    """Triton's generate body, on generate (its answer) or generate_stream (pieces of text)."""
    k = c.rng.randrange(len(c.fixtures.triton_bodies))
    body, expected = c.fixtures.triton_bodies[k], c.fixtures.triton_texts[k]
    if c.rng.random() < 0.5:
        r = await c.http.post(f"{c.fixtures.base}/generate", json=body)
        if r.status_code != 200:
            return str(r.status_code), r.text[:200]
        text = r.json()["text_output"]
        return "200", None if text == expected else f"text {text!r}, alone {expected!r}"
    async with c.http.stream("POST", f"{c.fixtures.base}/generate_stream", json=body) as r:
        lines = [line async for line in r.aiter_lines()]
    if r.status_code != 200:
        return str(r.status_code), "\n".join(lines)[:200]
    events, complete = parse_sse(lines)
    if not complete or any(kind != "message" for kind, _ in events):
        return "200", f"stream cut or with an error event: {events[-2:]}"
    text = "".join(json.loads(data)["text_output"] for _, data in events)
    return "200", None if text == expected else f"streamed {text!r}, alone {expected!r}"


async def openai_request(c: Client) -> Outcome:
    """An OpenAI-compatible completion or chat completion, streamed (with usage) or not."""
    k = c.rng.randrange(len(c.fixtures.openai_requests))
    path, body = c.fixtures.openai_requests[k]
    texts, usage = c.fixtures.openai_answers[k]
    if c.rng.random() < 0.5:
        r = await c.http.post(path, json=body)
        if r.status_code != 200:
            return str(r.status_code), r.text[:200]
        answer = r.json()
        got = [ch["text"] if "text" in ch else ch["message"]["content"] for ch in answer["choices"]]
        if (got, answer["usage"]) != (texts, usage):
            return "200", f"{got!r} {answer['usage']}, alone {texts!r} {usage}"
        return "200", None
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with c.http.stream("POST", path, json=streamed) as r:
        lines = [line async for line in r.aiter_lines()]
    if r.status_code != 200:
        return str(r.status_code), "\n".join(lines)[:200]
    return "200", _openai_stream_problem(parse_sse(lines)[0], texts, usage)


def _openai_stream_problem(
    events: list[tuple[str, str]], texts: list[str], usage: dict[str, int]
) -> str | None:
    if not events or events[-1] != ("message", "[DONE]"):
        return f"stream does not end with [DONE]: {events[-2:]}"
    chunks = [json.loads(data) for _, data in events[:-1]]
    if any("error" in chunk for chunk in chunks):
        return f"stream has an error: {chunks[-1]}"
    if chunks[-1]["choices"] or chunks[-1]["usage"] != usage:
        return f"last chunk is not the usage {usage}: {chunks[-1]}"
    got = [""] * len(texts)
    finished = set()
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        i = choice["index"]
        if i in finished:
            return f"choice {i} goes on after its finish_reason"
        got[i] += choice["text"] if "text" in choice else choice["delta"].get("content") or ""
        if choice["finish_reason"] is not None:
            finished.add(i)
    if got != texts or len(finished) != len(texts):
        return f"streamed {got!r} ({len(finished)} finished), alone {texts!r}"
    return None


async def disconnect(c: Client) -> Outcome:
    """A client that leaves: a stream after its first token (ours or OpenAI's), or a generate
    after a moment."""
    body = {"prompt": "", "max_new_tokens": 64}
    draw = c.rng.random()
    if draw < 0.25:
        completion = {"model": c.fixtures.model, "prompt": "", "max_tokens": 64, "stream": True}
        async with c.http.stream("POST", "/v1/completions", json=completion) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    return "left", None if r.status_code == 200 else f"status {r.status_code}"
        return str(r.status_code), "the stream ended before its first event"
    if draw < 0.6:
        async with c.http.stream("POST", f"{c.fixtures.base}/generate_stream", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    return "left", None if r.status_code == 200 else f"status {r.status_code}"
        return str(r.status_code), "the stream ended before its first event"
    try:
        r = await asyncio.wait_for(c.http.post(f"{c.fixtures.base}/generate", json=body), 0.05)
    except asyncio.TimeoutError:
        return "left", None
    return str(r.status_code), None if r.status_code == 200 else r.text[:200]


_METADATA: list[tuple[str, str, Callable[[Any, str], bool]]] = [
    ("GET", "/v2", lambda j, m: j["name"] == "qwthn-serve" and "generate" in j["extensions"]),
    ("GET", "/v2/health/live", lambda j, m: j == {"live": True}),
    ("GET", "/v2/health/ready", lambda j, m: j == {"ready": True}),
    ("GET", "/v2/models/{m}", lambda j, m: j["name"] == m and j["inputs"] and j["outputs"]),
    ("GET", "/v2/models/{m}/ready", lambda j, m: j == {"name": m, "ready": True}),
    ("POST", "/v2/repository/index", lambda j, m: [e["state"] for e in j] == ["READY"]),
    ("GET", "/metrics", lambda text, m: "qwthn_requests_total" in text),
    ("GET", "/v2/models/{m}/config", lambda j, m: j["name"] == m and j["input"] and j["output"]),
    ("GET", "/v2/models/{m}/stats", lambda j, m: j["model_stats"][0]["name"] == m),
    ("GET", "/v2/models/stats", lambda j, m: [s["name"] for s in j["model_stats"]] == [m]),
    ("GET", "/v1/models", lambda j, m: [d["id"] for d in j["data"]] == [m, f"{m}/1"]),
]


async def metadata(c: Client) -> Outcome:
    method, path, check = c.rng.choice(_METADATA)
    r = await c.http.request(method, path.format(m=c.fixtures.model))
    if r.status_code != 200:
        return str(r.status_code), r.text[:200]
    content = r.text if path == "/metrics" else r.json()
    return "200", None if check(content, c.fixtures.model) else f"{path}: {r.text[:200]}"


async def slow_sender(c: Client) -> Outcome:
    """A valid infer request whose body arrives in 8 pieces over ~0.8 s, on a raw socket."""
    k = c.rng.randrange(len(c.fixtures.infer_ids))
    body = json.dumps(_infer_json(c.fixtures.infer_ids[k])).encode()
    head = _head("POST", f"{c.fixtures.base}/infer", len(body))
    pieces = [body[i * len(body) // 8 : (i + 1) * len(body) // 8] for i in range(8)]

    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        for piece in pieces:
            await asyncio.sleep(0.1)
            writer.write(piece)
            await writer.drain()

    status, answer = await _raw_exchange(c, send, half_close=False)
    if status != "200":
        return status, answer[:200].decode(errors="replace")
    got = _json_logits(json.loads(answer))
    return "200", _logits_problem(got, c.fixtures.infer_logits[k])


# Invalid requests: (method, path, body or json, extra headers, expected status, fragment).
def _invalid(c: Client) -> list[tuple[str, str, Any, dict[str, str], int, str]]:
    base, ids = c.fixtures.base, {"name": "input_ids", "shape": [1, 3], "datatype": "INT64"}
    model, chat = c.fixtures.model, "/v1/chat/completions"
    hi = [{"role": "user", "content": "hi"}]
    good = {**ids, "data": [1, 2, 3]}
    binary = json.dumps({"inputs": [{**ids, "parameters": {"binary_data_size": 24}}]}).encode()
    return [
        ("POST", f"{base}/infer", b'{"inputs": [', {}, 400, "not valid JSON"),
        ("POST", f"{base}/infer", b"\xff\xfe garbage", {}, 400, "not valid JSON"),
        ("POST", f"{base}/infer", {"inputs": [{**good, "shape": [1, 4]}]}, {}, 400, "holds 4"),
        ("POST", f"{base}/infer", {"inputs": [{**good, "shape": [3]}]}, {}, 400, "input_ids"),
        ("POST", f"{base}/infer", {"inputs": [{**good, "datatype": "FP32"}]}, {}, 400, "INT64"),
        ("POST", f"{base}/infer", {"inputs": [{**good, "data": [1.5, 2, 3]}]}, {}, 400, "integ"),
        ("POST", "/v2/models/nope/infer", {"inputs": [good]}, {}, 404, "unknown model"),
        ("POST", f"{base}/versions/9/infer", {"inputs": [good]}, {}, 404, "no version '9'"),
        ("POST", f"{base}/generate", {"prompt": 5}, {}, 400, "prompt"),
        ("POST", f"{base}/generate", {"prompt": "a", "max_new_tokens": 65}, {}, 400, "limit"),
        ("POST", f"{base}/generate_stream", {"prompt": "a", "top_p": -1.0}, {}, 400, "top_p"),
        ("POST", f"{base}/infer", binary, {BINARY_HEADER: "abc"}, 400, BINARY_HEADER),
        ("POST", f"{base}/infer", binary, {BINARY_HEADER: "99999"}, 400, BINARY_HEADER),
        ("POST", f"{base}/infer", binary + b"\0" * 8, {BINARY_HEADER: str(len(binary))}, 400,
         "goes past the end"),
        ("POST", f"{base}/infer", b" " * (MAX_BODY + 2**19), {}, 413, "too large"),
        ("GET", f"{base}/infer", None, {}, 405, "not allowed"),
        ("GET", "/v2/nothing/here", None, {}, 404, "no such endpoint"),
        ("POST", f"{base}/generate", {"text_input": "a", "parameters": {"temperature": -1}}, {},
         400, "temperature must be >= 0"),
        ("POST", f"{base}/generate_stream", {"text_input": "a", "parameters": {"n": 2}}, {}, 400,
         "parameters.n"),
        ("GET", "/v2/models/nope/config", None, {}, 404, "unknown model"),
        ("GET", f"{base}/versions/9/stats", None, {}, 404, "no version '9'"),
        ("POST", "/v1/completions", {"model": "nope", "prompt": "a"}, {}, 404, "unknown model"),
        ("POST", "/v1/completions", {"model": model, "prompt": "a", "logprobs": 1}, {}, 400,
         "not supported"),
        ("POST", "/v1/completions", {"model": model, "prompt": "a", "max_tokens": 65}, {}, 400,
         "limit"),
        ("POST", chat, {"model": model, "messages": hi, "temperature": "hot"}, {}, 400,
         "temperature"),
        ("POST", chat, {"model": model, "messages": hi, "stream": True, "n": 99}, {}, 400,
         "choices"),
        ("POST", chat, {"model": model, "messages": [], "stream": True}, {}, 400, "messages"),
        ("POST", chat, b'{"model": ', {}, 400, "not valid JSON"),
        ("POST", chat, b" " * (MAX_BODY + 2**19), {}, 413, "too large"),
        ("GET", "/v1/nothing", None, {}, 404, "no such endpoint"),
    ]  # fmt: skip


async def invalid(c: Client) -> Outcome:
    method, path, payload, headers, status, fragment = c.rng.choice(_invalid(c))
    if isinstance(payload, dict):
        r = await c.http.request(method, path, json=payload, headers=headers)
    else:
        r = await c.http.request(method, path, content=payload, headers=headers)
    return str(r.status_code), _refusal_problem(r, status, fragment)


async def oversize_chunked(c: Client) -> Outcome:
    """1.5 MiB without a Content-Length (chunked): refused while it is read."""

    async def chunks() -> Any:
        for _ in range(3):
            yield b" " * 2**19

    r = await c.http.post(f"{c.fixtures.base}/infer", content=chunks())
    return str(r.status_code), _refusal_problem(r, 413, "too large")


def _refusal_problem(r: httpx.Response, status: int, fragment: str) -> str | None:
    """None when ``r`` is the expected refusal: ``{"error": message}``, or under ``/v1``
    OpenAI's ``{"error": {"message", "type", "param", "code"}}``."""
    try:
        body = r.json()
    except ValueError:
        return f"{r.status_code} without a JSON body: {r.text[:200]}"
    error = body.get("error") if isinstance(body, dict) and list(body) == ["error"] else None
    if r.request.url.path.startswith("/v1/") and isinstance(error, dict):
        fields = {"message", "type", "param", "code"}
        error = error.get("message") if set(error) == fields else None
    if r.status_code != status or not isinstance(error, str) or fragment not in error:
        return f"expected {status} naming {fragment!r}, got {r.status_code} {r.text[:200]}"
    return None


async def truncated(c: Client) -> Outcome:
    """A body shorter than its Content-Length, or headers cut off, then the client closes its
    side: the server may answer a 4xx or just close; never a 5xx, never hang."""
    body = json.dumps(_infer_json(c.fixtures.infer_ids[0])).encode()
    head = _head("POST", f"{c.fixtures.base}/infer", len(body))
    cut = head + body[: len(body) // 2] if c.rng.random() < 0.5 else head[: len(head) // 2]

    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(cut)
        await writer.drain()

    return _broken_outcome(*await _raw_exchange(c, send))


async def garbage(c: Client) -> Outcome:
    """Random bytes (sometimes after a valid request line) on a raw socket."""
    noise = c.rng.randbytes(c.rng.randrange(1, 2048))
    data = noise + b"\r\n\r\n" if c.rng.random() < 0.5 else b"POST /v2 HTTP/1.1\r\n" + noise

    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()

    return _broken_outcome(*await _raw_exchange(c, send))


def _broken_outcome(status: str, answer: bytes) -> Outcome:
    ok = status == "closed" or status.startswith("4")
    return status, None if ok else f"answered {answer[:200]!r}"


def _head(method: str, path: str, length: int) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


async def _raw_exchange(
    c: Client, send: Callable[[asyncio.StreamWriter], Awaitable[None]], half_close: bool = True
) -> tuple[str, bytes]:
    """Connect, ``send``, half-close (a broken request: the server sees its end), read to EOF:
    (status code or "closed", body). uvicorn closes a connection whose client half-closed, so
    a valid request must not (``Connection: close`` ends it instead)."""
    reader, writer = await asyncio.open_connection(c.host, c.port)
    try:
        await send(writer)
        if half_close:
            writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), RAW_TIMEOUT_S)
    finally:
        writer.close()
    if not answer:
        return "closed", b""
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b" ", 2)[1].decode(), body


@dataclass(frozen=True)
class Kind:
    run: Callable[[Client], Awaitable[Outcome]]
    valid: bool
    weight: float


KINDS: dict[str, Kind] = {
    "infer_json": Kind(infer_json, True, 30),
    "infer_binary": Kind(infer_binary, True, 15),
    "generate": Kind(generate, True, 6),
    "generate_stream": Kind(generate_stream, True, 6),
    "metadata": Kind(metadata, True, 12),
    "slow_sender": Kind(slow_sender, True, 2),
    "triton_generate": Kind(triton_generate, True, 4),
    "openai": Kind(openai_request, True, 8),
    "disconnect": Kind(disconnect, True, 4),
    "invalid": Kind(invalid, False, 20),
    "oversize_chunked": Kind(oversize_chunked, False, 1),
    "truncated": Kind(truncated, False, 3),
    "garbage": Kind(garbage, False, 3),
}


# --------------------------------------------------------------------------------------------
# The load, and the server's resources over time
# --------------------------------------------------------------------------------------------


@dataclass
class Record:
    """Every request of a phase: counts by kind and status, latencies, problems."""

    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    completed: int = 0

    def add(self, kind: str, status: str, problem: str | None, seconds: float) -> None:
        self.statuses[kind][status] += 1
        self.latencies[kind].append(seconds)
        if problem is not None:
            self.problems[kind].append(f"{status}: {problem}")
        self.completed += 1


async def _client_loop(
    url: str, index: int, fixtures: Fixtures, seed: int, deadline: float, record: Record
) -> None:
    rng = random.Random(seed * 1000 + index)
    names, weights = list(KINDS), [k.weight for k in KINDS.values()]
    parsed = httpx.URL(url)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        client = Client(http, parsed.host, parsed.port, rng, fixtures)
        while time.monotonic() < deadline:
            name = rng.choices(names, weights)[0]
            start = time.perf_counter()
            try:
                status, problem = await KINDS[name].run(client)
            except (httpx.HTTPError, OSError, asyncio.TimeoutError, ValueError, KeyError) as e:
                status, problem = "dropped", f"{type(e).__name__}: {e}"
            record.add(name, status, problem, time.perf_counter() - start)


def run_load(
    url: str, fixtures: Fixtures, clients: int, seconds: float, seed: int, record: Record
) -> None:
    """``clients`` concurrent clients for ``seconds`` (each finishes its last request), every
    request added to ``record``."""

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(_client_loop(url, i, fixtures, seed, deadline, record) for i in range(clients))
        )

    asyncio.run(main())


def run_burst(url: str, fixtures: Fixtures, record: Record) -> None:
    """BURST generate requests at once, each on its own connection, checked as ``generate``.

    The server parses generate requests in asyncio's default executor, which starts a thread
    only when all of its threads are busy and keeps it (up to min(32, cores + 4)); random load
    reaches that ceiling late, if ever. A burst at the end of the warm-up brings the pool to
    its working size, so that the baseline holds the threads the server keeps for good and a
    thread count above it after the load is a leak, not a pool that grew.
    """

    async def one(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            parsed = httpx.URL(url)
            client = Client(http, parsed.host, parsed.port, random.Random(index), fixtures)
            start = time.perf_counter()
            status, problem = await generate(client)
            record.add("generate", status, problem, time.perf_counter() - start)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(BURST)))

    asyncio.run(main())


class Sampler:
    """Reads the server's resources every ``interval`` s in a thread: (seconds since start,
    phase, requests completed so far, resources)."""

    def __init__(self, server: ServerProcess, interval: float = 1.0) -> None:
        self.server, self.interval = server, interval
        self.samples: list[dict[str, Any]] = []
        self.phase, self.record = "idle", Record()
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> ProcessResources:
        found = self.server.resources()
        self.samples.append(
            {
                "t": round(time.monotonic() - self._start, 2),
                "phase": self.phase,
                "requests": self.record.completed,
                "rss_mib": round(found.rss_bytes / 2**20, 2),
                "threads": found.threads,
                "fds": found.fds,
            }
        )
        return found

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_settled(server: ServerProcess, target: ProcessResources | None) -> ProcessResources:
    """Once the load has stopped: the resources when threads and fds are at ``target`` or below
    (None: when fds held still for a second), or after SETTLE_S whatever they are."""
    deadline = time.monotonic() + SETTLE_S
    last, still_since = server.resources(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = server.resources()
        if target is not None and now.threads <= target.threads and now.fds <= target.fds:
            return now
        if now.fds != last.fds or now.threads != last.threads:
            last, still_since = now, time.monotonic()
        elif target is None and time.monotonic() - still_since >= 1.0:
            return now
    return server.resources()


def server_counts(url: str, model: str) -> tuple[dict[str, float], float]:
    """From ``/metrics``: requests by status (all endpoints) and generations in flight."""
    text = httpx.get(url + "/metrics", timeout=30).text
    by_status: Counter[str] = Counter()
    in_flight = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "qwthn_requests_total":
                by_status[s.labels["status"]] += s.value
            elif s.name == "qwthn_generation_requests_in_flight" and s.labels["model"] == model:
                in_flight += s.value
    return dict(by_status), in_flight


def wait_generations_idle(url: str, model: str) -> float:
    """Generations in flight once they had SETTLE_S to end (0 unless one is stuck)."""
    deadline = time.monotonic() + SETTLE_S
    while (in_flight := server_counts(url, model)[1]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return in_flight


# --------------------------------------------------------------------------------------------
# Verdict
# --------------------------------------------------------------------------------------------


def stability(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """RSS over the load phase: first- and last-quarter medians, their difference (the
    verdict's figure, robust to a single spike), and a least-squares slope per 1,000 requests
    (reported for reading a trend)."""
    load = [s for s in samples if s["phase"] == "load"]
    if len(load) < 8:
        return {"ok": False, "detail": f"only {len(load)} samples in the load phase (need 8)"}
    quarter = len(load) // 4
    first = statistics.median(s["rss_mib"] for s in load[:quarter])
    last = statistics.median(s["rss_mib"] for s in load[-quarter:])
    requests = np.array([s["requests"] for s in load], float)
    rss = np.array([s["rss_mib"] for s in load])
    slope = float(np.polyfit(requests, rss, 1)[0] * 1000) if np.ptp(requests) else 0.0
    growth = last - first
    return {
        "ok": growth <= RSS_BOUND_MIB,
        "first_quarter_median_mib": first,
        "last_quarter_median_mib": last,
        "growth_mib": round(growth, 2),
        "bound_mib": RSS_BOUND_MIB,
        "slope_mib_per_1k_requests": round(slope, 4),
        "detail": f"RSS grew {growth:+.1f} MiB over the load (last-quarter median {last:.1f} vs "
        f"first-quarter {first:.1f} MiB; bound {RSS_BOUND_MIB:g} MiB); trend "
        f"{slope:+.3f} MiB per 1,000 requests",
    }


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every check of the soak: {name: {"ok", "detail"}}."""
    requests = report["requests"]
    problems = {
        k: (v["problem_count"], v["problems"]) for k, v in requests.items() if v["problems"]
    }
    valid_problems = {k: p for k, p in problems.items() if KINDS[k].valid}
    invalid_problems = {k: p for k, p in problems.items() if not KINDS[k].valid}
    seen_5xx = {
        k: n for k, v in requests.items() for s, n in v["statuses"].items() if s.startswith("5")
    }
    server_5xx = {s: n for s, n in report["server_statuses"].items() if s.startswith("5")}
    missing = sorted(set(KINDS) - {k for k, v in requests.items() if v["count"]})
    res = report["resources"]
    base, final = res["baseline"], res["final"]
    return {
        "every kind sent": {"ok": not missing, "detail": f"never sent: {missing}"},
        "valid requests answered right": {
            "ok": not valid_problems,
            "detail": _first(valid_problems),
        },
        "invalid requests refused with a 4xx": {
            "ok": not invalid_problems,
            "detail": _first(invalid_problems),
        },
        "no 5xx": {
            "ok": not seen_5xx and not server_5xx,
            "detail": f"clients saw {seen_5xx}, the server's /metrics counts {server_5xx}",
        },
        "rss stable": {"ok": report["stability"]["ok"], "detail": report["stability"]["detail"]},
        "threads back to baseline": {
            "ok": final["threads"] <= base["threads"],
            "detail": f"{base['threads']} before the load, {final['threads']} after",
        },
        "fds back to baseline": {
            "ok": final["fds"] <= base["fds"],
            "detail": f"{base['fds']} before the load, {final['fds']} after",
        },
        "no generation left running": {
            "ok": report["generations_in_flight_after"] == 0,
            "detail": f"{report['generations_in_flight_after']:g} in flight after the load",
        },
        "clean shutdown": {
            "ok": report["server_exit"] == 0 and not report["server_log_errors"],
            "detail": f"exit {report['server_exit']}; log: {report['server_log_errors'][:3]}",
        },
    }


def _first(problems: dict[str, tuple[int, list[str]]]) -> str:
    total = sum(n for n, _ in problems.values())
    shown = "; ".join(f"{k}: {v[0]}" for k, (_, v) in problems.items())
    return f"{total} problem(s); first of each kind: {shown}" if total else "none"


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)} | {
        "max": round(float(ms.max()), 2)
    }


def summarize(record: Record) -> dict[str, Any]:
    return {
        kind: {
            "valid": KINDS[kind].valid,
            "count": sum(record.statuses[kind].values()),
            "statuses": dict(sorted(record.statuses[kind].items())),
            "problems": record.problems[kind][:20],
            "problem_count": len(record.problems[kind]),
            "latency_ms": _percentiles(record.latencies[kind]) if record.latencies[kind] else {},
        }
        for kind in KINDS
    }


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def run_soak(
    export_dir: Path, workdir: Path, seconds: float, clients: int, warmup: float, seed: int = SEED
) -> dict[str, Any]:
    """The soak of one export (model name: the directory's): its report, ``checks`` in it."""
    server = ServerProcess([str(export_dir), *SERVER_FLAGS], workdir / "soak_server.log")
    model = export_dir.name
    try:
        server.wait_ready()
        log(f"server ready: {' '.join(server.command[1:])}")
        fixtures = make_fixtures(server.url, model, np.random.default_rng(seed))
        with Sampler(server) as sampler:
            idle = sampler.sample()
            log(f"warm-up: {warmup:g} s, {clients} clients ...")
            sampler.phase, warm = "warmup", sampler.record
            run_load(server.url, fixtures, clients, warmup, seed + 1, warm)
            run_burst(server.url, fixtures, warm)
            sampler.phase = "pause"
            baseline = wait_settled(server, None)
            log(f"load: {seconds:g} s, {clients} clients ...")
            sampler.record = record = Record()
            sampler.phase = "load"
            started = time.perf_counter()
            run_load(server.url, fixtures, clients, seconds, seed, record)
            elapsed = time.perf_counter() - started
            sampler.phase = "after"
            in_flight = wait_generations_idle(server.url, model)
            final = wait_settled(server, baseline)
            statuses, _ = server_counts(server.url, model)
    finally:
        exit_code = server.stop()
    samples = sampler.samples
    load_samples = [s for s in samples if s["phase"] == "load"] or samples
    log_errors = [
        line for line in server.log().splitlines() if "Traceback" in line or " ERROR " in line
    ]
    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {
            "seconds": seconds,
            "warmup_s": warmup,
            "clients": clients,
            "seed": seed,
            "server": " ".join(server.command[1:]),
            "rss_bound_mib": RSS_BOUND_MIB,
            "tolerance": TOLERANCE,
        },
        "load_seconds": round(elapsed, 1),
        "requests": summarize(record),
        "warmup_requests": warm.completed,
        "total_requests": record.completed,
        "requests_per_s": round(record.completed / elapsed, 1),
        "server_statuses": statuses,
        "generations_in_flight_after": in_flight,
        "server_exit": exit_code,
        "server_log_errors": log_errors[:10],
        "resources": {
            "idle": _mib(idle),
            "baseline": _mib(baseline),
            "final": _mib(final),
            "load_start": load_samples[0],
            "load_end": load_samples[-1],
            "peak_rss_mib": max(s["rss_mib"] for s in samples),
            "peak_threads": max(s["threads"] for s in samples),
            "peak_fds": max(s["fds"] for s in samples),
        },
        "stability": stability(samples),
        "samples": samples,
    }
    report["checks"] = checks(report)
    report["ok"] = all(c["ok"] for c in report["checks"].values())
    return report


def _mib(r: ProcessResources) -> dict[str, Any]:
    return {"rss_mib": round(r.rss_bytes / 2**20, 2), "threads": r.threads, "fds": r.fds}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def render(report: dict[str, Any], rows: int = 24) -> str:
    """The report as Markdown: requests by kind, resources, RSS over time, checks."""
    settings, res = report["settings"], report["resources"]
    machine = report["machine"]
    lines = [
        f"machine: {machine['cpu']}, {machine['cores']} cores; server and clients on the same "
        f"machine (loopback)",
        f"server: `python {settings['server']}`",
        f"load: {report['load_seconds']:g} s after a {settings['warmup_s']:g} s warm-up, "
        f"{settings['clients']} clients: {report['total_requests']:,} requests "
        f"({report['requests_per_s']:,.1f}/s; {report['warmup_requests']:,} more in the "
        f"warm-up)",
        "",
        "| kind | valid | requests | statuses | problems | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in report["requests"].items():
        statuses = ", ".join(f"{s}: {n:,}" for s, n in r["statuses"].items())
        latency = [f"{r['latency_ms'].get(q, 0):,.1f}" for q in ("p50", "p90", "p99", "max")]
        lines.append(
            f"| {kind} | {'yes' if r['valid'] else 'no'} | {r['count']:,} | {statuses} | "
            f"{r['problem_count']} | " + " | ".join(latency) + " |"
        )
    lines += [
        "",
        "Server process (from /proc):",
        "",
        "| when | RSS MiB | threads | open fds |",
        "|---|---|---|---|",
    ]
    for label, key in (
        ("idle, before the warm-up", "idle"),
        ("baseline: after the warm-up, connections closed", "baseline"),
        ("load start", "load_start"),
        ("load end", "load_end"),
        ("after the load, connections closed", "final"),
    ):
        r = res[key]
        lines.append(f"| {label} | {r['rss_mib']:.1f} | {r['threads']} | {r['fds']} |")
    lines.append(
        f"| peak | {res['peak_rss_mib']:.1f} | {res['peak_threads']} | {res['peak_fds']} |"
    )
    samples = report["samples"]
    step = max(1, len(samples) // rows)
    shown = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    lines += [
        "",
        f"RSS over time (every {step} s; all {len(samples)} samples in the JSON):",
        "",
        "| t s | phase | requests | RSS MiB | threads | fds |",
        "|---|---|---|---|---|---|",
    ]
    for s in shown:
        lines.append(
            f"| {s['t']:.0f} | {s['phase']} | {s['requests']:,} | {s['rss_mib']:.1f} | "
            f"{s['threads']} | {s['fds']} |"
        )
    lines += ["", "Checks:", ""]
    for name, c in report["checks"].items():
        lines.append(f"- {'ok' if c['ok'] else 'FAILED'}: {name} ({c['detail']})")
    lines += ["", f"Verdict: {'pass' if report['ok'] else 'FAIL'}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, help="load phase (default 180, quick 30)")
    parser.add_argument("--clients", type=int, help="concurrent clients (default 32, quick 16)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds (default 15, quick 5)")
    parser.add_argument("--quick", action="store_true", help="a short run, for a check")
    parser.add_argument("--export", type=Path, help="an export directory (default: the demo)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--json", help="also write the report, every sample included, here")
    args = parser.parse_args()
    seconds = args.seconds or (30.0 if args.quick else 180.0)
    clients = args.clients or (16 if args.quick else 32)
    warmup = args.warmup if args.warmup is not None else (5.0 if args.quick else 15.0)
    if seconds <= 0 or clients < 1 or warmup < 0:
        parser.error("--seconds must be > 0, --clients >= 1 and --warmup >= 0")
    if args.export is not None and not (args.export / "manifest.json").is_file():
        parser.error(f"{args.export} is not an export directory (no manifest.json): run "
                     f"qwthn-export first, or leave --export out to build the demo")  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serving_soak_") as tmp:
        export_dir = args.export
        if export_dir is None:
            from serving_speed import build_export  # the demo model, exported as it does

            log("building and exporting the demo model ...")
            export_dir = build_export("demo", Path(tmp))[0]
        try:
            report = run_soak(export_dir.resolve(), Path(tmp), seconds, clients, warmup, args.seed)
        except (SoakError, ServerProcessError) as e:
            print(f"FAILED: {e}", file=sys.stderr)
            return 1
    print(render(report))
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if not report["ok"]:
        failed = [name for name, c in report["checks"].items() if not c["ok"]]
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
