"""Quantum-circuit IR, presets and a batched differentiable statevector simulator."""

from .ir import GATES, Circuit, CircuitError, Gate, Param
from .presets import ANSATZE, build_ansatz, hardware_efficient_circuit, paper_circuit
from .simulator import expectation_values, statevector

__all__ = [
    "ANSATZE",
    "GATES",
    "Circuit",
    "CircuitError",
    "Gate",
    "Param",
    "build_ansatz",
    "expectation_values",
    "hardware_efficient_circuit",
    "paper_circuit",
    "statevector",
]
