"""Compile one adapted layer's circuit for a device, once: weights bound, inputs left free.

The trained weights are fixed at inference, so they are bound before transpiling (the
optimiser then merges them with the device's native rotations: on FakeTorino the 4-qubit paper
layer has 120 rz instead of 200 with the weights left symbolic); the input angles stay
parameters ``x_0 .. x_{n-1}``, so every (prompt, token) row reuses the one compiled circuit.
qiskit orders a circuit's parameters by name (``x_10`` before ``x_2``), hence
:meth:`CompiledLayer.parameter_values` binds by name, never by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from qwthn_onnx.circuit.ir import Circuit, CircuitError

from .backend import LayerReport, QPUError
from .devices import resolve_device

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.providers import BackendV2
    from qiskit.quantum_info import SparsePauliOp
    from qiskit.transpiler import PassManager

__all__ = [
    "INPUT_PREFIX",
    "CompiledLayer",
    "check_optimization_level",
    "compile_layer",
    "logical_circuit",
]

INPUT_PREFIX = "x_"


@dataclass(frozen=True)
class CompiledLayer:
    """One layer as it runs: ``circuit`` (on the device's qubits when compiled for one) and the
    observables on the same qubits, in the layer's observable order."""

    layer: str
    circuit: QuantumCircuit
    observables: tuple[SparsePauliOp, ...]
    n_inputs: int
    input_order: tuple[int, ...]  # the input index of each of circuit.parameters, in its order
    report: LayerReport
    active_qubits: tuple[int, ...]  # circuit qubits some gate acts on (the rest stay |0>)
    readout_qubits: tuple[int, ...]  # circuit qubits the observables measure
    readout_s: float | None  # the slowest of those qubits' measurement (None when unknown)

    def parameter_values(self, inputs: np.ndarray) -> np.ndarray:
        """``inputs [N, n_inputs]`` as ``values [N, P]`` in the order of ``circuit.parameters``."""
        x = np.asarray(inputs, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise QPUError(
                f"layer {self.layer!r}: inputs must have shape [N, {self.n_inputs}], "
                f"got {list(x.shape)}."
            )
        if not np.isfinite(x).all():
            raise QPUError(f"layer {self.layer!r}: the input angles contain NaN or infinity.")
        return x[:, list(self.input_order)]


def logical_circuit(circuit: Circuit, weights: np.ndarray) -> QuantumCircuit:
    """``circuit`` in qiskit with ``weights`` bound and input i a ``Parameter("x_i")``."""
    from qiskit.circuit import Parameter

    from qwthn_onnx.circuit.qiskit_bridge import to_qiskit

    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (circuit.n_weights,):
        raise QPUError(
            f"the circuit has {circuit.n_weights} weights, got an array of shape {list(w.shape)}."
        )
    if not np.isfinite(w).all():
        raise QPUError("the circuit's weights contain NaN or infinity; the model is damaged.")
    qc = to_qiskit(circuit, weights=w)
    # to_qiskit's inputs are the ParameterVector "x" (x[i]); the compiled circuit's are named
    return qc.assign_parameters({p: Parameter(f"{INPUT_PREFIX}{p.index}") for p in qc.parameters})


@lru_cache(maxsize=16)
def _pass_manager(device: BackendV2, optimization_level: int, seed: int | None) -> PassManager:
    from qiskit.transpiler import generate_preset_pass_manager

    return generate_preset_pass_manager(
        optimization_level=optimization_level, backend=device, seed_transpiler=seed
    )


def check_optimization_level(level: object) -> int:
    """qiskit's preset levels 0..3; anything else is refused before any work."""
    if isinstance(level, bool) or not isinstance(level, int | np.integer) or not 0 <= level <= 3:
        raise QPUError(
            f"optimization_level must be 0, 1, 2 or 3 (qiskit's presets), got {level!r}."
        )
    return int(level)


def compile_layer(
    layer: str,
    circuit: Circuit,
    weights: np.ndarray,
    device: BackendV2 | str | None,
    *,
    optimization_level: int = 1,
    seed: int | None = 0,
) -> CompiledLayer:
    """Transpile ``layer`` for ``device`` (None: the logical circuit, uncompiled).

    ``seed`` fixes the transpiler's stochastic layout and routing: another seed may give another
    gate count for the same circuit.
    """
    level = check_optimization_level(optimization_level)
    qc = logical_circuit(circuit, weights)
    if isinstance(device, str):
        device = resolve_device(device)
    from qwthn_onnx.circuit.qiskit_bridge import observables_to_qiskit

    observables = observables_to_qiskit(circuit)
    if device is None:
        return _compiled(layer, circuit, qc, observables, None)
    if circuit.n_qubits > device.num_qubits:
        raise QPUError(
            f"layer {layer!r}: its circuit has {circuit.n_qubits} qubits, but {device.name} has "
            f"{device.num_qubits}; choose a wider device."
        )
    from qiskit.exceptions import QiskitError

    try:
        isa = _pass_manager(device, level, seed).run(qc)
    except QiskitError as e:
        raise QPUError(f"layer {layer!r}: qiskit cannot compile it for {device.name}: {e}") from e
    mapped = [op.apply_layout(isa.layout, num_qubits=isa.num_qubits) for op in observables]
    return _compiled(layer, circuit, isa, mapped, device)


def _compiled(
    layer: str,
    circuit: Circuit,
    qc: QuantumCircuit,
    observables: list[SparsePauliOp],
    device: BackendV2 | None,
) -> CompiledLayer:
    try:
        order = tuple(int(p.name.removeprefix(INPUT_PREFIX)) for p in qc.parameters)
    except ValueError:  # the transpiler only rewrites gates; a foreign name would be our bug
        raise CircuitError(f"unexpected parameters {list(qc.parameters)} in {layer!r}") from None
    counts = {name: int(n) for name, n in qc.count_ops().items() if name != "barrier"}
    active = sorted({qc.find_bit(q).index for inst in qc.data for q in inst.qubits})
    readout = sorted(
        {int(q) for op in observables for q in np.flatnonzero((op.paulis.x | op.paulis.z).any(0))}
    )
    physical: tuple[int, ...] = ()
    duration = readout_s = None
    if device is not None:
        if qc.layout is not None:
            physical = tuple(qc.layout.initial_index_layout(filter_ancillas=True))
        duration = _gate_duration(qc, device)
        readout_s = _readout_duration(device, readout)
    report = LayerReport(
        layer=layer,
        n_qubits=circuit.n_qubits,
        physical_qubits=physical,
        depth=qc.depth(),
        two_qubit_gates=sum(len(inst.qubits) == 2 for inst in qc.data),
        gate_counts=counts,
        duration_s=duration,
        parameters=len(qc.parameters),
        readout_s=readout_s,
    )
    return CompiledLayer(
        layer=layer,
        circuit=qc,
        observables=tuple(observables),
        n_inputs=circuit.n_inputs,
        input_order=order,
        report=report,
        active_qubits=tuple(active),
        readout_qubits=tuple(readout),
        readout_s=readout_s,
    )


def _gate_duration(qc: QuantumCircuit, device: BackendV2) -> float | None:
    """The critical path through the device's gate durations (no readout, no reset)."""
    from qiskit.exceptions import QiskitError

    try:
        return float(qc.estimate_duration(device.target, unit="s"))
    except (QiskitError, TypeError, ValueError):  # a gate without a duration in the target
        return None


def _readout_duration(device: BackendV2, qubits: list[int]) -> float | None:
    """Measurements run in parallel: the slowest measured qubit's readout time."""
    if "measure" not in device.target.operation_names:
        return None
    durations = []
    for q in qubits:
        props = device.target["measure"].get((q,))
        if props is None or props.duration is None:
            return None
        durations.append(props.duration)
    return max(durations, default=None)
