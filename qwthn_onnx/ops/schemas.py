"""OpSchemas of the ``ai.qwthn`` domain, registered with onnx from Python.

Registering them lets ``onnx.checker`` validate our nodes (required attributes, input counts,
types) instead of rejecting an unknown op. Their type-and-shape inference functions decode and
validate the attributes as the C++ kernels do (a hostile or corrupted node fails
``onnx.checker.check_model(full_check=True)`` / ``onnx.shape_inference.infer_shapes`` with the
kernel's message instead of passing) and give ``y`` its shape. onnxruntime does not call them:
without the kernel library it runs the fallback function bodies attached to a model.

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
from qwthn_onnx.mpo_shapes import MPOError

__all__ = [
    "DOMAIN",
    "OPSET_VERSION",
    "circuit_from_node",
    "layer_of_node",
    "quantum_layer_attributes",
    "quantum_layer_nodes",
    "quantum_layer_weights",
    "register_schemas",
    "render_reference",
    "schemas",
]

DOMAIN = "ai.qwthn"
OPSET_VERSION = 1
_FLOATS = ["tensor(float)", "tensor(double)"]
_INT, _INTS, _TENSOR = OpSchema.AttrType.INT, OpSchema.AttrType.INTS, OpSchema.AttrType.TENSOR


# The C++ kernel's limit on prod(in_modes) and prod(out_modes) (custom_ops/src/mpo.h).
_MAX_MPO_FEATURES = 2**31
_MAX_MPO_CORES = 16


def _attribute_values(attributes: dict[str, onnx.AttributeProto | None]) -> dict[str, Any]:
    values = {}
    for name, attribute in attributes.items():
        if attribute is not None:
            value = helper.get_attribute_value(attribute)
            is_tensor = isinstance(value, onnx.TensorProto)
            values[name] = numpy_helper.to_array(value) if is_tensor else value
    return values


def _dims(value_type: onnx.TypeProto | None) -> list[onnx.TensorShapeProto.Dimension] | None:
    """The tensor's dims when its rank is known."""
    if value_type is None or not value_type.tensor_type.HasField("shape"):
        return None
    return list(value_type.tensor_type.shape.dim)


def _known(dim: onnx.TensorShapeProto.Dimension) -> int | None:
    return dim.dim_value if dim.HasField("dim_value") else None


def _set_output(ctx: Any, x_type: onnx.TypeProto | None, last: int) -> None:
    """y: x's element type, x's leading dims followed by ``last``."""
    if x_type is None or not x_type.HasField("tensor_type"):
        return
    y = onnx.TypeProto()
    y.tensor_type.elem_type = x_type.tensor_type.elem_type
    dims = _dims(x_type)
    if dims:
        y.tensor_type.shape.dim.extend(dims[:-1])
        y.tensor_type.shape.dim.add().dim_value = last
    ctx.set_output_type(0, y)


def _check_last_dim(kind: type[ValueError], op: str, x_type: Any, name: str, size: int) -> None:
    dims = _dims(x_type)
    if dims is not None and (not dims or _known(dims[-1]) not in (None, size)):
        shape = [_known(d) for d in dims]
        raise kind(f"{op}: input 'x' must have shape [..., {name}={size}], got {shape}")


def _infer_quantum_layer(ctx: Any) -> None:
    names = ["encoding_version", "n_qubits", "n_inputs", "n_weights", "gates", "params"]
    names += ["constants", "observables"]
    attributes = {name: ctx.get_attribute(name) for name in names}
    constants = attributes["constants"]
    if constants is not None and (
        constants.t.data_type != onnx.TensorProto.DOUBLE or len(constants.t.dims) != 1
    ):  # what the kernel reads (decode would convert anything)
        raise CircuitError("QuantumLayer: attribute 'constants' must be a rank-1 float64 tensor")
    data = _attribute_values(attributes)
    for name in ("gates", "params"):
        data.setdefault(name, [])
    try:
        circuit = decode(data)
    except CircuitError as e:
        raise CircuitError(f"QuantumLayer: {e}") from None
    x_type = ctx.get_input_type(0)
    _check_last_dim(CircuitError, "QuantumLayer", x_type, "n_inputs", circuit.n_inputs)
    weights = _dims(ctx.get_input_type(1))
    if weights is not None and (
        len(weights) != 1 or _known(weights[0]) not in (None, circuit.n_weights)
    ):
        raise CircuitError(
            f"QuantumLayer: input 'weights' must have shape [n_weights={circuit.n_weights}], "
            f"got {[_known(d) for d in weights]}"
        )
    _set_output(ctx, x_type, len(circuit.observables))


def _infer_mpo_linear(ctx: Any) -> None:
    data = _attribute_values({n: ctx.get_attribute(n) for n in ("in_modes", "out_modes")})
    in_modes, out_modes = list(data.get("in_modes", [])), list(data.get("out_modes", []))
    if not 1 <= len(in_modes) <= _MAX_MPO_CORES or len(out_modes) != len(in_modes):
        raise MPOError(
            f"MPOLinear: in_modes has {len(in_modes)} entries and out_modes {len(out_modes)}; "
            f"give one (in, out) mode pair per core, 1..{_MAX_MPO_CORES} cores"
        )
    for name, modes in (("in_modes", in_modes), ("out_modes", out_modes)):
        if any(m < 1 for m in modes):
            raise MPOError(f"MPOLinear: {name} is {modes}; modes must be positive")
        if int(np.prod(modes, dtype=object)) > _MAX_MPO_FEATURES:
            raise MPOError(f"MPOLinear: prod({name}) exceeds {_MAX_MPO_FEATURES}")
    n_cores = ctx.get_num_inputs() - 1
    if n_cores != len(in_modes):
        raise MPOError(
            f"MPOLinear: got {n_cores} cores; in_modes has {len(in_modes)} entries, one per core"
        )
    bond = 1
    for k in range(n_cores):
        dims = _dims(ctx.get_input_type(k + 1))
        if dims is None:
            bond = None
            continue
        shape = [_known(d) for d in dims]
        expected = [bond, in_modes[k], out_modes[k], 1 if k == n_cores - 1 else None]
        if len(shape) != 4 or any(
            e is not None and d is not None and d != e for d, e in zip(shape, expected, strict=True)
        ):
            raise MPOError(
                f"MPOLinear: core {k} has shape {shape}; it must be [bond_in, {in_modes[k]}, "
                f"{out_modes[k]}, bond_out] with bond_in = the previous core's bond_out "
                "(1 for the first) and bond_out = 1 for the last"
            )
        bond = shape[3]
    x_type = ctx.get_input_type(0)
    _check_last_dim(MPOError, "MPOLinear", x_type, "prod(in_modes)", int(np.prod(in_modes)))
    _set_output(ctx, x_type, int(np.prod(out_modes)))


def _quantum_layer_schema() -> OpSchema:
    attr = OpSchema.Attribute
    schema = OpSchema(
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
    schema.set_type_and_shape_inference_function(_infer_quantum_layer)
    return schema


def _mpo_linear_schema() -> OpSchema:
    schema = OpSchema(
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
    schema.set_type_and_shape_inference_function(_infer_mpo_linear)
    return schema


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


QNN_NODE_SUFFIX = ".qwthn.qnn"  # the exporter names a QuantumLayer node <adapted module> + this


def quantum_layer_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The model's QuantumLayer nodes (top-level graph), in graph order."""
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == "QuantumLayer"]


def layer_of_node(node: onnx.NodeProto) -> str:
    """The adapted layer a QuantumLayer node belongs to (``<layer>.qwthn.qnn``)."""
    return node.name.removesuffix(QNN_NODE_SUFFIX)


def quantum_layer_weights(
    node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], base_dir: str | None = None
) -> np.ndarray:
    """A QuantumLayer's trained weights (float64, flat) from its initializer ``node.input[1]``;
    ``base_dir`` locates weights stored outside the model file."""
    tensor = initializers.get(node.input[1]) if len(node.input) > 1 else None
    if tensor is None:
        raise CircuitError(
            f"QuantumLayer node {node.name!r}: its weights are not an initializer of the model; "
            "give a model written by qwthn-export"
        )
    return numpy_helper.to_array(tensor, base_dir=base_dir or "").astype(np.float64).reshape(-1)


def circuit_from_node(node: onnx.NodeProto, max_qubits: int | None = None) -> Circuit:
    """Decode and validate the circuit carried by a ``QuantumLayer`` node's attributes."""
    if node.op_type != "QuantumLayer" or node.domain != DOMAIN:
        raise CircuitError(
            f"node {node.name!r} is {node.domain}:{node.op_type}, not a QuantumLayer"
        )
    data: dict[str, Any] = {}
    for attribute in node.attribute:
        try:  # onnx raises TypeError/ValueError on attributes of undefined or mismatched types
            value = helper.get_attribute_value(attribute)
            if isinstance(value, onnx.TensorProto):
                value = numpy_helper.to_array(value)
        except (TypeError, ValueError) as e:
            raise CircuitError(
                f"QuantumLayer node {node.name!r}: attribute {attribute.name!r} does not decode "
                f"({e}); the model file is damaged"
            ) from e
        data[attribute.name] = value
    try:
        return decode(data, max_qubits=max_qubits)
    except CircuitError as e:
        raise CircuitError(f"QuantumLayer node {node.name!r}: {e}") from e
