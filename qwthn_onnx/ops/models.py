"""Single-op ONNX models of the ``ai.qwthn`` ops: for tests, benchmarks and users' own graphs.

Each model takes ``x`` with the given leading dims (names are symbolic, ints fixed) and returns
``y``; the op's parameters are initializers (or, for QuantumLayer, an input ``weights`` when
none are given). With ``fallback`` the standard-op bodies are attached, so the model runs in a
plain onnxruntime too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qwthn_onnx.circuit import Circuit
from qwthn_onnx.ops.fallback import attach_fallbacks
from qwthn_onnx.ops.schemas import DOMAIN, OPSET_VERSION, quantum_layer_attributes

__all__ = ["mpo_linear_model", "quantum_layer_model"]

DEFAULT_OPSET = 21
_IR_VERSION = 10  # function overloads need IR 10; onnxruntime >= 1.20 reads it


def _model(
    node: onnx.NodeProto,
    inputs: list[onnx.ValueInfoProto],
    output: onnx.ValueInfoProto,
    initializers: list[onnx.TensorProto],
    opset: int,
    fallback: bool,
) -> onnx.ModelProto:
    graph = helper.make_graph([node], node.op_type, inputs, [output], initializer=initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, OPSET_VERSION)],
        ir_version=_IR_VERSION,
        producer_name="qwthn-onnx",
    )
    return attach_fallbacks(model) if fallback else model


def quantum_layer_model(
    circuit: Circuit,
    *,
    dtype: type[np.floating] | np.dtype = np.float32,
    leading_dims: Sequence[str | int] = ("batch",),
    weights: np.ndarray | None = None,
    opset: int = DEFAULT_OPSET,
    fallback: bool = True,
) -> onnx.ModelProto:
    """``y = QuantumLayer(x, weights)`` for ``circuit``; ``weights`` become an initializer."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    lead = list(leading_dims)
    node = helper.make_node(
        "QuantumLayer", ["x", "weights"], ["y"], domain=DOMAIN, name="quantum_layer",
        **quantum_layer_attributes(circuit),
    )  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", elem, [*lead, circuit.n_inputs])]
    initializers = []
    if weights is None:
        inputs.append(helper.make_tensor_value_info("weights", elem, [circuit.n_weights]))
    else:
        initializers.append(numpy_helper.from_array(np.asarray(weights, dtype=dtype), "weights"))
    output = helper.make_tensor_value_info("y", elem, [*lead, len(circuit.observables)])
    return _model(node, inputs, output, initializers, opset, fallback)


def mpo_linear_model(
    cores: Sequence[np.ndarray],
    *,
    leading_dims: Sequence[str | int] = ("batch",),
    opset: int = DEFAULT_OPSET,
    fallback: bool = True,
) -> onnx.ModelProto:
    """``y = MPOLinear(x, *cores)``; modes are read from the cores' shapes ``[D, i, j, D']``."""
    arrays = [np.asarray(c) for c in cores]
    if not arrays or any(a.ndim != 4 for a in arrays):
        raise ValueError("cores must be a non-empty list of rank-4 arrays [D, in, out, D']")
    in_modes = [int(a.shape[1]) for a in arrays]
    out_modes = [int(a.shape[2]) for a in arrays]
    elem = helper.np_dtype_to_tensor_dtype(arrays[0].dtype)
    names = [f"core_{k}" for k in range(len(arrays))]
    node = helper.make_node(
        "MPOLinear", ["x", *names], ["y"], domain=DOMAIN, name="mpo_linear",
        in_modes=in_modes, out_modes=out_modes,
    )  # fmt: skip
    lead = list(leading_dims)
    x = helper.make_tensor_value_info("x", elem, [*lead, int(np.prod(in_modes))])
    y = helper.make_tensor_value_info("y", elem, [*lead, int(np.prod(out_modes))])
    initializers = [numpy_helper.from_array(a, n) for a, n in zip(arrays, names, strict=True)]
    return _model(node, [x], y, initializers, opset, fallback)
