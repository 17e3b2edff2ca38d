"""Fallback bodies of the ``ai.qwthn`` ops in standard ONNX ops (model-local functions).

Attached to a model, they make it run in any onnxruntime (or other ONNX runtime): a runtime
without our kernel library inlines the function body; one with the library runs the kernel.
Shapes come from the node's attributes through attribute references, so one function serves
every node of its op in a model.
"""

from __future__ import annotations

import hashlib
import json
import string

import onnx
from onnx import helper

from qwthn_onnx.circuit.encoding import encode
from qwthn_onnx.ops.quantum_fallback import quantum_layer_function
from qwthn_onnx.ops.schemas import DOMAIN, OPSET_VERSION, circuit_from_node

__all__ = [
    "FallbackMismatchError",
    "attach_fallbacks",
    "check_fallbacks",
    "mpo_linear_function",
]

# Function overloads (one body per distinct circuit / core count) need IR version 10.
_MIN_IR_VERSION = 10


def _mpo_equation(num_cores: int) -> str:
    """Einsum contracting ``x[B, i_1..i_K]`` with K cores ``[D, i_k, j_k, D]`` -> ``[B, j_1..j_K]``.

    The outer bonds have size 1 and are summed away with the inner ones.
    """
    letters = iter(string.ascii_letters.replace("B", ""))
    ins = [next(letters) for _ in range(num_cores)]
    outs = [next(letters) for _ in range(num_cores)]
    bonds = [next(letters) for _ in range(num_cores + 1)]
    cores = [f"{bonds[k]}{ins[k]}{outs[k]}{bonds[k + 1]}" for k in range(num_cores)]
    return f"B{''.join(ins)},{','.join(cores)}->B{''.join(outs)}"


def mpo_linear_function(num_cores: int, opset: int) -> onnx.FunctionProto:
    """``MPOLinear`` with ``num_cores`` cores as a function of standard ops (opset ``opset``).

    Leading dims of x are kept symbolically: ``y`` has shape ``Shape(x)[:-1] + [prod(out)]``.
    """
    if not 1 <= num_cores <= 12:
        raise ValueError(f"MPOLinear fallback supports 1..12 cores, got {num_cores}")
    cores = [f"core_{k}" for k in range(num_cores)]

    def const_ints(output: str, attribute: str) -> onnx.NodeProto:
        node = helper.make_node("Constant", [], [output])
        ref = helper.make_attribute_ref(
            "value_ints", onnx.AttributeProto.INTS, ref_attr_name=attribute
        )
        node.attribute.append(ref)
        return node

    nodes = [
        const_ints("in_modes", "in_modes"),
        const_ints("out_modes", "out_modes"),
        helper.make_node("Constant", [], ["minus_one"], value_ints=[-1]),
        helper.make_node("Concat", ["minus_one", "in_modes"], ["x_modes_shape"], axis=0),
        helper.make_node("Reshape", ["x", "x_modes_shape"], ["x_modes"]),
        helper.make_node(
            "Einsum", ["x_modes", *cores], ["y_modes"], equation=_mpo_equation(num_cores)
        ),
        helper.make_node("Shape", ["x"], ["lead"], end=-1),
        helper.make_node("ReduceProd", ["out_modes"], ["out_size"], keepdims=1),
        helper.make_node("Concat", ["lead", "out_size"], ["y_shape"], axis=0),
        helper.make_node("Reshape", ["y_modes", "y_shape"], ["y"]),
    ]
    return helper.make_function(
        DOMAIN,
        "MPOLinear",
        ["x", *cores],
        ["y"],
        nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["in_modes", "out_modes"],
    )


def _default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise ValueError("the model imports no default-domain opset; cannot build fallback bodies")


class FallbackMismatchError(ValueError):
    """A model whose fallback bodies are not the ones its ``ai.qwthn`` nodes' attributes give."""


def _fallbacks(
    model: onnx.ModelProto,
) -> tuple[list[tuple[onnx.NodeProto, str]], dict[tuple[str, str], onnx.FunctionProto]]:
    """What :func:`attach_fallbacks` gives ``model``: each ai.qwthn node with its overload, and
    the function per (op, overload). QuantumLayer attributes are decoded and validated."""
    opset = _default_opset(model)
    overloads: list[tuple[onnx.NodeProto, str]] = []
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        if node.op_type == "QuantumLayer":
            circuit = circuit_from_node(node)
            digest = hashlib.sha256(
                json.dumps(encode(circuit).as_dict(), sort_keys=True).encode()
            ).hexdigest()[:16]
            overload = f"circuit_{digest}"
            if (node.op_type, overload) not in functions:
                functions[node.op_type, overload] = quantum_layer_function(circuit, opset)
        elif node.op_type == "MPOLinear":
            overload = f"cores_{len(node.input) - 1}"
            if (node.op_type, overload) not in functions:
                functions[node.op_type, overload] = mpo_linear_function(len(node.input) - 1, opset)
        else:
            raise ValueError(f"node {node.name!r}: unknown op {DOMAIN}::{node.op_type}")
        overloads.append((node, overload))
    for (_, overload), function in functions.items():
        function.overload = overload
    return overloads, functions


def attach_fallbacks(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every ``ai.qwthn`` node of ``model``'s graph a fallback body, in place.

    Each distinct circuit (and each MPO core count) gets its own function overload, named after
    a hash of its encoding, so different circuits in one model coexist. The functions use the
    model's own default opset. Existing fallbacks are replaced, so calling this twice is safe.
    Every QuantumLayer node's attributes are decoded and validated on the way.
    """
    overloads, functions = _fallbacks(model)
    for node, overload in overloads:
        node.overload = overload
    replaced = {(DOMAIN, name, overload) for name, overload in functions}
    kept = [f for f in model.functions if (f.domain, f.name, f.overload) not in replaced]
    del model.functions[:]
    model.functions.extend([*kept, *functions.values()])
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    model.ir_version = max(model.ir_version, _MIN_IR_VERSION)
    return model


def check_fallbacks(model: onnx.ModelProto, where: str = "model") -> None:
    """Refuse a model whose fallback bodies differ from those its nodes' attributes give.

    A runtime without our kernels picks a node's body by its overload name and never reads the
    attributes: a node edited after export (another circuit, other observables) would run its
    old body and answer for a circuit it no longer holds. The kernels read the attributes, so
    only fallback runs need this.
    """
    overloads, functions = _fallbacks(model)
    present = {(f.domain, f.name, f.overload): f for f in model.functions}
    for node, overload in overloads:
        expected = functions[node.op_type, overload]
        found = present.get((DOMAIN, node.op_type, node.overload))
        if node.overload != overload or found is None or found != expected:
            raise FallbackMismatchError(
                f"{where}: the fallback body of {node.op_type} node {node.name!r} does not "
                "match its attributes (the node or its function was edited after export); "
                "export the model again, or re-attach the fallbacks with "
                "qwthn_onnx.ops.fallback.attach_fallbacks"
            )
