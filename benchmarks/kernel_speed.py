"""Samples/s of the paper circuit: our circuit kernel against the strongest peers, in one run.

    bash benchmarks/setup_peers.sh          # once: PennyLane, qiskit-aer in benchmarks/.venvs/peers
    python benchmarks/kernel_speed.py [--quick] [--threads 1] [--json out.json]
                                      [--contenders kernel,pl-default,...] [--budget 30]

Circuit: ``paper_circuit(n, L)`` (RY encoding, per layer RY, CRZ ring, RY, reverse CRZ ring,
<Z_i> on every qubit), float32, per-sample inputs, weights shared over the batch. Passes:
forward, and forward+backward (d sum(y) / d weights). Contenders, each run as its users run it:

- ``kernel``: the C++ kernel through the ``qwthn::quantum_layer`` torch custom op (adjoint
  backward), as training uses it;
- ``kernel-ort``: a single ``ai.qwthn::QuantumLayer`` node in onnxruntime with our op library
  registered (forward only), as deployment uses it;
- ``ort-fallback``: the same graph with the standard-op fallback function attached and no
  library registered (plain onnxruntime inlines it; forward only);
- ``torch-sim``: ``qwthn_onnx.circuit.expectation_values`` (fused PyTorch, adjoint backward);
- ``gate-by-gate``: a plain PyTorch statevector simulator, one einsum per gate, autograd
  backward (what a straightforward PyTorch quantum layer does);
- ``pl-default``: PennyLane ``default.qubit`` + backprop in a ``qml.qnn.TorchLayer``; the batch
  is broadcast (one tape of batch_size B);
- ``pl-lightning``: PennyLane ``lightning.qubit`` + adjoint in a TorchLayer; PennyLane splits
  the batch into one tape per sample, and computes the Jacobian in the forward pass too;
- ``qiskit-aer``: ``qiskit_aer.primitives.EstimatorV2``, exact, every parameter set of the batch
  in one call; forward+backward by parameter shift (2 shifted circuits per RY weight, 4 per CRZ
  weight, plus the unshifted one, per sample, all in one call). Aer drops the angles of
  parameterised controlled rotations when it binds parameters, so the circuit is transpiled to
  rz/rzz first.

Peers run in their own venv through ``benchmarks/peers/runner.py``. Every contender is timed
by the same protocol (:func:`peers.runner.measure`): a probe projects the cost of one call and
skips it above ``--budget`` seconds (30; the cell says ``skipped (est. N s)``, and the projected
rate still counts as that peer's speed in the targets), then a warm-up and the median of up to
7 calls that fit in half the budget. Backward passes projected to need more than
``--memory-gib`` (70% of the free memory) are skipped too: PennyLane backprop at n=10, L=10,
batch 1024 needs ~14 GiB. Outputs and gradient are checked against our PyTorch simulator in
float64 (max abs error <= 1e-4 on the outputs of the first samples and on the per-sample mean
gradient, else the cell says WRONG). Targets are read on n=10, L=10 at the largest batch run
(1024; 64 with ``--quick``).

Machine bound: real floating-point operations per sample of a gate-by-gate statevector
simulation (:data:`GATE_FLOPS`, per amplitude of the 2^n-amplitude state: 6 for a 1-qubit gate
with real or purely imaginary entries such as RY or RX, 14 for a general complex 2x2, 6 for a
diagonal phase on every amplitude (RZ), 3 for a controlled rotation or phase touching half of
them (CRZ), 0 for permutations; measurement 3 per amplitude for |a|^2 plus 1/2 per <Z_i>),
divided by this machine's single-core float32 GEMM rate (1024^2 ``torch.mm``, median), times
the threads. The paper circuit n=10, L=10 costs 1.91 MFLOP per sample forward. Adjoint model
for forward+backward: forward, then lambda = sum_i g_i Z_i psi ((n_obs + 2) per amplitude),
then per gate in reverse: the gate undone on psi and applied to lambda (2x its forward cost)
plus, per parameter, the generator's expectation Re/Im <lambda|G|psi> (4 per amplitude
touched); 3.66x the forward for the paper circuit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import onnx
import onnxruntime as ort
import torch
from peers.runner import Make, Measurement, measure
from system_info import machine_info

import qwthn_onnx
from qwthn_onnx import native
from qwthn_onnx.circuit import GATES, Circuit, expectation_values, gate_matrix, paper_circuit
from qwthn_onnx.ops.models import quantum_layer_model
from qwthn_onnx.ops.torch_ops import circuit_arguments, quantum_layer

HERE = Path(__file__).resolve().parent
PEER_PYTHON = HERE / ".venvs" / "peers" / "bin" / "python"
RUNNER = HERE / "peers" / "runner.py"

HEADLINE = (10, 10, 1024)
GRID = [HEADLINE] + [(n, L, b) for n in (4, 8, 12) for L in (2, 4) for b in (1, 64, 1024)]
QUICK = [(4, 2, 64), (10, 10, 64)]
PASSES = ("forward", "forward+backward")
TOLERANCE = 1e-4
N_CHECK = 4  # samples whose outputs are checked
TARGETS = {"forward": 20.0, "forward+backward": 10.0}  # kernel / fastest peer


@dataclass(frozen=True)
class Contender:
    """A column of the table: ``key`` for --contenders, the passes it has."""

    key: str
    title: str
    passes: tuple[str, ...] = PASSES
    peer: bool = False  # an outside tool, run in the peer venv


CONTENDERS = [
    Contender("kernel", "kernel (pybind11)"),
    Contender("kernel-ort", "kernel (onnxruntime)", ("forward",)),
    Contender("ort-fallback", "onnxruntime (fallback)", ("forward",)),
    Contender("torch-sim", "torch simulator"),
    Contender("gate-by-gate", "gate-by-gate torch"),
    Contender("pl-default", "PennyLane default.qubit", peer=True),
    Contender("pl-lightning", "PennyLane lightning.qubit", peer=True),
    Contender("qiskit-aer", "qiskit-aer", peer=True),
]
BY_KEY = {c.key: c for c in CONTENDERS}

# --------------------------------------------------------------------------------------------
# Machine bound
# --------------------------------------------------------------------------------------------

# Real FLOPs per amplitude of the state (2^n complex amplitudes): (forward application,
# gradient of one parameter = Re/Im <lambda|G|psi> over the amplitudes the gate touches).
# A general complex 2x2 would cost 14 (two complex multiplies and an add per amplitude); no
# gate of the table needs it: RX's entries are real or purely imaginary, like RY's are real.
GATE_FLOPS: dict[str, tuple[float, float]] = {
    "ry": (6, 4),
    "rx": (6, 4),
    "h": (6, 0),
    "rz": (6, 4),  # complex phase on every amplitude
    "p": (3, 2),  # phase on the |1> half
    "t": (3, 0),
    "tdg": (3, 0),
    "s": (0, 0),  # times +-i: a swap of re/im
    "sdg": (0, 0),
    "x": (0, 0),
    "y": (0, 0),
    "z": (0, 0),
    "cx": (0, 0),
    "cy": (0, 0),
    "cz": (0, 0),
    "swap": (0, 0),
    "crz": (3, 2),  # diagonal phase on the control-1 half
    "crx": (3, 2),
    "cry": (3, 2),
    "cp": (1.5, 1),  # phase on a quarter
    "rzz": (6, 4),
    "rxx": (6, 4),
    "ryy": (6, 4),
}
assert set(GATE_FLOPS) == set(GATES), "every gate of the IR needs a FLOP count"


def circuit_flops(circuit: Circuit) -> dict[str, float]:
    """Real FLOPs per sample of gate-by-gate simulation: forward and forward+backward."""
    amplitudes = 2**circuit.n_qubits
    forward = sum(GATE_FLOPS[g.name][0] for g in circuit.gates)
    forward += 3 + circuit.n_observables / 2  # |a|^2, then a half-sum per <Z_i>
    backward = circuit.n_observables + 2  # lambda = sum_i g_i Z_i psi
    for g in circuit.gates:
        apply, gradient = GATE_FLOPS[g.name]
        backward += 2 * apply + gradient * len(g.params)
    return {"forward": forward * amplitudes, "forward+backward": (forward + backward) * amplitudes}


def gemm_flops_per_second(repeats: int = 9) -> float:
    """Single-core float32 GEMM rate (1024^2 torch.mm), median of ``repeats``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.rand(1024, 1024), torch.rand(1024, 1024)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    return 2 * 1024**3 / statistics.median(times)


# --------------------------------------------------------------------------------------------
# Our contenders (in this process)
# --------------------------------------------------------------------------------------------


def gate_by_gate(circuit: Circuit, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One batched matrix contraction per gate; ``<Z_i>`` from the probabilities."""
    n, b = circuit.n_qubits, x.shape[0]
    state = torch.zeros(b, 2**n, dtype=torch.complex64)
    state[:, 0] = 1
    for g in circuit.gates:
        vals = [x[:, p.value] if p.kind == "input" else w[p.value].expand(b) for p in g.params]
        m = gate_matrix(GATES[g.name], torch.stack(vals, -1))
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


def gate_by_gate_backward_bytes(circuit: Circuit, batch: int) -> int:
    """The gate-by-gate autograd keeps up to ~3 complex64 states per gate alive for backward
    (a conservative count: 60-80% of it measured at n=8 and 10)."""
    return 3 * len(circuit.gates) * batch * 2**circuit.n_qubits * 8


def torch_make(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    w: torch.Tensor,
    direction: str,
) -> Make:
    """Calls of ``fn(x[:b], w)``; forward+backward also returns d sum(y) / d w."""

    def make(batch: int) -> Callable[[], tuple[Any, Any]]:
        xb = x[:batch]
        if direction == "forward":
            return lambda: (fn(xb, w), None)
        wg = w.clone().requires_grad_()

        def forward_backward() -> tuple[torch.Tensor, torch.Tensor]:
            wg.grad = None
            y = fn(xb, wg)
            y.sum().backward()
            return y.detach(), wg.grad

        return forward_backward

    return make


def kernel_session(circuit: Circuit, threads: int) -> ort.InferenceSession | str:
    """Session running our op library's kernel, or why there is none (it may not be built)."""
    try:
        options = qwthn_onnx.session_options(threads)
        model = quantum_layer_model(circuit, fallback=False).SerializeToString()
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def fallback_session(circuit: Circuit, threads: int) -> ort.InferenceSession:
    """Plain onnxruntime, no library: it inlines the standard-op fallback function."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = quantum_layer_model(circuit, fallback=True).SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def ort_make(session: ort.InferenceSession, x: torch.Tensor, w: torch.Tensor) -> Make:
    """Forward calls of the session on the first b samples."""
    xs, ws = x.numpy(), w.numpy()

    def make(batch: int) -> Callable[[], tuple[Any, None]]:
        feeds = {"x": xs[:batch], "weights": ws}
        return lambda: (session.run(None, feeds)[0], None)

    return make


def local_make(
    key: str, circuit: Circuit, x: torch.Tensor, w: torch.Tensor, direction: str, bench: Bench
) -> Make | str:
    """How an in-process contender runs, or why it is unavailable / not run here."""
    if key == "kernel":
        if not native.available():
            return "the C++ kernel (qwthn_onnx._native) is not built"
        encoded = circuit_arguments(circuit)
        return torch_make(lambda xb, wb: quantum_layer(xb, wb, *encoded), x, w, direction)
    if key == "kernel-ort":
        session = kernel_session(circuit, bench.threads)
        return session if isinstance(session, str) else ort_make(session, x, w)
    if key == "ort-fallback":
        return ort_make(fallback_session(circuit, bench.threads), x, w)
    if key == "torch-sim":
        return torch_make(lambda xb, wb: expectation_values(circuit, xb, wb), x, w, direction)
    memory = gate_by_gate_backward_bytes(circuit, len(x))
    if direction == "forward+backward" and memory > bench.memory_gib * 2**30:
        return f"skipped (memory est. {memory / 2**30:.0f} GiB)"
    return torch_make(lambda xb, wb: gate_by_gate(circuit, xb, wb), x, w, direction)


# --------------------------------------------------------------------------------------------
# Peers (in the peer venv)
# --------------------------------------------------------------------------------------------


def circuit_json(circuit: Circuit) -> dict[str, Any]:
    """The plain gate list the runner reads (qiskit gate names, character i of an observable
    acts on qubit i)."""
    return {
        "n_qubits": circuit.n_qubits,
        "n_inputs": circuit.n_inputs,
        "n_weights": circuit.n_weights,
        "observables": list(circuit.observables),
        "gates": [g.to_dict() for g in circuit.gates],
    }


class PeerWorker:
    """One ``runner.py`` process per peer, kept for the whole run (its imports cost seconds)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.process: subprocess.Popen[str] | None = None
        self.stderr: TextIO | None = None

    def ask(self, job: dict[str, Any]) -> dict[str, Any]:
        """Send one job, wait for its result (an error result if the runner died)."""
        if self.process is None or self.process.poll() is not None:
            env = os.environ.copy()
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[name] = str(self.threads)
            # kept open for the worker's life: its tail explains a crash; closed in close()
            self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
            self.process = subprocess.Popen(
                [str(PEER_PYTHON), str(RUNNER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.stderr,
                text=True,
                env=env,
            )
        assert self.process.stdin and self.process.stdout and self.stderr
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if line:
            return json.loads(line)
        self.process.wait()
        self.stderr.seek(0)
        tail = self.stderr.read()[-500:].strip()
        return {"error": f"runner exited with {self.process.returncode}: {tail}"}

    def close(self) -> None:
        if self.process is not None:
            self.process.communicate()
        if self.stderr is not None:
            self.stderr.close()


# --------------------------------------------------------------------------------------------
# One configuration
# --------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """Settings of a run and what it keeps across configurations."""

    contenders: list[str]
    threads: int
    repeats: int
    budget: float
    memory_gib: float
    workers: dict[str, PeerWorker] = field(default_factory=dict)
    peer_versions: dict[str, str] = field(default_factory=dict)


@dataclass
class Cell:
    """One contender on one configuration and pass."""

    rate: float | None = None  # samples/s, when measured
    status: str = ""  # "" (measured and right), WRONG, n/a, unavailable, skipped (...), error
    detail: str = ""  # reason, error or check result
    runs: int = 0
    note: str = ""  # how a peer ran the batch
    projected: float | None = None  # samples/s projected from the probes of a skipped run


Reference = tuple[np.ndarray, np.ndarray]  # outputs of the first samples, d sum(y) / d w


def reference(circuit: Circuit, x: torch.Tensor, w: torch.Tensor) -> Reference:
    """Our PyTorch simulator in float64: what every contender is checked against."""
    w64 = w.double().requires_grad_()
    y = expectation_values(circuit, x.double(), w64)
    y.sum().backward()
    assert w64.grad is not None
    return y.detach()[:N_CHECK].numpy(), w64.grad.numpy()


def checked(m: Measurement, batch: int, ref: Reference) -> Cell:
    """The measurement as a cell, WRONG where outputs or gradient miss the reference."""
    if m.skipped or m.seconds is None:
        projected = batch / m.estimate if m.estimate else None
        return Cell(status=m.skipped or "error", projected=projected)
    outputs, grad = m.value
    error = float(np.abs(np.asarray(outputs, dtype=np.float64)[:N_CHECK] - ref[0]).max())
    if grad is not None:  # per-sample mean of the batch-summed gradient
        error = max(error, float(np.abs(np.asarray(grad, dtype=np.float64) - ref[1]).max()) / batch)
    cell = Cell(rate=batch / m.seconds, runs=m.runs)
    if error > TOLERANCE:
        cell.status, cell.detail = "WRONG", f"max abs error {error:.1e}"
    return cell


def peer_outcome(
    bench: Bench, key: str, circuit: Circuit, x: torch.Tensor, w: torch.Tensor, direction: str
) -> tuple[Measurement | Cell, str]:
    """Run a peer in its venv: its measurement (or an error cell) and how it ran the batch."""
    job = {
        "contender": key,
        "direction": direction,
        "circuit": circuit_json(circuit),
        "inputs": x.tolist(),
        "weights": w.tolist(),
        "repeats": bench.repeats,
        "budget_s": bench.budget,
        "memory_budget": int(bench.memory_gib * 2**30),
        "threads": bench.threads,
        "n_check": N_CHECK,
    }
    result = bench.workers.setdefault(key, PeerWorker(bench.threads)).ask(job)
    bench.peer_versions.update(result.get("versions", {}))
    note = result.get("note", "")
    if result.get("error"):
        return Cell(status="error", detail=result["error"]), note
    if result.get("skipped"):
        estimate = result.get("estimate")
        return Measurement(skipped=result["skipped"], estimate=estimate), note
    value = (result["outputs"], result["grad"])
    return Measurement(result["seconds"], result["runs"], None, value), note


def local_outcome(
    bench: Bench, key: str, circuit: Circuit, x: torch.Tensor, w: torch.Tensor, direction: str
) -> Measurement | Cell:
    """Measure one of our contenders here, or a cell saying why it was not measured."""
    try:
        make = local_make(key, circuit, x, w, direction, bench)
        if isinstance(make, str):
            skipped = make.startswith("skipped")
            return Cell(status=make) if skipped else Cell(status="unavailable", detail=make)
        return measure(make, len(x), bench.repeats, bench.budget)
    except Exception as e:  # one broken contender must not end the run
        return Cell(status="error", detail=f"{type(e).__name__}: {e}")


def run_config(bench: Bench, n: int, layers: int, batch: int) -> dict[str, dict[str, Cell]]:
    """Cells of every selected contender, per pass, on one configuration."""
    circuit = paper_circuit(n, layers)
    generator = torch.Generator().manual_seed(1000 * n + 10 * layers + batch)
    x = torch.rand(batch, circuit.n_inputs, generator=generator) * torch.pi
    w = torch.rand(circuit.n_weights, generator=generator) * 2 * torch.pi
    ref = reference(circuit, x, w)
    cells: dict[str, dict[str, Cell]] = {p: {} for p in PASSES}
    for direction in PASSES:
        for key in bench.contenders:
            note = ""
            if direction not in BY_KEY[key].passes:
                outcome: Measurement | Cell = Cell(status="n/a")
            elif BY_KEY[key].peer:
                outcome, note = peer_outcome(bench, key, circuit, x, w, direction)
            else:
                outcome = local_outcome(bench, key, circuit, x, w, direction)
            cell = checked(outcome, batch, ref) if isinstance(outcome, Measurement) else outcome
            cell.note = note
            cells[direction][key] = cell
    return cells


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def percent(fraction: float) -> str:
    """Two significant digits: fractions of the bound span 0.001% to 100%."""
    return f"{100 * fraction:.2g}%"


def cell_text(cell: Cell, bound: float) -> str:
    """Samples/s with the fraction of the bound, or the cell's status."""
    if cell.rate is None:
        return cell.status
    text = f"{cell.rate:,.0f} ({percent(cell.rate / bound)})"
    return f"WRONG {text}" if cell.status == "WRONG" else text


def fastest_peer(cells: dict[str, Cell]) -> tuple[str, float] | None:
    """The fastest outside tool with a right answer, as (title, samples/s); a rate projected
    for a peer skipped as too slow counts too (marked), so a skip cannot flatter the kernel."""
    rates = []
    for key, c in cells.items():
        if not BY_KEY[key].peer or c.status == "WRONG":
            continue
        if c.rate is not None:
            rates.append((c.rate, BY_KEY[key].title))
        elif c.projected is not None:
            rates.append((c.projected, f"{BY_KEY[key].title}, projected"))
    if not rates:
        return None
    rate, title = max(rates)
    return title, rate


def target_lines(
    config: tuple[int, int, int], cells: dict[str, dict[str, Cell]], bounds: dict[str, float]
) -> list[str]:
    """Kernel vs fastest peer, and kernel vs the bound, against the targets."""
    n, layers, batch = config
    lines = [f"Targets on n={n}, L={layers}, batch {batch}:"]
    for direction in PASSES:
        kernel = cells[direction].get("kernel")
        peer = fastest_peer(cells[direction])
        if kernel is None or kernel.rate is None or kernel.status == "WRONG" or peer is None:
            lines.append(f"- {direction}: kernel / fastest peer: not measured")
            continue
        ratio = kernel.rate / peer[1]
        met = "met" if ratio >= TARGETS[direction] else "MISSED"
        lines.append(
            f"- {direction}: kernel / fastest peer ({peer[0]}, {peer[1]:,.0f}/s) = {ratio:.1f}x "
            f"(target >= {TARGETS[direction]:.0f}x: {met})"
        )
    kernel = cells["forward"].get("kernel")
    if kernel is not None and kernel.rate is not None:
        fraction = kernel.rate / bounds["forward"]
        met = "met" if fraction >= 0.5 else "MISSED"
        lines.append(
            f"- kernel forward = {percent(fraction)} of the bound "
            f"(target: within 2x, >= 50%: {met})"
        )
    return lines


def meminfo_gib(field_name: str) -> float:
    """A /proc/meminfo field (MemTotal, MemAvailable) in GiB."""
    with open("/proc/meminfo") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field_name))) / 2**20


def our_versions() -> dict[str, str]:
    """Versions in this (the package's) environment."""
    return {
        "python": platform.python_version(),
        "qwthn_onnx": qwthn_onnx.__version__,
        "kernel_isa": native.isa() if native.available() else "not built",
        "torch": str(torch.__version__),
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
    }


def row_record(
    config: tuple[int, int, int], direction: str, flops: float, bound: float, cells: dict
) -> dict[str, Any]:
    """One table row for the JSON output."""
    n, layers, batch = config
    return {
        "n": n,
        "layers": layers,
        "batch": batch,
        "pass": direction,
        "flops_per_sample": flops,
        "bound_samples_per_second": bound,
        "contenders": {
            key: {
                "samples_per_second": c.rate,
                "fraction_of_bound": c.rate / bound if c.rate else None,
                "projected_samples_per_second": c.projected,
                "status": c.status,
                "detail": c.detail,
                "runs": c.runs,
                "note": c.note,
            }
            for key, c in cells.items()
        },
    }


def report_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Why cells are unavailable, wrong or errors (where), and how each peer ran its batch."""
    notes = []
    for row in rows:
        where = f"n={row['n']}, L={row['layers']}, batch {row['batch']}, {row['pass']}"
        for key, c in row["contenders"].items():
            title = BY_KEY[key].title
            if c["status"] == "unavailable":
                notes.append(f"- {title} unavailable: {c['detail']}")
            elif c["detail"]:
                notes.append(f"- {title} {c['status']} on {where}: {c['detail']}")
            if c["note"]:
                notes.append(f"- {title}: {c['note']}")
    return list(dict.fromkeys(notes))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK} (n, L, batch)")
    parser.add_argument("--threads", type=int, default=1, help="threads for every contender")
    parser.add_argument("--json", help="also write all results and the machine here")
    parser.add_argument(
        "--contenders", default=",".join(BY_KEY), help=f"comma-separated subset of {list(BY_KEY)}"
    )
    parser.add_argument(
        "--budget",
        type=float,
        help="skip a contender whose call is projected above this many seconds; repeats stop "
        "after half of it (default 30, quick 10)",
    )
    parser.add_argument(
        "--memory-gib",
        type=float,
        default=round(0.7 * meminfo_gib("MemAvailable"), 1),
        help="skip a backward projected to need more memory (default: 70%% of what is free)",
    )
    args = parser.parse_args()
    args.contenders = [k.strip() for k in args.contenders.split(",") if k.strip()]
    unknown = sorted(set(args.contenders) - set(BY_KEY))
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {list(BY_KEY)}")
    return args


def main() -> None:
    args = parse_args()
    keys = args.contenders
    if any(BY_KEY[k].peer for k in keys) and not PEER_PYTHON.exists():
        print(
            f"The peer venv {PEER_PYTHON.parent.parent} is missing, so PennyLane and qiskit-aer "
            "are left out. Create it with: bash benchmarks/setup_peers.sh\n"
        )
        keys = [k for k in keys if not BY_KEY[k].peer]
    torch.set_num_threads(args.threads)
    bench = Bench(
        contenders=keys,
        threads=args.threads,
        repeats=3 if args.quick else 7,
        budget=args.budget or (10 if args.quick else 30),
        memory_gib=args.memory_gib,
    )
    machine = machine_info(
        memory_gib=round(meminfo_gib("MemTotal"), 1),
        threads=args.threads,
        sgemm_gflops_per_core=round(gemm_flops_per_second() / 1e9, 1),
    )
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; "
        f"{args.threads} thread(s); sgemm {machine['sgemm_gflops_per_core']} GFLOP/s per core.\n"
        f"Samples/s (fraction of the bound), median of up to {bench.repeats} after a warm-up; "
        f"budget {bench.budget:.0f} s per call, {bench.memory_gib:.1f} GiB per backward."
    )
    header = ["n", "L", "batch", "pass", "bound", *(BY_KEY[k].title for k in keys)]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    rows, measured = [], {}
    start = time.perf_counter()
    try:
        for config in QUICK if args.quick else GRID:
            flops = circuit_flops(paper_circuit(*config[:2]))
            gemm = machine["sgemm_gflops_per_core"] * 1e9
            bounds = {p: args.threads * gemm / flops[p] for p in PASSES}
            cells = run_config(bench, *config)
            measured[config] = (cells, bounds)
            for direction in PASSES:
                texts = [cell_text(cells[direction][k], bounds[direction]) for k in keys]
                row = [*config, direction, f"{bounds[direction]:,.0f}", *texts]
                print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
                rows.append(
                    row_record(
                        config, direction, flops[direction], bounds[direction], cells[direction]
                    )
                )
    finally:
        for worker in bench.workers.values():
            worker.close()
    elapsed = time.perf_counter() - start

    notes = report_notes(rows)
    if notes:
        print("\nNotes:\n" + "\n".join(notes))
    targets: list[str] = []
    headline = [c for c in measured if c[:2] == HEADLINE[:2]]
    if headline:
        config = max(headline, key=lambda c: c[2])
        targets = target_lines(config, *measured[config])
        print("\n" + "\n".join(targets))
    versions = {"ours": our_versions(), "peers": bench.peer_versions}
    print("\nVersions: " + ", ".join(f"{k} {v}" for k, v in versions["ours"].items()))
    if bench.peer_versions:
        print("Peer venv: " + ", ".join(f"{k} {v}" for k, v in bench.peer_versions.items()))
    print(f"Total {elapsed:.0f} s.")
    if args.json:
        settings = {
            "repeats": bench.repeats,
            "budget_s": bench.budget,
            "memory_gib": bench.memory_gib,
        }
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine,
                    "versions": versions,
                    "settings": settings,
                    "results": rows,
                    "targets": targets,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
