"""Convert the IR to qiskit, the independent reference the simulator is tested against.

Every IR gate maps to the qiskit standard gate of the same name with the same convention and
argument order (params first, then wires; controlled gates take ``(control, target)``).
"""

from __future__ import annotations

from collections.abc import Sequence

from qiskit import QuantumCircuit
from qiskit.circuit import Parameter, ParameterExpression, ParameterVector
from qiskit.quantum_info import SparsePauliOp

from .ir import Circuit, CircuitError

__all__ = ["observables_to_qiskit", "to_qiskit"]


def _values(
    name: str, values: Sequence[float] | None, size: int
) -> Sequence[float] | ParameterVector:
    if values is None:
        return ParameterVector(name, size)
    values = [float(v) for v in values]
    if len(values) != size:
        raise CircuitError(f"to_qiskit got {len(values)} {name} values, the circuit has {size}.")
    return values


def to_qiskit(
    circuit: Circuit,
    inputs: Sequence[float] | None = None,
    weights: Sequence[float] | None = None,
) -> QuantumCircuit:
    """The circuit as a ``QuantumCircuit``; numeric where values are given, else parameterised.

    Unbound inputs become ``ParameterVector("x", n_inputs)`` and unbound weights
    ``ParameterVector("theta", n_weights)``.
    """
    x = _values("x", inputs, circuit.n_inputs)
    theta = _values("theta", weights, circuit.n_weights)
    qc = QuantumCircuit(circuit.n_qubits)
    for gate in circuit.gates:
        args: list[float | Parameter | ParameterExpression] = []
        for p in gate.params:
            if p.kind == "const":
                args.append(float(p.value))
            else:
                args.append((x if p.kind == "input" else theta)[int(p.value)])
        getattr(qc, gate.name)(*args, *gate.wires)
    return qc


def observables_to_qiskit(circuit: Circuit) -> list[SparsePauliOp]:
    """One ``SparsePauliOp`` per observable; qiskit labels put qubit 0 last, hence the reversal."""
    return [SparsePauliOp(obs[::-1]) for obs in circuit.observables]
