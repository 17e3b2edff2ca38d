"""Readout-error mitigation: calibrate a device's measurement, then undo its bias in the estimates.

A device misreads a qubit in |0> as 1 with probability ``e0 = P(1|0)`` and one in |1> as 0 with
``e1 = P(0|1)``. On one qubit the measured ``<Z> = a <Z>_true + b`` with ``a = 1 - e0 - e1``
(the contrast) and ``b = e1 - e0``. Two calibration circuits on the device give both, the way a
user measures them on hardware: preparing |0...0> on the layer's measured qubits reads
``m0 = a + b`` per qubit, preparing |1...1> reads ``m1 = b - a``, so ``a = (m0 - m1) / 2`` and
``b = (m0 + m1) / 2``.

For a Pauli string on qubits S (measured, as the estimator does, by rotating each qubit into the
Z basis), independent readout errors act on each measured bit alone: the measured parity
``<P_S> = <prod_i (a_i z_i + b_i)>`` mixes in every sub-string ``P_T``, ``T ⊆ S``. Inverting
qubit by qubit, ``z_i = (m_i - b_i) / a_i``, gives the exact correction

    <P_S>_true = sum_{T ⊆ S} prod_{i in S \\ T} (-b_i) <P_T>_meas / prod_{i in S} a_i

(``<P_∅> = 1``). It reduces to a product of per-qubit factors only when every ``b_i = 0``
(symmetric errors), which real devices do not have, so a string is corrected only when the
layer also measures each of its sub-strings; otherwise it is left raw and the reason recorded in
:attr:`ReadoutMitigated.skipped`. The paper circuits measure single-qubit ``Z_i``: all corrected.

The correction is linear in a job's estimates (one matrix per layer, applied in :meth:`run`);
results are clipped to [-1, 1]. Calibration is cached by physical qubits: a layer whose
measured qubits were already calibrated (by a layer on the same qubits) reuses it.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qwthn_onnx.circuit.ir import Circuit

from .backend import LayerCall, LayerReport, QPUError, QuantumBackend, check_shots
from .qiskit_backends import AerBackend, QiskitEstimatorBackend, precision_for_shots

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import SparsePauliOp

__all__ = [
    "MIN_CONTRAST",
    "MITIGATIONS",
    "ReadoutCalibration",
    "ReadoutMitigated",
    "correction_matrix",
    "mitigate",
]

MITIGATIONS = {"readout": "calibrate each measured qubit's readout and invert its bias"}
# Below this contrast a = 1 - e0 - e1 the correction multiplies shot noise by more than 10
MIN_CONTRAST = 0.1
_CALIBRATION_STREAM = 0x52454144  # seeds calibration jobs apart from the layers' jobs


@dataclass(frozen=True)
class ReadoutCalibration:
    """The measured ``<Z_q>`` of ``qubits`` (device qubits) prepared in |0> (``m0``) and |1>
    (``m1``), and what measuring it cost."""

    qubits: tuple[int, ...]
    m0: np.ndarray
    m1: np.ndarray
    circuits: int
    shots: int  # in all: circuits x shots per circuit
    wall_s: float

    @property
    def contrast(self) -> np.ndarray:
        """``a = 1 - P(1|0) - P(0|1)`` per qubit."""
        return (self.m0 - self.m1) / 2

    @property
    def offset(self) -> np.ndarray:
        """``b = P(0|1) - P(1|0)`` per qubit."""
        return (self.m0 + self.m1) / 2

    def as_dict(self) -> dict[str, Any]:
        return {
            "qubits": list(self.qubits),
            "p1_given_0": [float(v) for v in (1 - self.m0) / 2],
            "p0_given_1": [float(v) for v in (1 + self.m1) / 2],
            "circuits": self.circuits,
            "shots": self.shots,
            "wall_s": self.wall_s,
        }


class ReadoutMitigated(QuantumBackend):
    """``inner``'s estimates with its device's readout error undone (see the module docstring).

    ``inner`` must sample a noisy device: a :class:`QiskitEstimatorBackend` with a device and
    shots (``aer:<device>`` with noise, ``ibm:<device>``). The calibration circuits run through
    ``inner``'s own estimator and noise model with ``calibration_shots`` each (default: inner's
    shots). ``reports`` is ``inner``'s; ``last_raw`` holds the latest job's uncorrected
    estimates.
    """

    def __init__(self, inner: QuantumBackend, *, calibration_shots: int | None = None) -> None:
        super().__init__()
        self.inner = _wrappable(inner)
        self.name = f"{inner.name}+readout"
        self.shots = inner.shots
        self.num_qubits = inner.num_qubits
        self.rep_delay_s = inner.rep_delay_s
        self.reports = inner.reports
        self.calibration_shots = check_shots(calibration_shots) or inner.shots
        self.calibrations: list[ReadoutCalibration] = []
        self.skipped: dict[str, dict[int, str]] = {}  # layer -> observable index -> why raw
        self.last_raw: list[np.ndarray] = []
        self._corrections: dict[str, np.ndarray] = {}  # layer -> [n_obs + 1, n_obs]
        seed = None if inner.seed is None else [inner.seed, _CALIBRATION_STREAM]
        self._seeds = np.random.default_rng(seed)

    def prepare(self, layer: str, circuit: Circuit, weights: np.ndarray) -> LayerReport:
        if layer in self._corrections:
            return self.reports[layer]
        return self._prepare(layer, circuit, np.asarray(weights, dtype=np.float64))

    def _prepare(self, layer: str, circuit: Circuit, weights: np.ndarray) -> LayerReport:
        report = self.inner.prepare(layer, circuit, weights)
        compiled = self.inner.compiled[layer]
        calibration = self._calibration(compiled.readout_qubits)
        matrix, skipped = correction_matrix(compiled.observables, calibration)
        for observable, reason in skipped.items():
            warnings.warn(
                f"readout mitigation leaves observable {observable} of layer {layer!r} raw: "
                f"{reason}.",
                stacklevel=3,
            )
        if skipped:
            self.skipped[layer] = skipped
        self._corrections[layer] = matrix
        return report

    def run(self, calls: Sequence[LayerCall]) -> list[np.ndarray]:
        matrices = [self._matrix(call.layer) for call in calls]  # all prepared: before the job
        self.last_raw = self.inner.run(calls)
        return [_apply(m, raw) for m, raw in zip(matrices, self.last_raw, strict=True)]

    def correct(self, layer: str, estimates: np.ndarray) -> np.ndarray:
        """``estimates [N, n_obs]`` of ``layer`` (raw, from ``inner``) with the readout undone."""
        return _apply(self._matrix(layer), estimates)

    def _matrix(self, layer: str) -> np.ndarray:
        matrix = self._corrections.get(layer)
        if matrix is None:
            raise QPUError(f"layer {layer!r} was not prepared on {self.name}.")
        return matrix

    def summary(self) -> dict[str, Any]:
        """The calibration cost and results, and the observables left raw, for reports."""
        return {
            "method": "readout",
            "circuits": sum(c.circuits for c in self.calibrations),
            "shots": sum(c.shots for c in self.calibrations),
            "wall_s": sum(c.wall_s for c in self.calibrations),
            "calibrations": [c.as_dict() for c in self.calibrations],
            "skipped": {layer: dict(reasons) for layer, reasons in self.skipped.items()},
        }

    # -- calibration ------------------------------------------------------------------------

    def _calibration(self, qubits: tuple[int, ...]) -> ReadoutCalibration:
        """A calibration covering ``qubits``: an earlier one when it does, else a new job."""
        needed = set(qubits)
        for calibration in self.calibrations:
            if needed <= set(calibration.qubits):
                return calibration
        calibration = self._calibrate(tuple(sorted(needed)))
        self.calibrations.append(calibration)
        return calibration

    def _calibrate(self, qubits: tuple[int, ...]) -> ReadoutCalibration:
        """One job of two circuits, |0...0> and |1...1> on ``qubits``, measuring each Z_q."""
        from qiskit.quantum_info import SparsePauliOp

        device = self.inner.device
        width = device.num_qubits
        observables = [
            SparsePauliOp.from_sparse_list([("Z", [q], 1.0)], num_qubits=width) for q in qubits
        ]
        circuits = [_prepared(device, width, ()), _prepared(device, width, qubits)]
        seed = None if self.inner.seed is None else int(self._seeds.integers(1, 2**31 - 1))
        start = time.perf_counter()
        job = self.inner.estimator(seed).run(
            [(c, [observables]) for c in circuits],
            precision=precision_for_shots(self.calibration_shots),
        )
        m0, m1 = (np.asarray(r.data.evs, dtype=np.float64).reshape(-1) for r in job.result())
        wall = time.perf_counter() - start
        calibration = ReadoutCalibration(
            qubits, m0, m1, len(circuits), len(circuits) * self.calibration_shots, wall
        )
        poor = [
            f"qubit {q} (<Z> {z0:+.3f} in |0>, {z1:+.3f} in |1>)"
            for q, z0, z1, a in zip(qubits, m0, m1, calibration.contrast, strict=True)
            if a < MIN_CONTRAST
        ]
        if poor:
            raise QPUError(
                f"{self.inner.name}: the readout of {', '.join(poor)} barely tells |0> from |1> "
                f"(contrast below {MIN_CONTRAST}); correcting it would mostly amplify shot "
                "noise. Run without mitigation, or on other qubits/another device."
            )
        return calibration


def correction_matrix(
    observables: Sequence[SparsePauliOp], calibration: ReadoutCalibration
) -> tuple[np.ndarray, dict[int, str]]:
    """``M [n_obs + 1, n_obs]`` with corrected = [raw, 1] @ M (the module docstring's formula),
    and why each observable it leaves raw (its column of M is then the unit one)."""
    index = {q: i for i, q in enumerate(calibration.qubits)}
    a, b = calibration.contrast, calibration.offset
    n = len(observables)
    rows = {
        _pauli_key(op.paulis.x[0], op.paulis.z[0]): k
        for k, op in enumerate(observables)
        if _single_pauli(op)
    }
    rows[(), ()] = n  # <I> = 1: the last row
    matrix = np.zeros((n + 1, n))
    skipped: dict[int, str] = {}
    for k, op in enumerate(observables):
        matrix[k, k] = 1.0  # raw unless corrected below
        if not _single_pauli(op):
            skipped[k] = "it is not a single Pauli string of coefficient 1"
            continue
        x, z = op.paulis.x[0], op.paulis.z[0]
        support = [int(q) for q in np.flatnonzero(x | z)]
        if not support:
            continue  # the identity: nothing is measured
        uncalibrated = [q for q in support if q not in index]
        if uncalibrated:
            skipped[k] = f"qubits {uncalibrated} were not calibrated"
            continue
        terms = _substrings(x, z, support, rows)
        if isinstance(terms, str):
            skipped[k] = (
                f"its correction over qubits {support} needs the sub-string {terms}, which the "
                "layer does not measure"
            )
            continue
        scale = 1.0 / np.prod(a[[index[q] for q in support]])
        matrix[k, k] = 0.0
        for row, subset in terms:
            rest = [index[q] for q in support if q not in subset]
            matrix[row, k] += np.prod(-b[rest]) * scale
    return matrix, skipped


def _apply(matrix: np.ndarray, estimates: np.ndarray) -> np.ndarray:
    raw = np.asarray(estimates, dtype=np.float64)
    augmented = np.concatenate([raw, np.ones((raw.shape[0], 1))], axis=1)
    return np.clip(augmented @ matrix, -1.0, 1.0)


def _single_pauli(op: Any) -> bool:
    return len(op) == 1 and complex(op.coeffs[0]) == 1


def _substrings(
    x: np.ndarray, z: np.ndarray, support: list[int], rows: dict[Any, int]
) -> list[tuple[int, tuple[int, ...]]] | str:
    """(row of the correction matrix, qubits) of every sub-string of the Pauli string ``x, z``
    on ``support``, the empty one included; the label of the first one not measured, if any."""
    terms = []
    sizes = range(len(support) + 1)
    for subset in itertools.chain.from_iterable(itertools.combinations(support, r) for r in sizes):
        mask = np.isin(np.arange(len(x)), subset)
        row = rows.get(_pauli_key(x & mask, z & mask))
        if row is None:
            return "".join(f"{'IZXY'[2 * x[q] + z[q]]}{q}" for q in subset)
        terms.append((row, subset))
    return terms


def _pauli_key(x: np.ndarray, z: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A Pauli string by the qubits where it has an X part and a Z part (width-free)."""
    return tuple(np.flatnonzero(x).tolist()), tuple(np.flatnonzero(z).tolist())


def _prepared(device: Any, width: int, ones: tuple[int, ...]) -> QuantumCircuit:
    """|1> on ``ones``, |0> elsewhere, in the device's native gates on exactly those qubits
    (a fixed trivial layout: X becomes sx·sx, rx(π), ... as the basis has it)."""
    from qiskit import QuantumCircuit, transpile

    circuit = QuantumCircuit(width)
    for q in ones:
        circuit.x(q)
    return transpile(
        circuit,
        target=device.target,
        initial_layout=list(range(width)),
        optimization_level=1,
        seed_transpiler=0,
    )


def _wrappable(inner: QuantumBackend) -> QiskitEstimatorBackend:
    """Refuse backends without a readout to calibrate, saying why and what to use instead."""
    name = getattr(inner, "name", type(inner).__name__)
    use = "use aer:<device> (e.g. aer:fake_torino) or ibm:<device> with shots"
    if not isinstance(inner, QiskitEstimatorBackend):
        raise QPUError(
            f"readout mitigation wraps the qiskit device backends; {name} is not one "
            f"(exact and braket expectations carry no device readout error to calibrate): {use}."
        )
    if inner.device is None:
        raise QPUError(
            f"{name} runs the logical circuit without a device: there is no readout error to "
            f"mitigate; {use}."
        )
    if isinstance(inner, AerBackend) and not inner.noise:
        raise QPUError(
            f"{name} runs without the device's noise (noise=False): there is no readout error "
            f"to mitigate; keep the noise on."
        )
    if inner.shots is None:
        raise QPUError(
            f"{name} without shots computes exact expectations, not measurements; readout "
            "mitigation calibrates from measured shots, as on hardware: give shots (e.g. 4000)."
        )
    return inner


def mitigate(backend: QuantumBackend, method: str | None) -> QuantumBackend:
    """``backend`` with ``method`` applied (None: as it is); unknown methods are refused."""
    if method is None:
        return backend
    if method == "readout":
        return ReadoutMitigated(backend)
    raise QPUError(
        f"unknown mitigation {method!r}; available: "
        + "; ".join(f"{k} ({v})" for k, v in MITIGATIONS.items())
    )
