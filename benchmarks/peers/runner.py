"""Peer contenders of benchmarks/kernel_speed.py, timed in the peers' own virtual env.

    benchmarks/.venvs/peers/bin/python benchmarks/peers/runner.py < jobs.jsonl

The peers (PennyLane, qiskit-aer) are not dependencies of qwthn_onnx, so they run here, in a
separate interpreter that never imports qwthn_onnx. Each stdin line is one JSON job; each job
gets one JSON line on stdout, so one worker process serves a whole benchmark run.

Job: ``contender`` (``pl-default`` | ``pl-lightning`` | ``qiskit-aer``), ``direction``
(``forward`` | ``forward+backward``), ``circuit`` (``n_qubits``, ``n_inputs``, ``n_weights``,
``observables`` as Pauli strings with character i acting on qubit i, ``gates`` as
``{"name", "wires", "params": [{"kind": "input" | "weight" | "const", "value"}]}`` with
qiskit / OpenQASM 3 gate names and conventions), ``inputs`` [batch][n_inputs], ``weights``
[n_weights], ``repeats``, ``budget_s`` (most seconds one call may be projected to take; see
:func:`measure`), ``memory_budget`` (bytes), ``threads``, ``n_check`` (samples whose outputs come
back).

Result: ``seconds`` (median per call on the whole batch, or null), ``runs``, ``skipped``
(why not measured), ``estimate`` (projected seconds per call), ``error``, ``outputs`` (first
``n_check`` samples), ``grad`` (d sum(y) / d weights over the batch, forward+backward only),
``note`` (how the peer ran the batch), ``versions``.

:func:`measure` is also the timing protocol of the in-process contenders of kernel_speed.py.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

Call = Callable[[], Any]
# make(b) -> a call that runs the contender once on the first b samples
Make = Callable[[int], Call]
PROBE_BATCH = 32


@dataclass
class Measurement:
    """Median seconds per call on the full batch, or why there is none."""

    seconds: float | None = None
    runs: int = 0
    skipped: str | None = None
    value: Any = None  # what the last call returned
    estimate: float | None = None  # projected seconds per call, from the probes


def _timed(call: Call) -> tuple[float, Any]:
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


def measure(make: Make, batch: int, repeats: int, budget_s: float) -> Measurement:
    """Time ``make(batch)()`` within about ``budget_s`` seconds.

    The full-batch cost is first estimated, so that a slow peer is skipped before it eats the
    run: from a call on 1 sample, linear in the batch when that fits the budget anyway, else
    from a second probe on as many samples (up to ``PROBE_BATCH``) as a quarter of the budget
    allows. Then one warm-up call and up to ``repeats`` timed calls, as many as fit in half
    the budget; a call slower than half the budget is its own (single) measurement.
    """
    probe = make(1)
    single, _ = _timed(probe)  # the first call also pays imports, plans, caches
    if single < budget_s / 100:  # cheap enough to time again, warm
        single, _ = _timed(probe)
    estimate = single * batch
    size = min(batch, PROBE_BATCH, int(budget_s / 4 / max(single, 1e-9)))
    if estimate > budget_s and size > 1:
        seconds, _ = _timed(make(size))
        estimate = single + max(seconds - single, 0.0) * (batch - 1) / (size - 1)
    if estimate > budget_s:
        return Measurement(skipped=f"skipped (est. {estimate:.0f} s)", estimate=estimate)
    call = make(batch)
    first, value = _timed(call)
    if first > budget_s / 2:
        return Measurement(first, 1, None, value, estimate)
    times = []
    for _ in range(max(1, min(repeats, int(budget_s / 2 / first)))):
        seconds, value = _timed(call)
        times.append(seconds)
    return Measurement(statistics.median(times), len(times), None, value, estimate)


# --------------------------------------------------------------------------------------------
# Circuit helpers shared by the peers
# --------------------------------------------------------------------------------------------


def _angles(circuit: dict, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-sample angle of every gate parameter occurrence, [batch, n_occurrences] float64."""
    columns = []
    for gate in circuit["gates"]:
        for p in gate["params"]:
            if p["kind"] == "input":
                columns.append(x[:, p["value"]].astype(np.float64))
            elif p["kind"] == "weight":
                columns.append(np.full(len(x), float(w[p["value"]])))
            else:
                columns.append(np.full(len(x), float(p["value"])))
    return np.stack(columns, -1) if columns else np.zeros((len(x), 0))


def _pauli_terms(observable: str) -> tuple[str, list[int]]:
    """Pauli string (character i acts on qubit i) -> (non-identity letters, their qubits)."""
    qubits = [q for q, c in enumerate(observable) if c != "I"]
    return "".join(observable[q] for q in qubits), qubits


# --------------------------------------------------------------------------------------------
# PennyLane: qml.qnn.TorchLayer, as users put a QNode into a torch model
# --------------------------------------------------------------------------------------------

_PENNYLANE_GATES = {
    "rx": "RX",
    "ry": "RY",
    "rz": "RZ",
    "p": "PhaseShift",
    "h": "Hadamard",
    "x": "PauliX",
    "y": "PauliY",
    "z": "PauliZ",
    "s": "S",
    "t": "T",
    "cx": "CNOT",
    "cy": "CY",
    "cz": "CZ",
    "swap": "SWAP",
    "crx": "CRX",
    "cry": "CRY",
    "crz": "CRZ",
    "cp": "ControlledPhaseShift",
    "rzz": "IsingZZ",
    "rxx": "IsingXX",
    "ryy": "IsingYY",
}


def _pennylane(
    circuit: dict, x: np.ndarray, w: np.ndarray, direction: str, job: dict
) -> tuple[Make, str]:
    """``default.qubit`` + backprop (broadcast: one tape for the batch) or ``lightning.qubit``
    + adjoint (PennyLane splits the batch into one tape per sample), both in a TorchLayer."""
    import pennylane as qml
    import torch

    torch.set_num_threads(job["threads"])
    device_name, diff_method = {
        "pl-default": ("default.qubit", "backprop"),
        "pl-lightning": ("lightning.qubit", "adjoint"),
    }[job["contender"]]
    device = qml.device(device_name, wires=circuit["n_qubits"])

    def operation(name: str) -> Callable[..., Any]:
        if name in ("sdg", "tdg"):
            return lambda **kw: qml.adjoint(getattr(qml, name[0].upper()))(**kw)
        return getattr(qml, _PENNYLANE_GATES[name])

    def observable(pauli: str) -> Any:
        letters, qubits = _pauli_terms(pauli)
        ops = [getattr(qml, f"Pauli{c}")(q) for c, q in zip(letters, qubits, strict=True)]
        return qml.prod(*ops) if len(ops) > 1 else ops[0] if ops else qml.Identity(0)

    @qml.qnode(device, interface="torch", diff_method=diff_method)
    def qnode(inputs: torch.Tensor, weights: torch.Tensor) -> list:
        for gate in circuit["gates"]:
            angles = [
                inputs[..., p["value"]]
                if p["kind"] == "input"
                else weights[p["value"]]
                if p["kind"] == "weight"
                else p["value"]
                for p in gate["params"]
            ]
            operation(gate["name"])(*angles, wires=gate["wires"])
        return [qml.expval(observable(o)) for o in circuit["observables"]]

    layer = qml.qnn.TorchLayer(qnode, {"weights": (circuit["n_weights"],)})
    with torch.no_grad():
        layer.weights.copy_(torch.from_numpy(w))
    inputs = torch.from_numpy(x)
    tapes, _ = qml.workflow.construct_batch(qnode, level="device")(inputs[:2], layer.weights)
    note = (
        "the batch runs as one broadcast tape"
        if len(tapes) == 1 and tapes[0].batch_size == 2
        else "PennyLane splits the batch into one tape per sample"
    )

    def make(batch: int) -> Call:
        xb = inputs[:batch]
        if direction == "forward":

            def forward() -> tuple[np.ndarray, None]:
                with torch.no_grad():
                    return layer(xb).numpy(), None

            return forward

        def forward_backward() -> tuple[np.ndarray, np.ndarray]:
            layer.zero_grad()
            y = layer(xb)
            y.sum().backward()
            return y.detach().numpy(), layer.weights.grad.numpy().copy()

        return forward_backward

    return make, note


# --------------------------------------------------------------------------------------------
# qiskit-aer: EstimatorV2, exact expectation values, every parameter set in one call
# --------------------------------------------------------------------------------------------

_HALF_PI = math.pi / 2
# Parameter-shift rules (shift, coefficient): rotations with a Pauli generator (one frequency)
# need two terms; controlled rotations (generator eigenvalues 0, ±1/2) need four.
_TWO_TERM = ((_HALF_PI, 0.5), (-_HALF_PI, -0.5))
_C_PLUS, _C_MINUS = (math.sqrt(2) + 1) / (4 * math.sqrt(2)), (math.sqrt(2) - 1) / (4 * math.sqrt(2))
_FOUR_TERM = (
    (_HALF_PI, _C_PLUS),
    (-_HALF_PI, -_C_PLUS),
    (3 * _HALF_PI, -_C_MINUS),
    (-3 * _HALF_PI, _C_MINUS),
)
_SHIFT_RULES = {name: _TWO_TERM for name in ("rx", "ry", "rz", "p", "cp", "rzz", "rxx", "ryy")}
_SHIFT_RULES |= {name: _FOUR_TERM for name in ("crx", "cry", "crz")}


_AER_BASIS = ["rx", "ry", "rz", "p", "h", "x", "y", "z", "s", "sdg", "t", "tdg", "cx", "cy", "cz"]
_AER_BASIS += ["swap", "rzz", "rxx", "ryy"]


def _shifts(circuit: dict) -> list[tuple[int, int, float, float]]:
    """(occurrence column, weight index, shift, coefficient) for every weight's shifted run."""
    shifts, column = [], 0
    for gate in circuit["gates"]:
        for p in gate["params"]:
            if p["kind"] == "weight":
                shifts += [(column, p["value"], s, c) for s, c in _SHIFT_RULES[gate["name"]]]
            column += 1
    return shifts


def _qiskit_aer(
    circuit: dict, x: np.ndarray, w: np.ndarray, direction: str, job: dict
) -> tuple[Make, str]:
    """Forward: one EstimatorV2 call with the batch's parameter sets. Forward+backward:
    parameter shift, the unshifted and every shifted set of the batch in one call."""
    from qiskit import QuantumCircuit, transpile
    from qiskit.circuit import ParameterVector
    from qiskit.quantum_info import SparsePauliOp
    from qiskit_aer.primitives import EstimatorV2

    n = circuit["n_qubits"]
    n_params = sum(len(g["params"]) for g in circuit["gates"])
    theta = iter(ParameterVector("g", n_params))  # one parameter per occurrence, in gate order
    qc = QuantumCircuit(n)
    for gate in circuit["gates"]:
        getattr(qc, gate["name"])(*[next(theta) for _ in gate["params"]], *gate["wires"])
    # Aer's parameter binding ignores the angle of controlled rotations (crx, cry, crz, cp
    # give wrong results; qiskit-aer issues 2323, 2391, 2403), so they are transpiled away.
    qc = transpile(qc, basis_gates=_AER_BASIS, optimization_level=0)
    # shape [n_obs, 1]: broadcasts against the [rows] parameter sets
    observables = [
        [SparsePauliOp.from_sparse_list([(*_pauli_terms(o), 1.0)], n)]
        for o in circuit["observables"]
    ]
    backend = {"method": "statevector", "max_parallel_threads": job["threads"]}
    estimator = EstimatorV2(options={"backend_options": backend, "default_precision": 0.0})
    shifts = _shifts(circuit)
    note = f"transpiled to {', '.join(sorted(qc.count_ops()))}; one circuit per sample"
    if direction == "forward+backward":
        weighted = sorted(
            {g["name"] for g in circuit["gates"] for p in g["params"] if p["kind"] == "weight"}
        )
        terms = " + ".join(f"{len(_SHIFT_RULES[name])} per {name} weight" for name in weighted)
        note += f", times 1 + {terms} for parameter shift, all in one call"

    def evaluate(angles: np.ndarray) -> np.ndarray:
        """Expectations [rows, n_obs] of the parameter sets ``angles`` [rows, n_params]."""
        (result,) = estimator.run([(qc, observables, angles)]).result()
        return result.data.evs.T

    def make(batch: int) -> Call:
        xb = x[:batch]
        if direction == "forward":
            return lambda: (evaluate(_angles(circuit, xb, w)), None)

        def forward_backward() -> tuple[np.ndarray, np.ndarray]:
            base = _angles(circuit, xb, w)
            runs = np.repeat(base[None], 1 + len(shifts), axis=0)
            for k, (column, _, shift, _) in enumerate(shifts, start=1):
                runs[k, :, column] += shift
            y = evaluate(runs.reshape(-1, n_params)).reshape(1 + len(shifts), batch, -1)
            totals = y.sum(axis=(1, 2))
            grad = np.zeros(circuit["n_weights"])
            for k, (_, weight, _, coefficient) in enumerate(shifts, start=1):
                grad[weight] += coefficient * totals[k]
            return y[0], grad

        return forward_backward

    return make, note


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------

# builder(circuit, inputs, weights, direction, job) -> (make, note on how it runs the batch)
BUILDERS: dict[str, Callable[[dict, np.ndarray, np.ndarray, str, dict], tuple[Make, str]]] = {
    "pl-default": _pennylane,
    "pl-lightning": _pennylane,
    "qiskit-aer": _qiskit_aer,
}


def memory_estimate(job: dict, batch: int) -> int:
    """Bytes a call keeps alive at its peak, where that can outgrow the machine.

    PennyLane backprop keeps ~2.2 complex128 batch states per gate for autograd (36 bytes per
    gate and amplitude, measured at n=8 and 10). Aer copies the circuit for each parameter set
    it binds, ~1.1 KiB per gate (measured at n=10, L=10); parameter shift binds (1 + shifts)
    sets per sample.
    """
    circuit, backward = job["circuit"], job["direction"] == "forward+backward"
    if job["contender"] == "pl-default" and backward:
        return 36 * len(circuit["gates"]) * batch * 2 ** circuit["n_qubits"]
    if job["contender"] == "qiskit-aer":
        sets = 1 + len(_shifts(circuit)) if backward else 1
        return sets * batch * len(circuit["gates"]) * 1536
    return 0


def versions() -> dict[str, str]:
    """Versions of the peer packages in this interpreter."""
    found = {"python": platform.python_version()}
    for name in ("numpy", "torch", "pennylane", "pennylane_lightning", "qiskit", "qiskit-aer"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_job(job: dict) -> dict:
    """Build the contender, measure it, and return the result dict (errors included)."""
    x = np.asarray(job["inputs"], dtype=np.float32)
    w = np.asarray(job["weights"], dtype=np.float32)
    batch = len(x)
    result: dict[str, Any] = {
        "seconds": None,
        "runs": 0,
        "skipped": None,
        "error": None,
        "note": "",
    }
    try:
        memory = memory_estimate(job, batch)
        if memory > job["memory_budget"]:
            result["skipped"] = f"skipped (memory est. {memory / 2**30:.0f} GiB)"
        else:
            make, result["note"] = BUILDERS[job["contender"]](
                job["circuit"], x, w, job["direction"], job
            )
            m = measure(make, batch, job["repeats"], job["budget_s"])
            result |= {"seconds": m.seconds, "runs": m.runs, "skipped": m.skipped}
            result["estimate"] = m.estimate
            if m.value is not None:
                outputs, grad = m.value
                result["outputs"] = np.asarray(outputs)[: job["n_check"]].tolist()
                result["grad"] = None if grad is None else np.asarray(grad).tolist()
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc(file=sys.stderr)
    result["versions"] = versions()
    return result


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run_job(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
