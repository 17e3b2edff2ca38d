"""Quantum-circuit IR, presets and a batched differentiable statevector simulator.

The IR and presets are plain Python and numpy; the simulator (PyTorch) is imported on first
use, so deploy-side readers of circuits (the op schemas, the server) never load torch.
"""

from qwthn_onnx._lazy import lazy_exports

from .ir import GATES, Circuit, CircuitError, Gate, Param
from .presets import ANSATZE, build_ansatz, hardware_efficient_circuit, paper_circuit

_SIMULATOR = ("expectation_values", "gate_matrix", "statevector")

__all__ = [
    "ANSATZE",
    "GATES",
    "Circuit",
    "CircuitError",
    "Gate",
    "Param",
    "build_ansatz",
    "expectation_values",
    "gate_matrix",
    "hardware_efficient_circuit",
    "paper_circuit",
    "statevector",
]


__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(_SIMULATOR, ".simulator"))
