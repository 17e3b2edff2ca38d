"""Amazon Braket's local simulator as a quantum backend: one program set per job.

Each layer becomes one OpenQASM 3 program in the ``braket`` dialect of
:func:`exporters.qasm.circuit_to_qasm3` (Braket's own gate names; ``crx``/``cry``/``crz``
defined over them), with the trained weights as literals and the layer's angles left as
``input float[64] x_i``. What was found with amazon-braket-sdk 1.127 and
amazon-braket-default-simulator 1.41:

- With shots, a job is ONE ``LocalSimulator.run(ProgramSet)``: a ``CircuitBinding`` per call,
  its rows as input sets. Expectations are computed here from the measured bits
  (``MeasuredEntry.measurements``, columns in ``measured_qubits`` order): a binding without
  Braket observables has no ``expectation``, and one with observables measures in their basis by
  injected rotations, which a Z-only layer does not need.
- Program sets refuse ``shots=0`` ("Result types are not supported with program set"), and a
  program that measures cannot run with ``shots=0`` either (an IndexError inside the
  simulator). Exact expectations (``shots=None``) therefore run one program per row, without its
  measurement, with ``#pragma braket result probability`` over every qubit.
- The simulator has no seed option: every simulation draws from a fresh
  ``numpy.random.default_rng()``. Given ``seed``, each simulation's generator is replaced by one
  from a ``SeedSequence(seed)`` as it starts (its private ``_rng_generator``; a Braket without it
  is refused rather than silently unseeded), so the same calls on a new backend repeat exactly.
- Gate definitions are an "advanced feature" the simulator logs a warning about for every
  executable (a QPU may not run them), and ``braket:dm`` warns that it runs without noise (we
  add none: it is the density-matrix path, for cross-checks); both are dropped during our runs.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    from braket.default_simulator import DensityMatrixSimulator, StateVectorSimulator
    from braket.devices import LocalSimulator
    from braket.ir.openqasm import Program
    from braket.program_sets import CircuitBinding, ProgramSet
except ImportError as e:  # the registry turns this into "pip install 'qwthn-onnx[qpu]'"
    raise ImportError(
        f"the Braket backend needs amazon-braket-sdk and amazon-braket-default-simulator ({e})"
    ) from e

from exporters.qasm import (
    BIT_REGISTER,
    OBSERVABLES_ANNOTATION,
    QUBIT_REGISTER,
    circuit_to_qasm3,
    parameter_name,
)
from qwthn_onnx.circuit.ir import Circuit, CircuitError

from .backend import (
    LayerCall,
    LayerReport,
    QPUError,
    QuantumBackend,
    check_shots,
    logical_report,
)

__all__ = ["DEVICES", "BraketLocalBackend"]

# device spec -> (simulator class, what it is)
DEVICES = {
    "local": (StateVectorSimulator, "state vector (braket_sv)"),
    "dm": (DensityMatrixSimulator, "density matrix (braket_dm)"),
}
_DIALECT = "braket"
_ADVANCED_FEATURES = "This program uses OpenQASM language features"
_INTERPRETER_LOGGER = "braket.default_simulator.openqasm.interpreter"


class _SeededSimulations:
    """Mixin for a Braket simulator: each simulation it starts samples from the next child of
    ``SeedSequence(seed)`` instead of an unseeded generator."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._seeds = np.random.SeedSequence(seed)

    def initialize_simulation(self, **kwargs: Any) -> Any:
        simulation = super().initialize_simulation(**kwargs)  # type: ignore[misc]
        if not isinstance(getattr(simulation, "_rng_generator", None), np.random.Generator):
            raise QPUError(
                f"this Braket simulator ({type(simulation).__name__}) keeps no random generator "
                "that can be seeded; leave the seed out (shots are then not reproducible)."
            )
        simulation._rng_generator = np.random.default_rng(self._seeds.spawn(1)[0])
        return simulation


class _SeededStateVector(_SeededSimulations, StateVectorSimulator):
    pass


class _SeededDensityMatrix(_SeededSimulations, DensityMatrixSimulator):
    pass


_SEEDED = {StateVectorSimulator: _SeededStateVector, DensityMatrixSimulator: _SeededDensityMatrix}


@dataclass(frozen=True)
class _BraketLayer:
    """One layer as Braket runs it."""

    circuit: Circuit
    weights: np.ndarray
    program: str  # measures every qubit: for program sets
    exact_program: str  # no measurement, probabilities of every qubit: for shots=0
    signs: np.ndarray  # [2**n, n_observables]: (-1)^(parity of the observable's Z qubits)


def _signs(circuit: Circuit) -> np.ndarray:
    """Row k (qubit 0 the most significant bit, as Braket orders outcomes) holds each
    observable's eigenvalue on basis state k."""
    n = circuit.n_qubits
    bits = (np.arange(2**n)[:, None] >> np.arange(n - 1, -1, -1)) & 1  # [2**n, n]
    z = np.array([[c == "Z" for c in obs] for obs in circuit.observables], dtype=np.int64)
    return 1.0 - 2.0 * ((bits @ z.T) % 2)


def _exact_program(program: str, n_qubits: int) -> str:
    """``program`` without its final (annotated) measurement, asking for the probabilities of
    every qubit instead, in qubit order."""
    *body, annotation, measurement = program.splitlines(keepends=True)
    if not annotation.startswith(f"@{OBSERVABLES_ANNOTATION} ") or measurement != (
        f"{BIT_REGISTER} = measure {QUBIT_REGISTER};\n"
    ):
        raise QPUError("internal: the Braket program does not end with its annotated measurement")
    qubits = ", ".join(f"{QUBIT_REGISTER}[{i}]" for i in range(n_qubits))
    return "".join(body) + f"#pragma braket result probability {qubits}\n"


class _DropAdvancedFeatureWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_ADVANCED_FEATURES)


@contextmanager
def _quiet_simulator() -> Iterator[None]:
    """Without the two notes the simulator repeats for every executable: gate definitions are
    an advanced feature, and braket:dm runs without noise (we add none)."""
    logger = logging.getLogger(_INTERPRETER_LOGGER)
    drop = _DropAdvancedFeatureWarning()
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You are running a noise-free circuit")
            yield
    finally:
        logger.removeFilter(drop)


class BraketLocalBackend(QuantumBackend):
    """Amazon Braket's ``LocalSimulator``: ``device`` None or ``"local"`` is the state-vector
    simulator, ``"dm"`` the density-matrix one (noiseless here; 13 qubits at most).

    With ``shots``, :meth:`run` submits ONE program set for all its calls and estimates each
    observable from the measured bits; with ``shots=None`` it computes exact expectations, one
    program per row (program sets need shots). ``seed`` makes the shots repeat (see the module
    docstring).
    """

    def __init__(
        self, device: str | None = None, *, shots: int | None = None, seed: int | None = None
    ) -> None:
        super().__init__()
        spec = "local" if device is None else device
        if spec not in DEVICES:
            choices = ", ".join(f"braket:{k} ({what})" for k, (_, what) in DEVICES.items())
            raise QPUError(f"unknown Braket device {device!r}; choose one of {choices}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
            raise QPUError(f"seed must be an integer (or left out), got {seed!r}.")
        simulator_class = DEVICES[spec][0]
        simulator = simulator_class() if seed is None else _SEEDED[simulator_class](int(seed))
        self.device = LocalSimulator(simulator)
        self.name = f"braket:{spec}"
        self.shots = check_shots(shots)
        self.seed = seed
        self.num_qubits = int(self.device.properties.paradigm.qubitCount)
        self.layers: dict[str, _BraketLayer] = {}

    def _prepare(self, layer: str, circuit: Circuit, weights: np.ndarray) -> LayerReport:
        try:
            program = circuit_to_qasm3(circuit, weights, layer=layer, dialect=_DIALECT)
        except CircuitError as e:
            raise QPUError(f"layer {layer!r} cannot run on {self.name}: {e}") from e
        self.layers[layer] = _BraketLayer(
            circuit=circuit,
            weights=weights.copy(),
            program=program,
            exact_program=_exact_program(program, circuit.n_qubits),
            signs=_signs(circuit),
        )
        return logical_report(layer, circuit)

    def _checked(self, call: LayerCall) -> tuple[_BraketLayer, np.ndarray]:
        """The call's prepared layer and its inputs as float64 ``[N, n_inputs]``, or a refusal."""
        inputs = self.check_call(call)
        return self.layers[call.layer], inputs

    def run(self, calls: Sequence[LayerCall]) -> list[np.ndarray]:
        """Execute ``calls`` as one job; ``[N, n_observables]`` float64 per call, in order."""
        checked = [self._checked(call) for call in calls]  # every refusal before any work
        with _quiet_simulator():
            if self.shots is None:
                return [self._exact(prepared, inputs) for prepared, inputs in checked]
            return self._sampled(checked)

    def _exact(self, prepared: _BraketLayer, inputs: np.ndarray) -> np.ndarray:
        rows = []
        for row in inputs if prepared.circuit.n_inputs else inputs[:1]:
            bindings = {parameter_name("input", i): float(v) for i, v in enumerate(row)}
            program = Program(source=prepared.exact_program, inputs=bindings)
            probabilities = np.asarray(self.device.run(program, shots=0).result().values[0])
            rows.append(probabilities @ prepared.signs)
        values = np.asarray(rows, dtype=np.float64).reshape(-1, prepared.signs.shape[1])
        return np.broadcast_to(values, (len(inputs), values.shape[1])).copy()

    def _sampled(self, checked: list[tuple[_BraketLayer, np.ndarray]]) -> list[np.ndarray]:
        entries: list[CircuitBinding | str] = []
        sent: list[int] = []  # index into checked of each program-set entry
        for index, (prepared, inputs) in enumerate(checked):
            if len(inputs) == 0:
                continue
            if prepared.circuit.n_inputs:
                columns = {parameter_name("input", i): c.tolist() for i, c in enumerate(inputs.T)}
                entries.append(CircuitBinding(prepared.program, input_sets=columns))
            else:  # nothing to bind: one executable serves every row
                entries.append(prepared.program)
            sent.append(index)
        results = [np.zeros((0, prepared.signs.shape[1])) for prepared, _ in checked]
        if not entries:
            return results
        job = self.device.run(ProgramSet(entries, shots_per_executable=self.shots)).result()
        for index, composite in zip(sent, job.entries, strict=True):
            prepared, inputs = checked[index]
            values = np.asarray(
                [_estimate(entry, prepared) for entry in composite.entries], dtype=np.float64
            )
            results[index] = np.broadcast_to(values, (len(inputs), values.shape[1])).copy()
        return results


def _estimate(entry: Any, prepared: _BraketLayer) -> np.ndarray:
    """Each observable's mean over one executable's shots, from its measured bits."""
    n = prepared.circuit.n_qubits
    columns = {qubit: c for c, qubit in enumerate(entry.measured_qubits)}
    if sorted(columns) != list(range(n)):
        raise QPUError(
            f"Braket measured qubits {entry.measured_qubits}, expected all of 0..{n - 1}."
        )
    bits = np.asarray(entry.measurements, dtype=np.int64)[:, [columns[q] for q in range(n)]]
    outcomes = bits @ (1 << np.arange(n - 1, -1, -1))  # qubit 0 the most significant bit
    frequencies = np.bincount(outcomes, minlength=2**n) / len(outcomes)
    return frequencies @ prepared.signs
