"""MPOLinear speed: the C++ kernel (PyTorch op and inside onnxruntime) against its peers.

    python benchmarks/mpo_speed.py [--quick] [--threads 1] [--json out.json]

Contenders, each as its users run it, float32, one call per measurement:
- ``torch``: ``qwthn_onnx.mpo.MPOLinear`` (what training uses: the dense matrix from the cores
  and one GEMM for adapter-sized operators; autograd backward);
- ``kernel (pybind11)``: the ``qwthn::mpo_linear`` custom op (C++ forward and backward);
- ``kernel (onnxruntime)``: a single ``ai.qwthn::MPOLinear`` node with libqwthn_ops registered;
- ``onnxruntime (fallback)``: the same node run as its standard-op function (Einsum) in a plain
  onnxruntime, as a runtime without our library does.
Shapes are the adapter's down (d -> r) and up (r -> d) projections at rank 8, for a tiny model
(d = 64) and a GPT-2-small-sized one (d = 768). Reported: median microseconds per call and
speed-ups over torch.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import onnxruntime as ort
import torch

import qwthn_onnx
from qwthn_onnx.mpo import MPOLinear
from qwthn_onnx.ops import register_schemas
from qwthn_onnx.ops.models import mpo_linear_model
from qwthn_onnx.ops.torch_ops import mpo_linear


def median_us(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def measure(d_in: int, d_out: int, batch: int, threads: int, repeats: int) -> dict:
    torch.manual_seed(0)
    mpo = MPOLinear(d_in, d_out, bond_dim=8, num_cores=3)
    x = torch.randn(batch, d_in, requires_grad=True)
    cores, modes = list(mpo.cores), (list(mpo.in_modes), list(mpo.out_modes))
    arrays = [c.detach().numpy() for c in cores]
    feeds = {"x": x.detach().numpy()}
    sessions = {}
    for name, library in (("kernel (onnxruntime)", True), ("onnxruntime (fallback)", False)):
        options = qwthn_onnx.session_options(threads) if library else ort.SessionOptions()
        options.intra_op_num_threads = threads
        model = mpo_linear_model(arrays, fallback=not library)
        sessions[name] = ort.InferenceSession(model.SerializeToString(), options)
    forward = {
        "torch": lambda: mpo(x),
        "kernel (pybind11)": lambda: mpo_linear(x, cores, *modes),
        **{name: (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()},
    }
    backward = {
        "torch": lambda: mpo(x).sum().backward(),
        "kernel (pybind11)": lambda: mpo_linear(x, cores, *modes).sum().backward(),
    }
    row = {"d_in": d_in, "d_out": d_out, "batch": batch, "forward_us": {}, "fwd_bwd_us": {}}
    for name, fn in forward.items():
        row["forward_us"][name] = median_us(fn, repeats)
    for name, fn in backward.items():
        row["fwd_bwd_us"][name] = median_us(fn, repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, fewer repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_schemas()
    shapes = [(64, 8), (8, 64), (768, 8), (8, 768)]
    batches = [64, 4096] if args.quick else [1, 64, 512, 4096]
    if args.quick:
        shapes = shapes[:1] + shapes[2:3]
    rows = [
        measure(d_in, d_out, batch, args.threads, 7 if args.quick else 21)
        for d_in, d_out in shapes
        for batch in batches
    ]
    names = list(rows[0]["forward_us"])
    print(f"MPOLinear, float32, bond 8, 3 cores, {args.threads} thread(s), median us per call")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}")  # fmt: skip
    header = ["shape", "batch", "pass", *names, "kernel (ort) / torch", "kernel (ort) / fallback"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        f = row["forward_us"]
        cells = [f"{f[n]:,.0f}" for n in names]
        ratios = [
            f"{f['torch'] / f['kernel (onnxruntime)']:.1f}x",
            f"{f['onnxruntime (fallback)'] / f['kernel (onnxruntime)']:.1f}x",
        ]
        shape = f"{row['d_in']}→{row['d_out']}"
        print(f"| {shape} | {row['batch']} | forward | " + " | ".join(cells + ratios) + " |")
        b = row["fwd_bwd_us"]
        cells = [f"{b[n]:,.0f}" if n in b else "-" for n in names]
        ratio = f"{b['torch'] / b['kernel (pybind11)']:.1f}x (pybind11)"
        print(f"| {shape} | {row['batch']} | fwd+bwd | " + " | ".join([*cells, ratio, "-"]) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
