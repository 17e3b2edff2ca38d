import random

import onnx
import pytest
from onnx import TensorProto, helper

from qwthn_onnx.circuit import CircuitError, paper_circuit
from qwthn_onnx.ops import DOMAIN, circuit_from_node, quantum_layer_attributes, register_schemas
from tests.circuit.helpers import random_circuit


def _model(node: onnx.NodeProto, n_in: int = 3, n_out: int = 3) -> onnx.ModelProto:
    params = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None]) for n in node.input[1:]]
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", n_in]), *params],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", n_out])],
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _node(circuit, **overrides) -> onnx.NodeProto:
    attrs = {**quantum_layer_attributes(circuit), **overrides}
    attrs = {k: v for k, v in attrs.items() if v is not None}
    return helper.make_node("QuantumLayer", ["x", "w"], ["y"], name="q0", domain=DOMAIN, **attrs)


def test_checker_accepts_registered_ops_and_validates_attributes():
    register_schemas()
    register_schemas()  # idempotent
    circuit = paper_circuit(3, 2)
    onnx.checker.check_model(_model(_node(circuit)))
    with pytest.raises(onnx.checker.ValidationError, match="gates"):
        onnx.checker.check_model(_model(_node(circuit, gates=None)))
    mpo = helper.make_node(
        "MPOLinear", ["x", "c0", "c1"], ["y"], domain=DOMAIN, in_modes=[3, 1], out_modes=[3, 1]
    )
    onnx.checker.check_model(_model(mpo))


@pytest.mark.parametrize("seed", range(6))
def test_node_round_trips_the_circuit(seed):
    circuit = random_circuit(random.Random(seed), 4, 25)
    node = _node(circuit)
    decoded = circuit_from_node(
        onnx.load_from_string(_model(node).SerializeToString()).graph.node[0]
    )
    assert decoded == circuit


def test_malformed_node_names_the_node_and_problem():
    node = _node(paper_circuit(3, 1), gates=[1, 0, -1, 77, 0, 1])
    with pytest.raises(CircuitError, match=r"QuantumLayer node 'q0': .*opcode 77"):
        circuit_from_node(node)
    other = helper.make_node("Relu", ["x"], ["y"], name="r")
    with pytest.raises(CircuitError, match="not a QuantumLayer"):
        circuit_from_node(other)


def test_readme_reference_matches_the_schemas():
    from pathlib import Path

    from qwthn_onnx.ops.schemas import render_reference

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start, end = "<!-- ops-reference:start -->\n", "<!-- ops-reference:end -->"
    section = readme[readme.index(start) + len(start) : readme.index(end)]
    assert section == render_reference(), "regenerate: python -m qwthn_onnx.ops"
