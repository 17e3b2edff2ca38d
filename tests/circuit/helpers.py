"""Random circuits and an independent gate-by-gate reference simulator for the circuit tests."""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import reduce

import numpy as np

from qwthn_onnx.circuit import GATES, Circuit, Gate, Param

PAULI = {
    "I": np.eye(2),
    "X": np.array([[0, 1], [1, 0]]),
    "Y": np.array([[0, -1j], [1j, 0]]),
    "Z": np.diag([1, -1]),
}


def random_param(rng: random.Random, n_inputs: int, n_weights: int, kinds: str) -> Param:
    kind = rng.choice(kinds)
    if kind == "input":
        return Param.input(rng.randrange(n_inputs))
    if kind == "weight":
        return Param.weight(rng.randrange(n_weights))
    return Param.const(rng.uniform(-np.pi, np.pi))


def random_circuit(
    rng: random.Random,
    n_qubits: int,
    n_gates: int,
    *,
    n_inputs: int = 3,
    n_weights: int = 4,
    n_observables: int = 4,
    names: Sequence[str] | None = None,
    kinds: tuple[str, ...] = ("input", "weight", "const"),
) -> Circuit:
    """A random circuit over ``names`` (all gates that fit by default) and Pauli observables."""
    fitting = [g for g in (names or sorted(GATES)) if GATES[g].n_qubits <= n_qubits]
    gates = []
    for _ in range(n_gates):
        spec = GATES[rng.choice(fitting)]
        wires = tuple(rng.sample(range(n_qubits), spec.n_qubits))
        params = tuple(random_param(rng, n_inputs, n_weights, kinds) for _ in range(spec.n_params))
        gates.append(Gate(spec.name, wires, params))
    observables = tuple(
        "".join(rng.choice("IXYZ") for _ in range(n_qubits)) for _ in range(n_observables)
    )
    return Circuit(n_qubits, tuple(gates), observables, n_inputs, n_weights)


def param_values(circuit: Circuit, gate: Gate, inputs: Sequence[float], weights: Sequence[float]):
    values = []
    for p in gate.params:
        source = {"input": inputs, "weight": weights}.get(p.kind)
        values.append(p.value if source is None else float(source[p.value]))
    return values


def reference_state(
    circuit: Circuit, inputs: Sequence[float], weights: Sequence[float]
) -> np.ndarray:
    """Apply every gate's full matrix on its wires, one at a time (complex128, little-endian)."""
    n = circuit.n_qubits
    psi = np.zeros([2] * n, dtype=np.complex128)
    psi[(0,) * n] = 1  # axis j holds qubit n-1-j, so a C-order flatten is little-endian
    for gate in circuit.gates:
        values = param_values(circuit, gate, inputs, weights)
        k = len(gate.wires)
        matrix = GATES[gate.name].matrix(*values).reshape([2] * (2 * k))
        axes = [n - 1 - q for q in gate.wires]
        psi = np.tensordot(matrix, psi, axes=(list(range(k, 2 * k)), axes))
        psi = np.moveaxis(psi, list(range(k)), axes)
    return psi.reshape(-1)


def pauli_matrix(label: str) -> np.ndarray:
    """Full matrix of a Pauli string whose character i acts on qubit i."""
    return reduce(np.kron, [PAULI[c] for c in reversed(label)])


def reference_expectations(circuit: Circuit, psi: np.ndarray) -> np.ndarray:
    return np.array([np.vdot(psi, pauli_matrix(o) @ psi).real for o in circuit.observables])
