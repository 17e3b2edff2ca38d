"""Named QNN ansätze; adapter configs refer to them by name (see :data:`ANSATZE`)."""

from __future__ import annotations

from collections.abc import Callable

from .ir import Circuit, CircuitError, Gate, Param

__all__ = ["ANSATZE", "build_ansatz", "hardware_efficient_circuit", "paper_circuit"]


def _check_size(ansatz: str, n_qubits: int, n_layers: int) -> None:
    if not isinstance(n_qubits, int) or n_qubits < 2:
        raise CircuitError(
            f"{ansatz} needs n_qubits >= 2 (its entangling ring would pair a qubit with "
            f"itself), got {n_qubits!r}."
        )
    if not isinstance(n_layers, int) or n_layers < 1:
        raise CircuitError(f"{ansatz} needs n_layers >= 1, got {n_layers!r}.")


def _encoding(n_qubits: int) -> list[Gate]:
    return [Gate("ry", (i,), (Param.input(i),)) for i in range(n_qubits)]


def _z_observables(n_qubits: int) -> tuple[str, ...]:
    return tuple("I" * i + "Z" + "I" * (n_qubits - i - 1) for i in range(n_qubits))


def paper_circuit(n_qubits: int = 10, n_layers: int = 10) -> Circuit:
    """The reference QWTHN QNN: RY(x) encoding, then per layer RY, CRZ ring, RY, reverse ring.

    Layer l uses weights ``4*n*l .. 4*n*l + 4*n - 1`` in gate order. Forward ring: CRZ with
    control i -> target (i+1) mod n for i = n-1, ..., 0; reverse ring: control i -> target
    (i-1) mod n for i = n-1, 0, 1, ..., n-2. Observables are <Z_i> on every qubit.
    """
    _check_size("paper_circuit", n_qubits, n_layers)
    n = n_qubits
    gates = _encoding(n)
    w = 0

    def weight() -> tuple[Param]:
        nonlocal w
        w += 1
        return (Param.weight(w - 1),)

    for _ in range(n_layers):
        gates += [Gate("ry", (i,), weight()) for i in range(n)]
        gates += [Gate("crz", (i, (i + 1) % n), weight()) for i in range(n - 1, -1, -1)]
        gates += [Gate("ry", (i,), weight()) for i in range(n)]
        gates += [Gate("crz", (i, (i - 1) % n), weight()) for i in [n - 1, *range(n - 1)]]
    return Circuit(n, tuple(gates), _z_observables(n), n_inputs=n, n_weights=w)


def hardware_efficient_circuit(n_qubits: int = 10, n_layers: int = 10) -> Circuit:
    """RY(x) encoding, then per layer RY(θ) on every qubit, RZ(θ) on every qubit, CNOT ring.

    Layer l uses weights ``2*n*l + i`` (RY on qubit i) and ``2*n*l + n + i`` (RZ on qubit i);
    the ring is cx i -> (i+1) mod n for i = 0..n-1. Observables are <Z_i> on every qubit.
    """
    _check_size("hardware_efficient_circuit", n_qubits, n_layers)
    n = n_qubits
    gates = _encoding(n)
    for layer in range(n_layers):
        base = 2 * n * layer
        gates += [Gate("ry", (i,), (Param.weight(base + i),)) for i in range(n)]
        gates += [Gate("rz", (i,), (Param.weight(base + n + i),)) for i in range(n)]
        gates += [Gate("cx", (i, (i + 1) % n)) for i in range(n)]
    return Circuit(n, tuple(gates), _z_observables(n), n_inputs=n, n_weights=2 * n * n_layers)


ANSATZE: dict[str, Callable[[int, int], Circuit]] = {
    "paper": paper_circuit,
    "hardware_efficient": hardware_efficient_circuit,
}


def build_ansatz(name: str, n_qubits: int, n_layers: int) -> Circuit:
    """Build a named ansatz from :data:`ANSATZE` (the name stored in adapter configs)."""
    try:
        factory = ANSATZE[name]
    except (KeyError, TypeError):
        raise CircuitError(f"unknown ansatz {name!r}; valid names are {sorted(ANSATZE)}.") from None
    return factory(n_qubits, n_layers)
