"""ONNX side of the ai.qwthn ops: schemas (kernels and fallback functions follow)."""

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
