"""Throughput of the PyTorch circuit simulator against simple peers, in one run.

    python benchmarks/simulator_speed.py [--quick] [--threads 1] [--json out.json]

Circuits: the paper's reference QNN (RY encoding, RY + CRZ rings), float32, per-sample inputs.
Contenders, each run as its users would:
- ``kernel``: the C++ kernel through the ``qwthn::quantum_layer`` custom op that training uses
  (one thread here; it parallelises over the batch with more);
- ``fused``: ``qwthn_onnx.circuit.expectation_values`` (fused ops, adjoint backward);
- ``gate-by-gate``: a plain PyTorch statevector simulator, one einsum per gate, autograd backward
  (what a straightforward PyTorch quantum layer does);
- ``qiskit``: ``qiskit.quantum_info.Statevector`` per sample on a bound circuit, forward only
  (qiskit has no gradient path but parameter shift).
Reported: median samples/s over repeats, and ratios. PennyLane / qiskit-aer comparisons belong
to the kernel benchmark of the next milestone.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import qiskit
import torch
from qiskit.quantum_info import Statevector

from qwthn_onnx.circuit import GATES, Circuit, expectation_values, paper_circuit
from qwthn_onnx.circuit.qiskit_bridge import observables_to_qiskit, to_qiskit
from qwthn_onnx.ops.torch_ops import circuit_arguments, quantum_layer


def gate_by_gate(circuit: Circuit, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One batched matrix contraction per gate; ``<Z_i>`` from the probabilities."""
    n, b = circuit.n_qubits, x.shape[0]
    state = torch.zeros(b, 2**n, dtype=torch.complex64)
    state[:, 0] = 1
    for g in circuit.gates:
        vals = [x[:, p.value] if p.kind == "input" else w[p.value].expand(b) for p in g.params]
        m = GATES[g.name].matrix(torch.stack(vals, -1))
        if len(g.wires) == 1:
            q = g.wires[0]
            st = state.view(b, 2 ** (n - 1 - q), 2, 2**q)
            state = torch.einsum("bij,bhjl->bhil", m, st).reshape(b, -1)
        else:
            c, t = g.wires
            hi, lo = max(c, t), min(c, t)
            st = state.view(b, 2 ** (n - 1 - hi), 2, 2 ** (hi - lo - 1), 2, 2**lo)
            m = m.view(b, 2, 2, 2, 2)  # [out_c, out_t, in_c, in_t]
            spec = "bxyuv,bauevd->baxeyd" if c == hi else "bxyuv,baveud->bayexd"
            state = torch.einsum(spec, m, st).reshape(b, -1)
    probs = state.real**2 + state.imag**2
    index = torch.arange(2**n)
    signs = torch.stack([1 - 2 * ((index >> q) & 1) for q in range(n)], -1).to(probs.dtype)
    return probs @ signs


def qiskit_forward(circuit: Circuit, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    observables = observables_to_qiskit(circuit)
    weights = w.tolist()
    out = []
    for row in x.tolist():
        state = Statevector(to_qiskit(circuit, inputs=row, weights=weights))
        out.append([state.expectation_value(o).real for o in observables])
    return torch.tensor(out)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: compile the plan, fault in buffers
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# The gate-by-gate baseline's autograd keeps ~3 complex64 states per gate alive for backward.
AUTOGRAD_MEMORY_BUDGET = 4 * 2**30


def gate_by_gate_backward_bytes(circuit: Circuit, batch: int) -> int:
    return 3 * len(circuit.gates) * batch * 2**circuit.n_qubits * 8


def contenders(circuit: Circuit, batch: int) -> dict[str, dict[str, Callable[[], object] | None]]:
    """What each contender runs for one pass; None where a contender has no such pass (or, for
    the gate-by-gate backward, where it would need more than AUTOGRAD_MEMORY_BUDGET)."""
    x = torch.rand(batch, circuit.n_inputs) * 3
    w = (torch.rand(circuit.n_weights) * 0.2).requires_grad_()
    wd = w.detach()
    args = circuit_arguments(circuit)
    return {
        "forward": {
            "kernel": lambda: quantum_layer(x, wd, *args),
            "fused": lambda: expectation_values(circuit, x, wd),
            "gate-by-gate": lambda: gate_by_gate(circuit, x, wd),
            # per-sample Python loop: measured at small batches only
            "qiskit": (lambda: qiskit_forward(circuit, x, wd)) if batch <= 64 else None,
        },
        "forward+backward": {
            "kernel": lambda: quantum_layer(x, w, *args).sum().backward(),
            "fused": lambda: expectation_values(circuit, x, w).sum().backward(),
            "gate-by-gate": (lambda: gate_by_gate(circuit, x, w).sum().backward())
            if gate_by_gate_backward_bytes(circuit, batch) <= AUTOGRAD_MEMORY_BUDGET
            else None,
            "qiskit": None,
        },
    }


COLUMNS = ["n", "L", "batch", "pass", "kernel", "fused", "gate-by-gate", "qiskit"]
RATIOS = [("kernel", "fused"), ("fused", "gate-by-gate"), ("fused", "qiskit")]


def markdown_row(row: dict) -> str:
    def rate(name: str) -> str:
        return f"{row[name]:,.0f}" if row[name] else "-"

    def ratio(ours: str, peer: str) -> str:
        return f"{row[ours] / row[peer]:.1f}x" if row[peer] else "-"

    cells = [row["n"], row["layers"], row["batch"], row["pass"]]
    cells += [rate(c) for c in COLUMNS[4:]] + [ratio(a, b) for a, b in RATIOS]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer configurations and repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    configs = [(4, 2), (8, 4), (10, 10)]
    if not args.quick:
        configs += [(8, 2), (12, 4)]
    repeats = 3 if args.quick else 7
    machine = platform.processor() or platform.machine()
    print(
        f"machine: {machine}, {args.threads} thread(s); torch {torch.__version__}, "
        f"qiskit {qiskit.__version__}; samples/s, median of {repeats}"
    )
    header = COLUMNS + [f"{a} / {b}" for a, b in RATIOS]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    rows = []
    for n, layers in configs:
        circuit = paper_circuit(n, layers)
        for batch in (1, 64, 1024):
            for pass_name, fns in contenders(circuit, batch).items():
                row = {"n": n, "layers": layers, "batch": batch, "pass": pass_name}
                row |= {
                    k: batch / median_seconds(f, repeats) if f else None for k, f in fns.items()
                }
                rows.append(row)
                print(markdown_row(row), flush=True)
    if args.json:
        meta = {
            "machine": machine,
            "threads": args.threads,
            "torch": str(torch.__version__),
            "qiskit": qiskit.__version__,
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "samples_per_second": rows}, f, indent=2)


if __name__ == "__main__":
    main()
