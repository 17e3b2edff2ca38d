"""Serving speed: throughput and latency of ``qwthn-serve`` under load, dynamic batching on and off.

    python benchmarks/serving_speed.py [--quick] [--threads 1] [--json out.json]

The demo model (the tiny Llama of ``qwthn_onnx.demo`` with the demo's 4-qubit, 2-layer QWTHN
adapters) is built in this process, saved as ``model.pt`` and exported (``export_model``,
``verify=False``) to a temporary directory. Two servers then run one after the other, never side
by side, as real processes on loopback (``python -m serving EXPORT --port P --threads T
--log-level warning``; the access log is off so it does not cost CPU per request):

- ``batching on``: ``--max-batch-size 32 --max-queue-delay-ms 5``;
- ``batching off``: ``--no-batching``.

Infer endpoint (``POST /v2/models/demo/infer``): ``input_ids`` of shape [1, 16] (one of 8 fixed
rows of random ids below the vocabulary size, so merged batches mix different rows), ``outputs:
[{"name": "logits"}]``. At concurrency N, N client threads, each with its own keep-alive
``httpx.Client``, send requests back to back: a warm-up, then a measured window; every request
started in the window is awaited. Reported per point: completed requests per second (completed /
time from the window's start until the last one finished), latency p50 and p99 as the client
sees it, mean rows per onnxruntime run (the server's ``qwthn_batch_size_sum`` / ``_count``
difference over the window), CPU used by the server and by the load-generating client (in cores:
on a small machine they compete), and errors (any non-200 answer or transport error; the run
fails if there is one). Before the load, each row is sent alone as a reference; every 20th
answer of the window is checked against it (logits within 1e-4, max abs), and the two servers'
references against each other.

Generation endpoint (``POST /v2/models/demo/generate``), only if the server exposes it: probed
with one request (Triton's generate-extension body, ``{"text_input", "parameters":
{"max_new_tokens": 16}}``, then a flat ``{"prompt", "max_new_tokens"}``); a 404 or 405 skips it
with a note. Measured on the batching server at the same concurrencies with 8 arithmetic
prompts, greedy: generated tokens per second, requests per second, latency p50/p99; tokens are
counted from the answer's token count or ids when it has them, else as characters of its text
(the demo tokenizer has one token per character). Sampled answers must equal the prompt's answer
made alone.

Target: with batching at concurrency 32, infer throughput >= 3x the unbatched server's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastapi
import httpx
import numpy as np
import onnxruntime as ort
import torch
import uvicorn
from system_info import machine_info

import qwthn_onnx
from exporters.export import ExportOptions, export_model
from qwthn_onnx import QWTHNConfig, QWTHNModel, save_model_pt
from qwthn_onnx.demo import DEMO_ADAPTER, build_char_tokenizer, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
MODEL_NAME = "demo"  # the export directory's name is the served model's name
SEQ_LEN = 16
N_PROMPTS = 8
CONCURRENCY = (1, 8, 32)
MAX_BATCH_SIZE = 32
MAX_QUEUE_DELAY_MS = 5.0
TOLERANCE = 1e-4  # max abs difference of logits, loaded answer vs the same request alone
CHECK_EVERY = 20  # check every k-th answer of a measured window
GEN_TOKENS = 16
TARGET = 3.0  # batched / unbatched infer throughput at the highest concurrency
SERVERS = {
    "on": [
        "--max-batch-size",
        str(MAX_BATCH_SIZE),
        "--max-queue-delay-ms",
        str(MAX_QUEUE_DELAY_MS),
    ],
    "off": ["--no-batching"],
}
METRICS = (
    "qwthn_batch_size",  # rows per onnxruntime run
    "qwthn_batch_requests",  # requests per onnxruntime run
    "qwthn_inference_duration_seconds",  # one onnxruntime run
    "qwthn_queue_duration_seconds",  # a request's wait in the batching queue
)


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


class BenchmarkError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# The model and the server process
# --------------------------------------------------------------------------------------------


def build_export(workdir: Path) -> tuple[Path, int]:
    """The demo model exported to ``workdir/demo``; (export directory, vocabulary size)."""
    tokenizer = build_char_tokenizer()
    base = build_tiny_model(tokenizer, "llama", seed=SEED)
    torch.manual_seed(SEED)
    model = QWTHNModel(base, QWTHNConfig(**DEMO_ADAPTER)).eval()
    save_model_pt(workdir / "model.pt", model, tokenizer)
    result = export_model(workdir / "model.pt", workdir / MODEL_NAME, ExportOptions(verify=False))
    return result.directory, int(base.config.vocab_size)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m serving EXPORT --port P ARGS`` as a subprocess, its output in a log file."""

    def __init__(self, export_dir: Path, args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "serving", str(export_dir), "--port", str(self.port), *args
        ]  # fmt: skip
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchmarkError(
                    f"server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise BenchmarkError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        """SIGTERM and wait (graceful shutdown); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise BenchmarkError("server did not stop within 30 s of SIGTERM; killed") from None
        finally:
            self._log.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? (\S+)")


def scrape(url: str) -> dict[str, float]:
    """``_sum`` and ``_count`` of METRICS from ``/metrics``, summed over their labels."""
    text = httpx.get(url + "/metrics", timeout=10).text
    values: dict[str, float] = {}
    wanted = {f"{m}{suffix}" for m in METRICS for suffix in ("_sum", "_count")}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match[1] in wanted:
            values[match[1]] = values.get(match[1], 0.0) + float(match[2])
    return values


def mean_of(delta: dict[str, float], metric: str) -> float | None:
    count = delta.get(f"{metric}_count", 0.0)
    return delta.get(f"{metric}_sum", 0.0) / count if count else None


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------


@dataclass
class Workload:
    """What the clients send: ``body(k)`` for the k-th request of a client (bytes, prepared in
    advance), ``tokens(content)`` generated tokens in an answer (None: not a generation)."""

    endpoint: str
    path: str
    bodies: list[bytes]
    tokens: Callable[[bytes], int] | None = None


@dataclass
class ClientResult:
    latencies: list[float] = field(default_factory=list)  # seconds, window only
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    samples: list[tuple[int, bytes]] = field(default_factory=list)  # (prompt index, content)


def infer_body(ids: np.ndarray) -> bytes:
    request = {
        "inputs": [
            {
                "name": "input_ids",
                "shape": list(ids.shape),
                "datatype": "INT64",
                "data": ids.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "logits"}],
    }
    return json.dumps(request).encode()


def logits_of(content: bytes) -> np.ndarray:
    (output,) = [o for o in json.loads(content)["outputs"] if o["name"] == "logits"]
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def alone(server: Server, path: str, body: bytes) -> bytes:
    """One request on an idle server (a reference); raises unless it answers 200."""
    response = httpx.post(server.url + path, content=body, timeout=60)
    if response.status_code != 200:
        raise BenchmarkError(f"reference request: {response.status_code} {response.text[:300]}")
    return response.content


def run_point(
    server: Server, workload: Workload, concurrency: int, warmup_s: float, duration_s: float
) -> tuple[dict[str, Any], list[ClientResult]]:
    """N clients back to back: warm-up, then a window of ``duration_s``; metrics and CPU are
    read while every client waits at a barrier, so they cover the window's requests only."""
    results = [ClientResult() for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    window: dict[str, float] = {}
    n = len(workload.bodies)
    headers = {"content-type": "application/json"}

    def worker(index: int) -> None:
        result = results[index]
        k = index
        try:
            with httpx.Client(base_url=server.url, timeout=120, headers=headers) as client:

                def send(measured: bool) -> None:
                    nonlocal k
                    prompt = k % n
                    k += 1
                    start = time.perf_counter()
                    try:
                        response = client.post(workload.path, content=workload.bodies[prompt])
                    except httpx.HTTPError as e:
                        result.errors.append(f"{type(e).__name__}: {e}")
                        return
                    latency = time.perf_counter() - start
                    if response.status_code != 200:
                        result.errors.append(f"{response.status_code}: {response.text[:300]}")
                        return
                    if not measured:
                        return
                    result.latencies.append(latency)
                    if workload.tokens is not None:
                        result.tokens += workload.tokens(response.content)
                    if len(result.latencies) % CHECK_EVERY == 1:
                        result.samples.append((prompt, response.content))

                warm_end = time.perf_counter() + warmup_s
                while time.perf_counter() < warm_end:
                    send(measured=False)
                barrier.wait()  # warmed up: the main thread reads metrics and sets the window
                barrier.wait()
                while time.perf_counter() < window["end"]:
                    send(measured=True)
                barrier.wait()  # done: the main thread reads metrics again
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:
            result.errors.append(f"client crashed: {type(e).__name__}: {e}")
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
        before = scrape(server.url)
        cpu_server, cpu_client = server.cpu_seconds(), time.process_time()
        window["start"] = time.perf_counter()
        window["end"] = window["start"] + duration_s
        barrier.wait()
        barrier.wait()
        elapsed = time.perf_counter() - window["start"]
        cpu_server = server.cpu_seconds() - cpu_server
        cpu_client = time.process_time() - cpu_client
        after = scrape(server.url)
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        errors = [e for r in results for e in r.errors]
        raise BenchmarkError(f"a client failed: {errors[:3]}") from None
    for t in threads:
        t.join()

    latencies = np.array([x for r in results for x in r.latencies]) * 1e3
    delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    completed = len(latencies)
    tokens = sum(r.tokens for r in results)
    point = {
        "endpoint": workload.endpoint,
        "concurrency": concurrency,
        "seconds": elapsed,
        "completed": completed,
        "errors": sum(len(r.errors) for r in results),
        "error_messages": sorted({e for r in results for e in r.errors})[:10],
        "requests_per_s": completed / elapsed,
        "tokens": tokens if workload.tokens is not None else None,
        "tokens_per_s": tokens / elapsed if workload.tokens is not None else None,
        "p50_ms": float(np.percentile(latencies, 50)) if completed else None,
        "p99_ms": float(np.percentile(latencies, 99)) if completed else None,
        "mean_ms": float(latencies.mean()) if completed else None,
        "max_ms": float(latencies.max()) if completed else None,
        "rows_per_run": mean_of(delta, "qwthn_batch_size"),
        "requests_per_run": mean_of(delta, "qwthn_batch_requests"),
        "ort_runs": delta.get("qwthn_batch_size_count", 0.0),
        "ort_run_ms": (mean_of(delta, "qwthn_inference_duration_seconds") or 0.0) * 1e3,
        "queue_ms": (mean_of(delta, "qwthn_queue_duration_seconds") or 0.0) * 1e3,
        "server_cpu_cores": cpu_server / elapsed,
        "server_cpu_ms_per_request": cpu_server * 1e3 / completed if completed else None,
        "ort_ms_per_request": (
            delta.get("qwthn_inference_duration_seconds_sum", 0.0) * 1e3 / completed
            if completed
            else None
        ),
        "client_cpu_cores": cpu_client / elapsed,
        "metrics_delta": delta,
        "latencies_ms": [round(float(x), 4) for x in latencies],
    }
    return point, results


def check_infer(results: list[ClientResult], references: list[np.ndarray]) -> tuple[int, float]:
    """(answers checked, largest max-abs difference) of the sampled answers; raises on a miss."""
    worst = 0.0
    checked = 0
    for r in results:
        for prompt, content in r.samples:
            got = logits_of(content)
            if got.shape != references[prompt].shape:
                raise BenchmarkError(f"logits shape {got.shape} != {references[prompt].shape}")
            diff = float(np.abs(got - references[prompt]).max())
            worst = max(worst, diff)
            checked += 1
            if not diff <= TOLERANCE:
                raise BenchmarkError(
                    f"answer for prompt {prompt} differs from the same request alone by {diff:.3g} "
                    f"(tolerance {TOLERANCE})"
                )
    return checked, worst


# --------------------------------------------------------------------------------------------
# The generation endpoint (if there is one)
# --------------------------------------------------------------------------------------------

_COUNT_KEYS = ("generated_tokens", "num_generated_tokens", "completion_tokens", "num_tokens")
_ID_KEYS = ("token_ids", "output_ids", "generated_token_ids", "tokens")
_TEXT_KEYS = ("text_output", "generated_text", "text", "output", "completion")


def _find(answer: Any, keys: tuple[str, ...], kind: type) -> tuple[str, Any] | None:
    """The first ``key`` (depth-first, in ``keys`` order per level) holding a ``kind``."""
    if isinstance(answer, dict):
        for key in keys:
            if isinstance(answer.get(key), kind) and not isinstance(answer.get(key), bool):
                return key, answer[key]
        for value in answer.values():
            found = _find(value, keys, kind)
            if found:
                return found
    if isinstance(answer, list):
        for value in answer:
            found = _find(value, keys, kind)
            if found:
                return found
    return None


def token_counter(answer: Any) -> tuple[str, Callable[[bytes], int]] | None:
    """How to count generated tokens in answers shaped like ``answer``: (description, fn)."""
    for keys, kind, count, what in (
        (_COUNT_KEYS, int, lambda v: v, "the answer's '{}'"),
        (_ID_KEYS, list, len, "the length of the answer's '{}'"),
        (_TEXT_KEYS, str, len, "characters of the answer's '{}' (one token each)"),
    ):
        found = _find(answer, keys, kind)
        if found:
            return what.format(found[0]), lambda c, k=keys, t=kind, f=count: f(
                _find(json.loads(c), k, t)[1]  # type: ignore[index]
            )
    return None


def generation_text(content: bytes) -> Any:
    """What must not change under load: the answer's text (or ids) for a greedy prompt."""
    answer = json.loads(content)
    found = _find(answer, _TEXT_KEYS, str) or _find(answer, _ID_KEYS, list)
    return found[1] if found else None


def probe_generation(server: Server, prompts: list[str]) -> tuple[Workload | None, dict]:
    """The generation workload if the server exposes ``/generate``; a note either way."""
    path = f"/v2/models/{MODEL_NAME}/generate"
    shapes = {
        "triton": lambda p: {"text_input": p, "parameters": {"max_new_tokens": GEN_TOKENS}},
        "flat": lambda p: {"prompt": p, "max_new_tokens": GEN_TOKENS},
    }
    tried = []
    for shape, make in shapes.items():
        body = json.dumps(make(prompts[0])).encode()
        headers = {"content-type": "application/json"}
        response = httpx.post(server.url + path, content=body, headers=headers, timeout=60)
        tried.append(f"{shape} body: {response.status_code} {response.text[:200]}")
        if response.status_code in (404, 405):
            return None, {"exposed": False, "note": f"POST {path} answered {tried[-1]}; skipped"}
        if response.status_code != 200:
            continue
        counter = token_counter(response.json())
        if counter is None:
            note = f"POST {path} answered 200 but no token count, ids or text found: {tried[-1]}"
            return None, {"exposed": True, "note": note + "; skipped"}
        bodies = [json.dumps(make(p)).encode() for p in prompts]
        info = {"exposed": True, "body": shape, "tokens_from": counter[0], "probe": tried}
        return Workload("generate", path, bodies, counter[1]), info
    return None, {"exposed": True, "note": f"POST {path} rejected every body tried: {tried}"}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(points: list[dict[str, Any]]) -> list[str]:
    header = [
        "endpoint", "batching", "concurrency", "requests/s", "tokens/s", "p50 ms", "p99 ms",
        "rows / ORT run", "server CPU", "client CPU", "errors",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in points:
        cells = [
            p["endpoint"],
            p["batching"],
            str(p["concurrency"]),
            fmt(p["requests_per_s"]),
            fmt(p["tokens_per_s"]),
            fmt(p["p50_ms"], 2),
            fmt(p["p99_ms"], 2),
            fmt(p["rows_per_run"], 2),
            fmt(p["server_cpu_cores"], 2),
            fmt(p["client_cpu_cores"], 2),
            str(p["errors"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def where_time_goes(by_key: dict[tuple, dict[str, Any]]) -> list[str]:
    """Lines that explain the infer numbers: the server's CPU per request and onnxruntime's
    share of it at the highest concurrency, and what batching costs a lone request."""
    lines = []
    top = max(CONCURRENCY)
    for batching in SERVERS:
        p = by_key.get(("infer", batching, top))
        if p and p["completed"]:
            lines.append(
                f"- batching {batching}, concurrency {top}: the server used "
                f"{p['server_cpu_ms_per_request']:.2f} ms of CPU per request "
                f"({p['server_cpu_cores']:.2f} cores), onnxruntime runs "
                f"{p['ort_ms_per_request']:.2f} ms of wall time per request "
                f"({p['ort_runs']:.0f} runs of {p['ort_run_ms']:.2f} ms, "
                f"{p['rows_per_run']:.1f} rows each); mean queue wait {p['queue_ms']:.2f} ms"
            )
    on, off = by_key.get(("infer", "on", 1)), by_key.get(("infer", "off", 1))
    if on and off and on["completed"] and off["completed"]:
        lines.append(
            f"- concurrency 1: p50 {on['p50_ms']:.2f} ms with batching against "
            f"{off['p50_ms']:.2f} ms without (a lone request waits up to "
            f"--max-queue-delay-ms {MAX_QUEUE_DELAY_MS:g} for others to join it)"
        )
    return lines


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "torch": str(torch.__version__),
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
        "httpx": httpx.__version__,
        "qwthn_onnx": qwthn_onnx.__version__,
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per point (1 s warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="the server's onnxruntime threads")
    parser.add_argument("--duration", type=float, help="seconds per point (default 10, quick 3)")
    parser.add_argument("--json", help="also write all raw numbers, machine and versions here")
    args = parser.parse_args()
    duration = args.duration or (3.0 if args.quick else 10.0)
    warmup = 1.0 if args.quick else 2.0
    torch.set_num_threads(1)
    machine = machine_info()
    common = ["--threads", str(args.threads), "--log-level", "warning"]
    rng = np.random.default_rng(SEED)
    start = time.perf_counter()
    points: list[dict[str, Any]] = []
    references: dict[str, list[np.ndarray]] = {}
    checks: dict[str, Any] = {}
    generation: dict[str, Any] = {}
    failure: str | None = None

    with tempfile.TemporaryDirectory(prefix="serving_speed_") as tmp:
        workdir = Path(tmp)
        log("building and exporting the demo model ...")
        export_dir, vocab = build_export(workdir)
        ids = rng.integers(0, vocab, size=(N_PROMPTS, 1, SEQ_LEN), dtype=np.int64)
        infer = Workload(
            "infer", f"/v2/models/{MODEL_NAME}/infer", [infer_body(row) for row in ids]
        )
        random.seed(SEED)
        prompts = [f"{random.randint(0, 99)}&{random.randint(0, 99)}=" for _ in range(N_PROMPTS)]
        try:
            for batching, flags in SERVERS.items():
                log(f"starting the server, batching {batching}: {' '.join(flags + common)}")
                server = Server(export_dir, flags + common, workdir / f"server_{batching}.log")
                try:
                    server.wait_ready()
                    references[batching] = [
                        logits_of(alone(server, infer.path, body)) for body in infer.bodies
                    ]
                    for concurrency in CONCURRENCY:
                        log(f"  infer, batching {batching}, concurrency {concurrency} ...")
                        point, results = run_point(server, infer, concurrency, warmup, duration)
                        point["batching"] = batching
                        points.append(point)
                        if point["errors"]:
                            raise BenchmarkError(
                                f"{point['errors']} errors at infer, batching {batching}, "
                                f"concurrency {concurrency}: {point['error_messages'][:3]}"
                            )
                        n, worst = check_infer(results, references[batching])
                        point["checked"], point["checked_max_abs_diff"] = n, worst
                        log(
                            f"    {point['requests_per_s']:.1f} req/s, p50 "
                            f"{point['p50_ms']:.2f} ms, {point['rows_per_run'] or 0:.2f} rows/run;"
                            f" {n} answers checked (max diff {worst:.2g})"
                        )
                    if batching == "on":
                        generation = run_generation(server, prompts, warmup, duration, points)
                finally:
                    rc = server.stop()
                    checks[f"exit status, batching {batching}"] = rc
                    if rc != 0:
                        log(f"server (batching {batching}) exited with {rc}:\n{server.log_tail()}")
            diff = max(
                float(np.abs(a - b).max()) for a, b in zip(*references.values(), strict=True)
            )
            checks["references on vs off, max abs diff"] = diff
            if not diff <= TOLERANCE:
                raise BenchmarkError(f"the two servers' references differ by {diff:.3g}")
        except BenchmarkError as e:
            failure = str(e)
    elapsed = time.perf_counter() - start

    by_key = {(p["endpoint"], p["batching"], p["concurrency"]): p for p in points}
    top = max(CONCURRENCY)
    on, off = by_key.get(("infer", "on", top)), by_key.get(("infer", "off", top))
    if on and off:
        ratio = on["requests_per_s"] / off["requests_per_s"]
        met = "met" if ratio >= TARGET else f"not met, {ratio / TARGET:.0%} of the target"
        target = (
            f"Target: with batching at concurrency {top}, infer throughput >= {TARGET:g}x the "
            f"unbatched server's: {on['requests_per_s']:,.1f} vs {off['requests_per_s']:,.1f} "
            f"requests/s = {ratio:.2f}x ({met})."
        )
    else:
        ratio, target = None, "Target: not measured (the run stopped early)."

    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores; server and load clients on the "
        f"same machine\n"
        f"versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + "\n"
        f"model: the demo (tiny Llama, QWTHN {DEMO_ADAPTER}), exported float32; one server at a "
        f"time: `python -m serving EXPORT --threads {args.threads} --log-level warning` plus "
        f"batching on: `{' '.join(SERVERS['on'])}`, off: `{' '.join(SERVERS['off'])}`\n"
        f"infer: input_ids [1, {SEQ_LEN}] (one of {N_PROMPTS} random rows), logits out; "
        f"N client threads with one keep-alive httpx.Client each, back to back, {warmup:g} s "
        f"warm-up then {duration:g} s measured per point; latency as the client sees it; rows / "
        f"ORT run from the server's qwthn_batch_size; CPU in cores (server process, this "
        f"client process); every {CHECK_EVERY}th answer checked against the request alone "
        f"(logits within {TOLERANCE:g})"
    )
    if generation:
        print(f"generate: {generation.get('note') or generation_summary(generation)}")
    print("\n" + "\n".join(table(points)))
    print("\n" + target)
    for lines in where_time_goes(by_key):
        print(lines)
    checked = sum(p.get("checked", 0) for p in points)
    worst = max((p.get("checked_max_abs_diff", 0.0) for p in points), default=0.0)
    print(
        f"Checked {checked} answers (largest difference {worst:.2g}); servers' references "
        f"agree within {checks.get('references on vs off, max abs diff', float('nan')):.2g}; "
        f"exit statuses after SIGTERM: "
        + ", ".join(f"{k.split(', ')[1]} {v}" for k, v in checks.items() if k.startswith("exit"))
    )
    print(f"\nTotal {elapsed:.0f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine,
                    "versions": versions(),
                    "settings": {
                        "threads": args.threads,
                        "server_flags": {k: v + common for k, v in SERVERS.items()},
                        "concurrency": CONCURRENCY,
                        "warmup_s": warmup,
                        "duration_s": duration,
                        "seq_len": SEQ_LEN,
                        "prompts": N_PROMPTS,
                        "tolerance": TOLERANCE,
                        "check_every": CHECK_EVERY,
                        "gen_max_new_tokens": GEN_TOKENS,
                    },
                    "points": points,
                    "generation": generation,
                    "checks": checks,
                    "target": {"ratio": ratio, "required": TARGET, "line": target},
                    "failure": failure,
                },
                f,
                indent=1,
            )
    if failure:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 1
    return 0


def generation_summary(info: dict[str, Any]) -> str:
    return (
        f"POST /v2/models/{MODEL_NAME}/generate with max_new_tokens {GEN_TOKENS}, {N_PROMPTS} "
        f"prompts like '23&58=' ({info['body']} body), greedy, on the batching server; tokens "
        f"counted as {info['tokens_from']}; {info['checked']} sampled answers equal to the "
        f"prompt's answer alone, {info['mismatches']} not"
    )


def run_generation(
    server: Server, prompts: list[str], warmup: float, duration: float, points: list
) -> dict[str, Any]:
    """Probe ``/generate``; if it is there, load it at every concurrency (appends to points)."""
    workload, info = probe_generation(server, prompts)
    if workload is None:
        log(f"  generate: {info['note']}")
        return info
    references = [generation_text(alone(server, workload.path, b)) for b in workload.bodies]
    info["checked"] = info["mismatches"] = 0
    for concurrency in CONCURRENCY:
        log(f"  generate, concurrency {concurrency} ...")
        point, results = run_point(server, workload, concurrency, warmup, duration)
        point["batching"] = "-"
        points.append(point)
        if point["errors"]:
            raise BenchmarkError(
                f"{point['errors']} errors at generate, concurrency {concurrency}: "
                f"{point['error_messages'][:3]}"
            )
        for r in results:
            for prompt, content in r.samples:
                info["checked"] += 1
                info["mismatches"] += generation_text(content) != references[prompt]
        log(f"    {point['tokens_per_s']:.1f} tokens/s, p50 {point['p50_ms']:.2f} ms")
    return info


if __name__ == "__main__":
    sys.exit(main())
