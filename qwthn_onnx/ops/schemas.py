"""OpSchemas of the ``ai.qwthn`` domain, registered with onnx from Python.

Registering them lets ``onnx.checker`` validate our nodes (required attributes, input counts,
types) instead of rejecting an unknown op. Python-registered schemas carry no type-and-shape
inference function; shapes are inferred through the fallback function bodies attached to a
model, which is also what lets plain onnxruntime run it.

Ops (version 1):
- ``QuantumLayer(x[..., n_inputs], weights[n_weights]) -> y[..., n_observables]``; the circuit
  is in the attributes, in the flat encoding of :mod:`qwthn_onnx.circuit.encoding`.
- ``MPOLinear(x[..., prod(in_modes)], core_1, ..., core_K) -> y[..., prod(out_modes)]``; core k
  has shape ``[D_{k-1}, in_modes[k], out_modes[k], D_k]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.defs import OpSchema

from qwthn_onnx.circuit import Circuit, CircuitError
from qwthn_onnx.circuit.encoding import decode, encode

__all__ = [
    "DOMAIN",
    "OPSET_VERSION",
    "circuit_from_node",
    "quantum_layer_attributes",
    "register_schemas",
    "render_reference",
    "schemas",
]

DOMAIN = "ai.qwthn"
OPSET_VERSION = 1
_FLOATS = ["tensor(float)", "tensor(double)"]
_INT, _INTS, _TENSOR = OpSchema.AttrType.INT, OpSchema.AttrType.INTS, OpSchema.AttrType.TENSOR


def _quantum_layer_schema() -> OpSchema:
    attr = OpSchema.Attribute
    return OpSchema(
        "QuantumLayer",
        DOMAIN,
        OPSET_VERSION,
        "Expectation values of a parameterised quantum circuit (statevector simulation), "
        "batched over the leading dims of x. See qwthn_onnx.circuit.encoding for attributes.",
        inputs=[
            OpSchema.FormalParameter("x", "T", "angles fed to input parameters, [..., n_inputs]"),
            OpSchema.FormalParameter("weights", "T", "trained circuit weights, [n_weights]"),
        ],
        outputs=[OpSchema.FormalParameter("y", "T", "observable expectations, [..., n_obs]")],
        type_constraints=[("T", _FLOATS, "float32 for inference, float64 for verification")],
        attributes=[
            attr("encoding_version", _INT, "flat circuit encoding version (1)"),
            attr("n_qubits", _INT, "number of qubits"),
            attr("n_inputs", _INT, "size of the last dim of x"),
            attr("n_weights", _INT, "size of weights"),
            attr("gates", _INTS, "(opcode, wire0, wire1) per gate, wire1 = -1 for 1q gates"),
            attr("params", _INTS, "(kind, index) per gate parameter: 0 input, 1 weight, 2 const"),
            attr("constants", _TENSOR, "float64 constants indexed by const params", required=False),
            attr("observables", _INTS, "n_obs x n_qubits Pauli codes (0 I, 1 X, 2 Y, 3 Z)"),
        ],
    )


def _mpo_linear_schema() -> OpSchema:
    return OpSchema(
        "MPOLinear",
        DOMAIN,
        OPSET_VERSION,
        "y = x @ W.T where W is a matrix product operator given by its cores.",
        inputs=[
            OpSchema.FormalParameter("x", "T", "[..., prod(in_modes)]"),
            OpSchema.FormalParameter(
                "cores",
                "T",
                "core k: [D_{k-1}, in_modes[k], out_modes[k], D_k], D_0 = D_K = 1",
                param_option=OpSchema.FormalParameterOption.Variadic,
            ),
        ],
        outputs=[OpSchema.FormalParameter("y", "T", "[..., prod(out_modes)]")],
        type_constraints=[("T", _FLOATS, "float32 for inference, float64 for verification")],
        attributes=[
            OpSchema.Attribute("in_modes", _INTS, "factorisation of the input dim"),
            OpSchema.Attribute("out_modes", _INTS, "factorisation of the output dim"),
        ],
    )


def schemas() -> list[OpSchema]:
    """The ``ai.qwthn`` op schemas (unregistered objects)."""
    return [_quantum_layer_schema(), _mpo_linear_schema()]


def render_reference() -> str:
    """Markdown reference of the ``ai.qwthn`` ops, generated from their schemas."""
    lines = []
    for schema in schemas():
        lines += [f"#### `{schema.domain}::{schema.name}` (version {schema.since_version})", ""]
        lines += [schema.doc.strip(), ""]
        for title, params in (("Inputs", schema.inputs), ("Outputs", schema.outputs)):
            lines.append(f"{title}:")
            for p in params:
                variadic = (
                    " (variadic)" if p.option == OpSchema.FormalParameterOption.Variadic else ""
                )
                lines.append(f"- `{p.name}`: {p.type_str}{variadic}, {p.description}")
            lines.append("")
        lines.append("Attributes:")
        for name, attr in sorted(schema.attributes.items()):
            kind = str(attr.type).rsplit(".", 1)[-1].lower()
            optional = "" if attr.required else ", optional"
            lines.append(f"- `{name}` ({kind}{optional}): {attr.description}")
        lines.append("")
        for constraint in schema.type_constraints:
            allowed = ", ".join(constraint.allowed_type_strs)
            lines.append(
                f"Type `{constraint.type_param_str}`: {allowed} ({constraint.description})."
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def register_schemas() -> None:
    """Register the ``ai.qwthn`` schemas with onnx (idempotent, process-wide)."""
    for schema in schemas():
        try:
            onnx.defs.get_schema(schema.name, OPSET_VERSION, DOMAIN)
        except onnx.defs.SchemaError:
            onnx.defs.register_schema(schema)


def quantum_layer_attributes(circuit: Circuit) -> dict[str, Any]:
    """Keyword arguments for ``onnx.helper.make_node("QuantumLayer", ...)`` encoding ``circuit``."""
    data = encode(circuit).as_dict()
    constants = np.asarray(data.pop("constants"), dtype=np.float64)
    return {**data, "constants": numpy_helper.from_array(constants, name="constants")}


def circuit_from_node(node: onnx.NodeProto, max_qubits: int | None = None) -> Circuit:
    """Decode and validate the circuit carried by a ``QuantumLayer`` node's attributes."""
    if node.op_type != "QuantumLayer" or node.domain != DOMAIN:
        raise CircuitError(
            f"node {node.name!r} is {node.domain}:{node.op_type}, not a QuantumLayer"
        )
    data: dict[str, Any] = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        data[attribute.name] = (
            numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
        )
    try:
        return decode(data, max_qubits=max_qubits)
    except CircuitError as e:
        raise CircuitError(f"QuantumLayer node {node.name!r}: {e}") from e
