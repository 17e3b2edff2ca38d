"""Plain-onnxruntime cost of the ``QuantumLayer`` fallback function: load time vs node count.

    python benchmarks/fallback_session.py [--k 16] [--repeats 3] [--threads 1] [--json out.json]

A runtime without our op library inlines one copy of the fallback body per ``QuantumLayer``
node, and both its function inliner and its graph optimiser (constant folding of the
weight-only subgraphs) grow faster than linearly with the inlined graph: the body's node count
sets how long every plain-onnxruntime deployment takes to load. Per circuit (the demo's
``paper`` 4x2, the reference ``paper`` 10x10, ``hardware_efficient`` 10x10) this prints the
body's node count, the session creation time of a graph of K ``QuantumLayer`` nodes with their
own weights (initializers, as in an exported model; ``ENABLE_ALL`` and ``DISABLE_ALL``
optimisation), and the run time of one node (float32, batch 1 and 64, optimised session).
Times are medians of ``--repeats`` measurements; every run is checked against the PyTorch
simulator first.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from system_info import log, machine_info

from qwthn_onnx._io import atomic_write_text
from qwthn_onnx.circuit import Circuit, build_ansatz, expectation_values
from qwthn_onnx.ops.models import quantum_layer_model

CIRCUITS = (("paper", 4, 2), ("paper", 10, 10), ("hardware_efficient", 10, 10))
BATCHES = (1, 64)
LEVELS = {
    "opt": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "noopt": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
TOLERANCE = 1e-4


def k_node_model(circuit: Circuit, k: int, seed: int = 0) -> onnx.ModelProto:
    """``y_i = QuantumLayer(x, w_i)`` for i < k, each node with its own weight initializer."""
    rng = np.random.default_rng(seed)
    one = quantum_layer_model(circuit, weights=np.zeros(circuit.n_weights, np.float32))
    template = one.graph.node[0]
    nodes, weights, outputs = [], [], []
    for i in range(k):
        node = onnx.NodeProto()
        node.CopyFrom(template)
        node.name, node.input[1], node.output[0] = f"quantum_layer_{i}", f"w{i}", f"y{i}"
        nodes.append(node)
        w = rng.uniform(0, 2 * np.pi, circuit.n_weights).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        outputs.append(helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "k_nodes", list(one.graph.input), outputs, weights)
    return helper.make_model(
        graph, opset_imports=one.opset_import, ir_version=one.ir_version, functions=one.functions
    )


def session(model: bytes, level: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(ansatz: str, n: int, layers: int, k: int, repeats: int, threads: int) -> dict:
    circuit = build_ansatz(ansatz, n, layers)
    function = quantum_layer_model(circuit).functions[0]
    row: dict = {
        "circuit": f"{ansatz} {n}x{layers}",
        "nodes": len(function.node),
        "ops": dict(collections.Counter(node.op_type for node in function.node).most_common()),
    }
    model = k_node_model(circuit, k).SerializeToString()
    for level in LEVELS:
        row[f"session_{level}_s"] = median_s(lambda lv=level: session(model, lv, threads), repeats)
        log(f"{row['circuit']}: K={k} session ({level}) {row[f'session_{level}_s']:.2f} s")
    single = k_node_model(circuit, 1)
    weights = numpy_helper.to_array(single.graph.initializer[0])
    sess = session(single.SerializeToString(), "opt", threads)
    for batch in BATCHES:
        x = np.random.default_rng(batch).uniform(-1, 1, (batch, n)).astype(np.float32)
        (y,) = sess.run(None, {"x": x})
        expected = expectation_values(
            circuit, torch.from_numpy(x).double(), torch.from_numpy(weights).double()
        ).numpy()
        error = float(np.abs(y - expected).max())
        if error > TOLERANCE:
            raise SystemExit(f"{row['circuit']}: fallback differs from the simulator by {error}")
        calls = max(5, 2000 // batch)
        sess.run(None, {"x": x})  # warm-up
        per_call = median_s(lambda x=x: sess.run(None, {"x": x}), calls)
        row[f"run_b{batch}_ms"] = per_call * 1e3
    return row


def markdown(rows: list[dict], k: int, info: dict) -> str:
    head = (
        f"| circuit | body nodes | K={k} session, optimised (s) | K={k} session, no opt (s) | "
        + " | ".join(f"run, batch {b} (ms)" for b in BATCHES)
        + " |"
    )
    lines = [head, "|" + "---|" * (4 + len(BATCHES))]
    for r in rows:
        runs = " | ".join(f"{r[f'run_b{b}_ms']:.3f}" for b in BATCHES)
        lines.append(
            f"| {r['circuit']} | {r['nodes']} | {r['session_opt_s']:.2f} | "
            f"{r['session_noopt_s']:.2f} | {runs} |"
        )
    lines.append("")
    lines.append(
        f"onnxruntime {ort.__version__}, {info['cpu']} ({info['cores']} cores), "
        f"{info['threads']} intra-op thread(s), medians of {info['repeats']} session loads."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=16, help="QuantumLayer nodes per graph")
    parser.add_argument("--repeats", type=int, default=3, help="session loads per median")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = [measure(*c, args.k, args.repeats, args.threads) for c in CIRCUITS]
    info = machine_info(threads=args.threads, repeats=args.repeats, onnxruntime=ort.__version__)
    print(markdown(rows, args.k, info))
    if args.json:
        atomic_write_text(
            args.json, json.dumps({"machine": info, "k": args.k, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
