"""The ai.qwthn ops: ONNX schemas, fallback functions, single-op models and torch custom ops."""

from qwthn_onnx.ops.schemas import (
    DOMAIN,
    OPSET_VERSION,
    circuit_from_node,
    quantum_layer_attributes,
    register_schemas,
)

__all__ = [
    "DOMAIN",
    "OPSET_VERSION",
    "circuit_from_node",
    "quantum_layer_attributes",
    "register_schemas",
]
