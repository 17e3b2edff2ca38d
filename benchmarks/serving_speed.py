"""Serving speed: throughput and latency of ``qwthn-serve`` under load, dynamic batching on and off.

    python benchmarks/serving_speed.py [--quick] [--models demo,gpt2-small] [--threads 1]
                                       [--duration S] [--json out.json]

Needs ``wrk`` (``apt-get install wrk``; ``benchmarks/setup_peers.sh`` installs it), the HTTP
load generator written in C: a Python client on this 2-core machine saturated before the server
did. Models, built here from configs, saved as ``model.pt`` and exported (``export_model``,
``verify=False``) to a temporary directory:

- ``demo``: the tiny Llama of ``qwthn_onnx.demo`` (2 layers, 64 wide) with the demo's 4-qubit,
  2-layer QWTHN adapters; an onnxruntime call costs ~0.4 ms, the server's own work per request
  about as much;
- ``gpt2-small``: GPT-2 small's body (12 layers, 768 wide, random weights) with the demo's
  character vocabulary, so that it generates text, and the paper's 10-qubit, 10-layer circuit
  on ``c_attn``; an onnxruntime call costs 30-60 ms.

Per model two servers run one after the other, never side by side, as real processes on
loopback (``python -m serving EXPORT --port P --threads T --max-concurrent-generations 32
--log-level warning``; no access log): ``batching on`` with ``--max-batch-size 32`` (queue delay
0, the default: a batch is what queued up while the previous one ran), ``batching off`` with
``--no-batching`` (every request and every generation step alone).

Infer (``POST /v2/models/M/infer``): ``input_ids`` of shape [1, S] (one of 8 fixed rows of
random ids, so merged batches mix rows; S = 16 for the demo, 1 and 16 for gpt2-small),
``outputs: [{"name": "logits"}]``. wrk keeps N connections busy back to back (a warm-up run,
then the measured run); throughput is its completed requests per second, p50/p99 its latency.
During the measured run a checker sends each of the 8 bodies once, spread over the window, and
compares the logits with the same body sent alone before the load (max abs <= 1e-4): those
answers come out of batches merged with wrk's requests. Also reported: mean rows per onnxruntime
run (``qwthn_batch_size`` over the window), CPU used by the server and by the load generator, in
cores (on a small machine they compete), and errors (any non-200 or socket error fails the run).

Generate (``POST /v2/models/M/generate``, ``max_new_tokens`` 16, 8 arithmetic prompts, greedy):
N client threads with one keep-alive ``httpx.Client`` each (generation is bound by the server,
not by the client); tokens per second from the answers' ``completion_tokens``; every 20th answer
must equal the prompt's answer alone.

Target (issue 6): with batching at concurrency 32, infer throughput >= 3x the unbatched
server's; reported per model and sequence length.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import re
import resource
import shutil
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
from system_info import log, machine_info
from transformers import GPT2Config, GPT2LMHeadModel

import qwthn_onnx
from exporters.export import ExportOptions, export_model
from qwthn_onnx import QWTHNConfig, QWTHNModel, save_model_pt
from qwthn_onnx.demo import DEMO_ADAPTER, build_char_tokenizer, build_tiny_model
from serving.testing import ServerProcess, ServerProcessError

SEED = 0
SEQ_LENS = {"demo": (16,), "gpt2-small": (1, 16)}  # infer input_ids [1, S] per model
N_PROMPTS = 8
CONCURRENCY = (1, 8, 32)
MAX_BATCH_SIZE = 32
TOLERANCE = 1e-4  # max abs difference of logits, loaded answer vs the same request alone
CHECK_EVERY = 20  # generation: check every k-th answer of a measured window
GEN_TOKENS = 16
TARGET = 3.0  # batched / unbatched infer throughput at the highest concurrency
COMMON_FLAGS = ["--max-concurrent-generations", str(max(CONCURRENCY)), "--log-level", "warning"]
SERVERS = {"on": ["--max-batch-size", str(MAX_BATCH_SIZE)], "off": ["--no-batching"]}
METRICS = (
    "qwthn_batch_size",  # rows per onnxruntime run
    "qwthn_batch_requests",  # requests per onnxruntime run
    "qwthn_inference_duration_seconds",  # one onnxruntime run
    "qwthn_queue_duration_seconds",  # a request's wait in the batching queue
    "qwthn_generation_batch_size",  # generation requests per decode call
)


class BenchmarkError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# The model and the server process
# --------------------------------------------------------------------------------------------


def build_model(name: str) -> tuple[QWTHNModel, Any]:
    """The adapted model ``name`` (see the module docstring) and its tokenizer."""
    tokenizer = build_char_tokenizer()
    if name == "demo":
        base, adapter = build_tiny_model(tokenizer, "llama", seed=SEED), DEMO_ADAPTER
    else:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )  # GPT-2 small: 12 layers, 12 heads, 768 wide, 1024 positions
        torch.manual_seed(SEED)
        base, adapter = GPT2LMHeadModel(config), {"n_qubits": 10, "n_layers": 10, "rank": 8}
    torch.manual_seed(SEED)
    return QWTHNModel(base, QWTHNConfig(**adapter, init_delta="normal")).eval(), tokenizer


def build_export(name: str, workdir: Path) -> tuple[Path, int, dict[str, Any]]:
    """Model ``name`` exported to ``workdir/name`` (the served model's name); (export
    directory, vocabulary size, description)."""
    model, tokenizer = build_model(name)
    save_model_pt(workdir / f"{name}.pt", model, tokenizer)
    start = time.perf_counter()
    result = export_model(workdir / f"{name}.pt", workdir / name, ExportOptions(verify=False))
    config = model.base_model.config
    described = {
        "architecture": type(model.base_model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "adapter": {k: getattr(model.qwthn_config, k) for k in ("n_qubits", "n_layers", "rank")},
        "export_s": time.perf_counter() - start,
    }
    return result.directory, int(config.vocab_size), described


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


def server_side(
    delta: dict[str, float], cpu_server: float, cpu_client: float, elapsed: float, served: int
) -> dict[str, Any]:
    """What a point's window cost the server and the load generator: batching and queue
    metrics (``delta`` of /metrics over the window), CPU per request, onnxruntime time."""
    per_request = 1e3 / served if served else None
    return {
        "rows_per_run": mean_of(delta, "qwthn_batch_size"),
        "requests_per_run": mean_of(delta, "qwthn_batch_requests"),
        "ort_runs": delta.get("qwthn_batch_size_count", 0.0),
        "ort_run_ms": (mean_of(delta, "qwthn_inference_duration_seconds") or 0.0) * 1e3,
        "queue_ms": (mean_of(delta, "qwthn_queue_duration_seconds") or 0.0) * 1e3,
        "server_cpu_cores": cpu_server / elapsed,
        "server_cpu_ms_per_request": cpu_server * per_request if per_request else None,
        "ort_ms_per_request": (
            delta.get("qwthn_inference_duration_seconds_sum", 0.0) * per_request
            if per_request
            else None
        ),
        "client_cpu_cores": cpu_client / elapsed,
        "metrics_delta": delta,
    }


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


def alone(server: ServerProcess, path: str, body: bytes) -> bytes:
    """One request on an idle server (a reference); raises unless it answers 200."""
    response = httpx.post(server.url + path, content=body, timeout=60)
    if response.status_code != 200:
        raise BenchmarkError(f"reference request: {response.status_code} {response.text[:300]}")
    return response.content


def run_point(
    server: ServerProcess, workload: Workload, concurrency: int, warmup_s: float, duration_s: float
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
        **server_side(delta, cpu_server, cpu_client, elapsed, completed),
        "latencies_ms": [round(float(x), 4) for x in latencies],
    }
    return point, results


_WRK_REPORT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %f, '
    .. '"max_us": %d, "status_errors": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def wrk_script(workload: Workload, directory: Path) -> Path:
    """A wrk Lua script that POSTs the workload's bodies in turn and reports as JSON."""
    bodies = ",\n".join(f"[==[{b.decode()}]==]" for b in workload.bodies)
    path = directory / f"{workload.endpoint}.lua"
    path.write_text(
        "wrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\n"
        f"local bodies = {{\n{bodies}\n}}\nlocal i = 0\n"
        "request = function()\n  i = i + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[(i % #bodies) + 1])\nend\n" + _WRK_REPORT
    )
    return path


def run_wrk(url: str, script: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """One wrk run (one thread, ``concurrency`` keep-alive connections); its JSON report."""
    command = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "120s",
        "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 180)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchmarkError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    return json.loads(line.removeprefix("WRK_JSON "))


def wrk_point(
    server: ServerProcess,
    workload: Workload,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    script: Path,
    check: Callable[[int, bytes], float],
) -> dict[str, Any]:
    """wrk at ``concurrency`` connections: a warm-up run, then the measured one. Meanwhile a
    checker sends each body once, spread over the window, and ``check``s the answers (which
    the server batches with wrk's requests); metrics and CPU cover the measured run."""
    url = server.url + workload.path
    run_wrk(url, script, concurrency, warmup_s)
    checks: list[float] = []
    problems: list[str] = []
    stop = threading.Event()

    def checker() -> None:
        with httpx.Client(timeout=120, headers={"content-type": "application/json"}) as client:
            for k, body in enumerate(workload.bodies):
                if stop.wait(duration_s / (len(workload.bodies) + 1)):
                    return
                response = client.post(url, content=body)
                if response.status_code != 200:
                    problems.append(f"{response.status_code}: {response.text[:300]}")
                else:
                    checks.append(check(k, response.content))

    before = scrape(server.url)
    cpu_server = server.cpu_seconds()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    thread = threading.Thread(target=checker, daemon=True)
    thread.start()
    report = run_wrk(url, script, concurrency, duration_s)
    stop.set()
    thread.join()
    cpu_server = server.cpu_seconds() - cpu_server
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_client = (after_children.ru_utime - children.ru_utime) + (
        after_children.ru_stime - children.ru_stime
    )
    delta = {name: value - before.get(name, 0.0) for name, value in scrape(server.url).items()}
    elapsed = report["duration_us"] / 1e6
    completed = report["requests"]
    served = completed + len(checks) + len(problems)
    errors = report["status_errors"] + report["socket_errors"] + len(problems)
    return {
        "endpoint": workload.endpoint,
        "concurrency": concurrency,
        "load": "wrk",
        "seconds": elapsed,
        "completed": completed,
        "errors": errors,
        "error_messages": problems[:10]
        + ([f"wrk: {report['status_errors']} non-2xx"] if report["status_errors"] else [])
        + ([f"wrk: {report['socket_errors']} socket errors"] if report["socket_errors"] else []),
        "requests_per_s": completed / elapsed,
        "tokens": None,
        "tokens_per_s": None,
        "p50_ms": report["p50_us"] / 1e3,
        "p99_ms": report["p99_us"] / 1e3,
        "mean_ms": report["mean_us"] / 1e3,
        "max_ms": report["max_us"] / 1e3,
        "checked": len(checks),
        "checked_max_abs_diff": max(checks, default=0.0),
        **server_side(delta, cpu_server, cpu_client, elapsed, served),
    }


def logits_check(references: list[np.ndarray]) -> Callable[[int, bytes], float]:
    """``check(k, answer)``: the max abs difference of an answer's logits from body k's
    reference (infinity when the shape differs)."""

    def check(k: int, content: bytes) -> float:
        got, expected = logits_of(content), references[k]
        return float(np.abs(got - expected).max()) if got.shape == expected.shape else math.inf

    return check


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def generation_workload(model: str, prompts: list[str]) -> Workload:
    bodies = [json.dumps({"prompt": p, "max_new_tokens": GEN_TOKENS}).encode() for p in prompts]
    return Workload(
        "generate",
        f"/v2/models/{model}/generate",
        bodies,
        tokens=lambda content: json.loads(content)["completion_tokens"],
    )


def run_generation(
    server: ServerProcess, workload: Workload, warmup: float, duration: float
) -> list[dict[str, Any]]:
    """The generation points at every concurrency; sampled answers must equal the prompt's
    answer alone."""
    references = [json.loads(alone(server, workload.path, b))["text"] for b in workload.bodies]
    points = []
    for concurrency in CONCURRENCY:
        log(f"    generate, concurrency {concurrency} ...")
        point, results = run_point(server, workload, concurrency, warmup, duration)
        point["rows_per_run"] = mean_of(point["metrics_delta"], "qwthn_generation_batch_size")
        points.append(point)
        if point["errors"]:
            raise BenchmarkError(f"{point['errors']} errors: {point['error_messages'][:3]}")
        samples = [(k, json.loads(c)["text"]) for r in results for k, c in r.samples]
        point["checked"] = len(samples)
        point["mismatches"] = sum(text != references[k] for k, text in samples)
        log(
            f"      {point['tokens_per_s']:.1f} tokens/s, p50 {point['p50_ms']:.1f} ms; "
            f"{point['checked']} answers checked, {point['mismatches']} differ from alone"
        )
    return points


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(points: list[dict[str, Any]]) -> list[str]:
    header = [
        "model", "endpoint", "batching", "concurrency", "requests/s", "tokens/s", "p50 ms",
        "p99 ms", "rows / ORT call", "server CPU", "load CPU", "errors",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in points:
        cells = [
            p["model"],
            p["endpoint"] + (f" [1, {p['seq_len']}]" if p.get("seq_len") else ""),
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


def ratios(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batched / unbatched throughput at the highest concurrency, per model and workload."""
    top = max(CONCURRENCY)
    found = {}
    for p in points:
        if p["concurrency"] == top:
            key = (p["model"], p["endpoint"], p.get("seq_len"))
            found.setdefault(key, {})[p["batching"]] = p
    out = []
    for (model, endpoint, seq_len), pair in found.items():
        if {"on", "off"} <= pair.keys():
            unit = "tokens_per_s" if endpoint == "generate" else "requests_per_s"
            on, off = pair["on"][unit], pair["off"][unit]
            out.append(
                {
                    "model": model,
                    "endpoint": endpoint,
                    "seq_len": seq_len,
                    "unit": unit,
                    "on": on,
                    "off": off,
                    "ratio": on / off,
                    "on_point": pair["on"],
                    "off_point": pair["off"],
                }
            )
    return out


def ratio_lines(found: list[dict[str, Any]]) -> list[str]:
    top = max(CONCURRENCY)
    lines = []
    for r in found:
        what = r["endpoint"] + (f" [1, {r['seq_len']}]" if r["seq_len"] else "")
        verdict = " (target 3x: " + ("met)" if r["ratio"] >= TARGET else "not met)")
        on, off = r["on_point"], r["off_point"]
        if r["endpoint"] == "generate":
            lines.append(
                f"- {r['model']} generate, concurrency {top}: batching {r['on']:,.1f} vs "
                f"{r['off']:,.1f} tokens/s = {r['ratio']:.2f}x; "
                f"{fmt(on['rows_per_run'], 1)} requests per decode call with batching; p50 "
                f"{fmt(on['p50_ms'])} vs {fmt(off['p50_ms'])} ms per request"
            )
            continue
        lines.append(
            f"- {r['model']} {what}, concurrency {top}: batching {r['on']:,.1f} vs "
            f"{r['off']:,.1f} {r['unit'].replace('_per_s', '/s')} = {r['ratio']:.2f}x{verdict}; "
            f"server CPU per request {fmt(on['server_cpu_ms_per_request'], 2)} vs "
            f"{fmt(off['server_cpu_ms_per_request'], 2)} ms, onnxruntime "
            f"{fmt(on['ort_ms_per_request'], 2)} vs {fmt(off['ort_ms_per_request'], 2)} ms of "
            f"wall time per request ({fmt(on['rows_per_run'], 1)} rows per run with batching)"
        )
    return lines


def versions() -> dict[str, str]:
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "torch": str(torch.__version__),
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
        "httpx": httpx.__version__,
        "wrk": (wrk.stdout or wrk.stderr).split()[1] if (wrk.stdout or wrk.stderr) else "?",
        "qwthn_onnx": qwthn_onnx.__version__,
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def serve_model(
    name: str, workdir: Path, args: argparse.Namespace, warmup: float, duration: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every point of one model, both servers; (points, description and checks)."""
    log(f"{name}: building and exporting ...")
    export_dir, vocab, described = build_export(name, workdir)
    rng = np.random.default_rng(SEED)
    random.seed(SEED)
    prompts = [f"{random.randint(0, 99)}&{random.randint(0, 99)}=" for _ in range(N_PROMPTS)]
    infers = {
        seq_len: Workload(
            "infer",
            f"/v2/models/{name}/infer",
            [infer_body(rng.integers(0, vocab, size=(1, seq_len))) for _ in range(N_PROMPTS)],
        )
        for seq_len in SEQ_LENS[name]
    }
    generate = generation_workload(name, prompts)
    flags = ["--threads", str(args.threads), *COMMON_FLAGS]
    points: list[dict[str, Any]] = []
    references: dict[tuple[str, int], list[np.ndarray]] = {}
    for batching, server_flags in SERVERS.items():
        log(f"  server, batching {batching}: {' '.join(server_flags + flags)}")
        server = ServerProcess(
            [str(export_dir), *server_flags, *flags], workdir / f"{name}_{batching}.log"
        )
        try:
            server.wait_ready()
            for seq_len, workload in infers.items():
                script = wrk_script(workload, workdir)
                refs = [logits_of(alone(server, workload.path, b)) for b in workload.bodies]
                references[(batching, seq_len)] = refs
                for concurrency in CONCURRENCY:
                    log(f"    infer [1, {seq_len}], concurrency {concurrency} ...")
                    point = wrk_point(
                        server, workload, concurrency, warmup, duration, script, logits_check(refs)
                    )
                    point.update(model=name, batching=batching, seq_len=seq_len)
                    points.append(point)
                    log(
                        f"      {point['requests_per_s']:,.1f} req/s, p50 {point['p50_ms']:.2f} "
                        f"ms, {point['rows_per_run'] or 0:.2f} rows/run; {point['checked']} "
                        f"answers checked (max diff {point['checked_max_abs_diff']:.2g})"
                    )
                    if point["errors"]:
                        raise BenchmarkError(f"errors: {point['error_messages'][:3]}")
                    if not point["checked_max_abs_diff"] <= TOLERANCE:
                        raise BenchmarkError(
                            f"an answer under load differs from the same request alone by "
                            f"{point['checked_max_abs_diff']:.3g} (tolerance {TOLERANCE})"
                        )
            for point in run_generation(server, generate, warmup, duration):
                point.update(model=name, batching=batching)
                points.append(point)
        finally:
            rc = server.stop()
            described[f"exit status, batching {batching}"] = rc
            if rc != 0:
                log(f"server (batching {batching}) exited with {rc}:\n{server.log_tail()}")
    diff = max(
        float(np.abs(a - b).max())
        for seq_len in SEQ_LENS[name]
        for a, b in zip(references[("on", seq_len)], references[("off", seq_len)], strict=True)
    )
    described["references on vs off, max abs diff"] = diff
    if not diff <= TOLERANCE:
        raise BenchmarkError(f"{name}: the two servers' references differ by {diff:.3g}")
    return points, described


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="demo only, 3 s per point")
    parser.add_argument("--models", help="comma-separated: demo,gpt2-small (default: both)")
    parser.add_argument("--threads", type=int, default=1, help="the server's onnxruntime threads")
    parser.add_argument("--duration", type=float, help="seconds per point (default 10, quick 3)")
    parser.add_argument("--json", help="also write all raw numbers, machine and versions here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error(
            "wrk is not installed: apt-get install wrk (or bash benchmarks/setup_peers.sh)"
        )
    models = (args.models or ("demo" if args.quick else "demo,gpt2-small")).split(",")
    unknown = sorted(set(models) - set(SEQ_LENS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(SEQ_LENS)}")
    duration = args.duration or (3.0 if args.quick else 10.0)
    warmup = 1.0 if args.quick else 2.0
    torch.set_num_threads(1)
    start = time.perf_counter()
    points: list[dict[str, Any]] = []
    described: dict[str, Any] = {}
    failure: str | None = None
    with tempfile.TemporaryDirectory(prefix="serving_speed_") as tmp:
        try:
            for name in models:
                model_points, described[name] = serve_model(name, Path(tmp), args, warmup, duration)
                points += model_points
        except (BenchmarkError, ServerProcessError) as e:
            failure = str(e)
    elapsed = time.perf_counter() - start
    machine, package_versions = machine_info(), versions()
    found = ratios(points)
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores; server and load generator on "
        f"the same machine\n"
        "versions: " + ", ".join(f"{k} {v}" for k, v in package_versions.items()) + "\n"
        f"servers: `python -m serving EXPORT --threads {args.threads} {' '.join(COMMON_FLAGS)}` "
        f"plus batching on: `{' '.join(SERVERS['on'])}`, off: `{' '.join(SERVERS['off'])}`; "
        f"{warmup:g} s warm-up and {duration:g} s measured per point"
    )
    for name, d in described.items():
        print(
            f"{name}: {d['architecture']}, {d['parameters'] / 1e6:.1f}M parameters, QWTHN "
            f"{d['adapter']}, exported in {d['export_s']:.0f} s"
        )
    print("\n" + "\n".join(table(points)) + "\n")
    for line in ratio_lines(found):
        print(line)
    gen = [p for p in points if p["endpoint"] == "generate"]
    infer = [p for p in points if p["endpoint"] == "infer"]
    print(
        f"Checked {sum(p['checked'] for p in infer)} infer answers under load (largest "
        f"difference {max((p['checked_max_abs_diff'] for p in infer), default=0):.2g}) and "
        f"{sum(p['checked'] for p in gen)} generations ({sum(p['mismatches'] for p in gen)} "
        f"differ from the prompt alone); exit statuses after SIGTERM: "
        + ", ".join(
            f"{n} {k.split(', ')[1]} {v}"
            for n, d in described.items()
            for k, v in d.items()
            if k.startswith("exit")
        )
    )
    print(f"\nTotal {elapsed:.0f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine,
                    "versions": package_versions,
                    "settings": {
                        "threads": args.threads,
                        "server_flags": {k: v + COMMON_FLAGS for k, v in SERVERS.items()},
                        "concurrency": CONCURRENCY,
                        "warmup_s": warmup,
                        "duration_s": duration,
                        "seq_lens": SEQ_LENS,
                        "prompts": N_PROMPTS,
                        "tolerance": TOLERANCE,
                        "gen_max_new_tokens": GEN_TOKENS,
                    },
                    "models": described,
                    "points": points,
                    "ratios": [
                        {k: v for k, v in r.items() if not k.endswith("_point")} for r in found
                    ],
                    "failure": failure,
                },
                f,
                indent=1,
            )
    if failure:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
