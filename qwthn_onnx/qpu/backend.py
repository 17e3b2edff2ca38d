"""What every quantum backend is: a thing that runs a batch of adapted layers' circuits as one job.

A model's quantum layers reach a backend as :class:`LayerCall` s: the layer's circuit, its trained
weights (fixed at inference) and one row of input angles per (prompt, token). ``prepare`` is
called once per layer before its first call, so a backend compiles each layer once (transpiled
for a device, weights bound, inputs left as named parameters); ``run`` then executes one job for
all the calls it is given — on qiskit a list of PUBs ``(circuit, observables, values[N, P])``,
on Braket a program set — and returns the estimated expectation values.

:class:`ExactBackend` is the reference every other backend is measured against: the C++ kernel,
i.e. exactly what the ONNX ``QuantumLayer`` node computes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from qwthn_onnx.circuit.ir import Circuit, CircuitError

__all__ = [
    "ExactBackend",
    "JobRecord",
    "LayerCall",
    "LayerReport",
    "QPUError",
    "QuantumBackend",
    "check_shots",
    "logical_report",
]


class QPUError(CircuitError):
    """A quantum backend that cannot be built or cannot run what it was given; says what to do."""


@dataclass(frozen=True)
class LayerCall:
    """One adapted layer's circuit evaluations within a job: ``inputs [N, n_inputs]`` (float64)."""

    layer: str
    circuit: Circuit
    weights: np.ndarray  # [n_weights] float64, the trained weights (bound at compile time)
    inputs: np.ndarray  # [N, n_inputs] float64, one row per (prompt, token)


@dataclass(frozen=True)
class LayerReport:
    """What one layer's circuit becomes on a backend (from ``prepare``)."""

    layer: str
    n_qubits: int  # logical qubits of the circuit
    physical_qubits: tuple[int, ...]  # the device qubits it was laid out on (() when none)
    depth: int
    two_qubit_gates: int
    gate_counts: dict[str, int]
    duration_s: float | None  # estimated from the device's gate durations (None when unknown)
    parameters: int  # free parameters left in the compiled circuit (the input angles)
    readout_s: float | None = None  # the measurement at the end (slowest measured qubit)


@dataclass
class JobRecord:
    """One submitted job, for reports: what ran, how long it took, how far it was from exact."""

    index: int
    backend: str
    layers: list[str]
    rows: list[int]  # parameter sets per layer, as in ``layers``
    shots: int | None  # per parameter set and observable group; None for exact expectations
    wall_s: float
    max_abs_error: float | None = None  # against ExactBackend on the same inputs
    mean_abs_error: float | None = None

    @property
    def circuits(self) -> int:
        """Parameter sets executed, all layers together."""
        return sum(self.rows)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "circuits": self.circuits}


def check_shots(shots: object) -> int | None:
    """``shots`` as an int >= 1, or None (exact expectations); anything else is refused."""
    if shots is None:
        return None
    if isinstance(shots, bool) or not isinstance(shots, int | np.integer) or shots < 1:
        raise QPUError(
            f"shots must be an integer >= 1 (or left out for exact expectations), got {shots!r}."
        )
    return int(shots)


class QuantumBackend(ABC):
    """Runs adapted layers' circuits in jobs. Subclasses: exact, qiskit (Aer, IBM), Braket.

    ``name`` is the spec it was built from (e.g. ``"aer:fake_torino"``); ``shots`` the shots per
    parameter set (None: exact expectations). ``num_qubits`` is the device's width (None: no
    limit), checked in :meth:`prepare` before any compilation; ``rep_delay_s`` its default
    repetition delay, when it has one.
    """

    name: str
    shots: int | None = None
    num_qubits: int | None = None
    rep_delay_s: float | None = None  # the device's default wait between shots (cost model)

    def __init__(self) -> None:
        self.reports: dict[str, LayerReport] = {}
        self._prepared: dict[str, tuple[Circuit, np.ndarray]] = {}

    def prepare(self, layer: str, circuit: Circuit, weights: np.ndarray) -> LayerReport:
        """Compile ``layer`` once (cached by name); returns what it became on this backend."""
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if layer in self._prepared:
            self._check_same(layer, circuit, weights, "prepared again")
            return self.reports[layer]
        if self.num_qubits is not None and circuit.n_qubits > self.num_qubits:
            raise QPUError(
                f"layer {layer!r}: its circuit has {circuit.n_qubits} qubits, but "
                f"{self.name} has {self.num_qubits}; choose a wider device or train with "
                "fewer qubits (--n-qubits)."
            )
        report = self._prepare(layer, circuit, weights)
        self.reports[layer] = report
        self._prepared[layer] = (circuit, weights.copy())
        return report

    def check_call(self, call: LayerCall) -> np.ndarray:
        """``call``'s inputs as float64 ``[N, n_inputs]``, once the call is known to be for the
        circuit and weights its layer was prepared (compiled) with; refuses anything else."""
        if call.layer not in self._prepared:
            raise QPUError(
                f"layer {call.layer!r} was not prepared on {self.name}; call "
                "prepare(layer, circuit, weights) once before running it."
            )
        circuit, _ = self._prepared[call.layer]
        self._check_same(call.layer, call.circuit, np.asarray(call.weights), "run")
        inputs = np.asarray(call.inputs, dtype=np.float64)
        if inputs.ndim != 2 or inputs.shape[1] != circuit.n_inputs:
            raise QPUError(
                f"layer {call.layer!r} on {self.name}: inputs must be [N, {circuit.n_inputs}] "
                f"(one row of angles per evaluation), got shape {inputs.shape}."
            )
        if not np.isfinite(inputs).all():
            raise QPUError(f"layer {call.layer!r} on {self.name}: inputs contain NaN or infinity.")
        return inputs

    def _check_same(self, layer: str, circuit: Circuit, weights: np.ndarray, what: str) -> None:
        prepared_circuit, prepared_weights = self._prepared[layer]
        same = circuit == prepared_circuit and (
            weights.shape == prepared_weights.shape
            and np.array_equal(weights.astype(np.float64), prepared_weights)
        )
        if not same:
            raise QPUError(
                f"layer {layer!r} {what} on {self.name} with another circuit or other weights "
                "than it was compiled with; give each layer a name of its own."
            )

    @abstractmethod
    def _prepare(self, layer: str, circuit: Circuit, weights: np.ndarray) -> LayerReport:
        """Compile one layer (called once per layer name)."""

    @abstractmethod
    def run(self, calls: Sequence[LayerCall]) -> list[np.ndarray]:
        """Execute ``calls`` as one job; ``[N, n_observables]`` float64 per call, in order.

        Every call's layer has been through :meth:`prepare`.
        """


def logical_report(layer: str, circuit: Circuit) -> LayerReport:
    """What a layer is before any compilation: its own gates, depth and qubits."""
    counts: dict[str, int] = {}
    for gate in circuit.gates:
        counts[gate.name] = counts.get(gate.name, 0) + 1
    return LayerReport(
        layer=layer,
        n_qubits=circuit.n_qubits,
        physical_qubits=(),
        depth=_depth(circuit),
        two_qubit_gates=sum(len(g.wires) == 2 for g in circuit.gates),
        gate_counts=counts,
        duration_s=None,
        parameters=circuit.n_inputs,
    )


def _depth(circuit: Circuit) -> int:
    level = [0] * circuit.n_qubits
    for gate in circuit.gates:
        top = 1 + max(level[w] for w in gate.wires)
        for w in gate.wires:
            level[w] = top
    return max(level, default=0)


class ExactBackend(QuantumBackend):
    """Exact expectation values from the C++ kernel: what the ONNX QuantumLayer node computes."""

    name = "exact"

    def __init__(self, threads: int = 0) -> None:
        super().__init__()
        from qwthn_onnx.circuit.encoding import encode

        self._encode = encode
        self._encoded: dict[str, object] = {}
        self.threads = threads

    def _prepare(self, layer: str, circuit: Circuit, weights: np.ndarray) -> LayerReport:
        self._encoded[layer] = self._encode(circuit)
        return logical_report(layer, circuit)

    def run(self, calls: Sequence[LayerCall]) -> list[np.ndarray]:
        from qwthn_onnx import native

        inputs = [self.check_call(call) for call in calls]
        return [
            native.quantum_forward(
                self._encoded[call.layer],
                np.ascontiguousarray(x),
                np.ascontiguousarray(call.weights, dtype=np.float64),
                self.threads,
            )
            for call, x in zip(calls, inputs, strict=True)
        ]
