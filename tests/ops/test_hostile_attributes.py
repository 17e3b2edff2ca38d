"""Hostile ``ai.qwthn`` nodes: absurd attributes and tensors, with and without libqwthn_ops.

A model file is input from anyone. With the op library registered, every absurd attribute must
fail session creation, and every absurd tensor the run, with onnxruntime carrying our message
(which attribute or input, and what it must be); the process survives and a valid session
still works. Without the library, the registered OpSchemas must reject the same nodes in
``onnx.checker`` / shape inference instead of letting them pass.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

import qwthn_onnx
from qwthn_onnx.circuit import Circuit, Gate, Param, expectation_values, paper_circuit
from qwthn_onnx.ops import register_schemas
from qwthn_onnx.ops.models import mpo_linear_model, quantum_layer_model
from qwthn_onnx.runtime import LibraryNotFoundError

try:
    LIBRARY = qwthn_onnx.get_library_path()
except LibraryNotFoundError:  # pragma: no cover - depends on the build
    LIBRARY = None
needs_library = pytest.mark.skipif(LIBRARY is None, reason="libqwthn_ops not built")

CIRCUIT = paper_circuit(3, 1)  # 3 inputs, 12 weights, 3 observables, 15 gates, all parameterised
INT64_MAX = 2**63 - 1


@pytest.fixture(autouse=True)
def _schemas():
    register_schemas()


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(
        model.SerializeToString(), qwthn_onnx.session_options(1), providers=["CPUExecutionProvider"]
    )


def _set(name: str, value) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """Replace (or, with None, drop) attribute ``name`` of the model's node."""

    def edit(model: onnx.ModelProto) -> onnx.ModelProto:
        node = model.graph.node[0]
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        if isinstance(value, onnx.AttributeProto):
            node.attribute.append(value)
        elif value is not None:
            node.attribute.append(helper.make_attribute(name, value))
        return model

    return edit


def _empty_ints(name: str) -> onnx.AttributeProto:
    return onnx.AttributeProto(name=name, type=onnx.AttributeProto.INTS)


def _const_angle(value: float) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """The first gate's parameter becomes constant 0, with ``value`` as that constant."""

    def edit(model: onnx.ModelProto) -> onnx.ModelProto:
        params = list(CIRCUIT_ATTRIBUTES["params"])
        params[0:2] = [2, 0]
        _set("params", params)(model)
        return _set("constants", numpy_helper.from_array(np.array([value]), "constants"))(model)

    return edit


def _attributes(circuit) -> dict:
    node = quantum_layer_model(circuit, fallback=False).graph.node[0]
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


CIRCUIT_ATTRIBUTES = _attributes(CIRCUIT)
GATES = list(CIRCUIT_ATTRIBUTES["gates"])
PARAMS = list(CIRCUIT_ATTRIBUTES["params"])

# (edit of a valid QuantumLayer node, the message onnxruntime must carry)
QUANTUM_LAYER_CASES = {
    "n_qubits 2^40": (_set("n_qubits", 2**40), r"n_qubits is 1099511627776; it must be in 1\.\.20"),
    "n_qubits negative": (_set("n_qubits", -7), r"n_qubits is -7; it must be in 1\.\.20"),
    "n_qubits int64 max": (_set("n_qubits", INT64_MAX), rf"n_qubits is {INT64_MAX}"),
    "n_inputs negative": (_set("n_inputs", -1), r"n_inputs must be >= 0, got -1"),
    "n_weights int64 min": (_set("n_weights", -(2**63)), r"n_weights must be >= 0"),
    "encoding_version 2": (_set("encoding_version", 2), r"'encoding_version' is 2; .*version 1"),
    "encoding_version huge": (
        _set("encoding_version", INT64_MAX),
        rf"'encoding_version' is {INT64_MAX}",
    ),
    "gates not triples": (_set("gates", [*GATES, 1]), r"'gates' has 46 values; .*triples"),
    "params not pairs": (_set("params", PARAMS[:-1]), r"'params' has 29 values; .*pairs"),
    "params too few": (_set("params", PARAMS[:-2]), r"'params' has 14 entries, but gate 14"),
    "params too many": (
        _set("params", [*PARAMS, 1, 0]),
        r"'params' has 16 entries, the gates use 15",
    ),
    "observables ragged": (_set("observables", [3, 0, 0, 3]), r"4 values, not a multiple of n_q"),
    "observables empty": (_set("observables", _empty_ints("observables")), r"no observables"),
    "observables missing": (_set("observables", None), r"'observables' is missing"),
    "pauli code": (_set("observables", [3, 0, -1]), r"Pauli code -1"),
    "opcode negative": (_set("gates", [-1, *GATES[1:]]), r"opcode -1"),
    "wire huge": (_set("gates", [GATES[0], 2**62, *GATES[2:]]), r"wire0 4611686018427387904"),
    "weight index huge": (
        _set("params", [*PARAMS[:-1], 2**62]),
        r"weight index 4611686018427387904",
    ),
    "param kind": (_set("params", [7, *PARAMS[1:]]), r"parameter kind 7"),
    "constant index": (
        _set("params", [2, 5, *PARAMS[2:]]),
        r"uses constant 5, but 'constants' has 0 values",
    ),
    "constant nan": (_const_angle(float("nan")), r"constant angle nan is not finite"),
    "constant inf": (_const_angle(float("inf")), r"constant angle inf is not finite"),
    "constants float32": (
        _set("constants", numpy_helper.from_array(np.zeros(1, np.float32), "constants")),
        r"'constants' must be a rank-1 float64 tensor",
    ),
}


def _quantum_data(shape=(4,)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-np.pi, np.pi, (*shape, CIRCUIT.n_inputs)).astype(np.float32)
    return x, rng.uniform(-np.pi, np.pi, CIRCUIT.n_weights).astype(np.float32)


def _valid_session_still_works() -> None:
    x, w = _quantum_data()
    (y,) = _session(quantum_layer_model(CIRCUIT, fallback=False)).run(None, {"x": x, "weights": w})
    reference = expectation_values(CIRCUIT, torch.from_numpy(x).double(), torch.from_numpy(w))
    np.testing.assert_allclose(y, reference.numpy(), atol=1e-5)


@needs_library
@pytest.mark.parametrize("case", QUANTUM_LAYER_CASES)
def test_absurd_quantum_layer_attributes_fail_session_creation(case):
    edit, message = QUANTUM_LAYER_CASES[case]
    model = edit(quantum_layer_model(CIRCUIT, fallback=False))
    with pytest.raises(Exception, match=message) as error:
        _session(model)
    assert "QuantumLayer node 'quantum_layer'" in str(error.value)
    _valid_session_still_works()


def _mpo_cores(bond: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = [(1, 4, 2, bond), (bond, 4, 2, bond), (bond, 4, 2, 1)]
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


MPO_CASES = {
    "mode zero": (
        _set("in_modes", [4, 0, 4]),
        r"mode 1 is \(in 0, out 2\); modes must be positive",
    ),
    "mode negative": (_set("out_modes", [2, -2, 2]), r"modes must be positive"),
    "modes overflow int64": (_set("in_modes", [2**32, 2**32, 2**32]), r"prod\(in_modes\) exceeds"),
    "modes int64 max": (_set("out_modes", [INT64_MAX] * 3), r"prod\(out_modes\) exceeds"),
    "modes lengths differ": (_set("out_modes", [2, 2]), r"in_modes has 3 entries but out_modes"),
    "no modes": (
        lambda m: _set("out_modes", _empty_ints("out_modes"))(
            _set("in_modes", _empty_ints("in_modes"))(m)
        ),
        r"in_modes has 0 entries; an MPO has 1\.\.16 cores",
    ),
    "17 modes": (
        lambda m: _set("out_modes", [1] * 17)(_set("in_modes", [1] * 17)(m)),
        r"in_modes has 17 entries; an MPO has 1\.\.16 cores",
    ),
}


@needs_library
@pytest.mark.parametrize("case", MPO_CASES)
def test_absurd_mpo_modes_fail_session_creation(case):
    edit, message = MPO_CASES[case]
    with pytest.raises(Exception, match=message) as error:
        _session(edit(mpo_linear_model(_mpo_cores(), fallback=False)))
    assert "MPOLinear node 'mpo_linear'" in str(error.value)
    _valid_session_still_works()


def _unshaped(model: onnx.ModelProto) -> onnx.ModelProto:
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.ClearField("shape")
    return model


@needs_library
@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        (lambda x, w: (x, w[:0]), r"'weights' must have shape \[n_weights=12\], got \[0\]"),
        (lambda x, w: (x, np.tile(w, 1000)), r"\[n_weights=12\], got \[12000\]"),
        (lambda x, w: (x, w.reshape(3, 4)), r"\[n_weights=12\], got \[3, 4\]"),
        (lambda x, w: (x[..., :1], w), r"'x' must have shape \[\.\.\., n_inputs=3\], got \[4, 1\]"),
        (lambda x, w: (np.array(1.0, np.float32), w), r"n_inputs=3\], got \[\]"),
        (lambda x, w: (np.zeros((0, 5, 3), np.float32), w), r"'x' is empty"),
    ],
)
def test_mismatched_quantum_layer_tensors_fail_the_run(feeds, message):
    session = _session(_unshaped(quantum_layer_model(CIRCUIT, fallback=False)))
    x, w = _quantum_data()
    bad_x, bad_w = feeds(x, w)
    with pytest.raises(Exception, match=message):
        session.run(None, {"x": bad_x, "weights": bad_w})
    (y,) = session.run(None, {"x": x, "weights": w})  # the same session still works
    assert y.shape == (4, 3)


@needs_library
def test_an_absurd_output_allocation_fails_the_run():
    """2^20 rows through a 2^26-wide MPO would need 256 TiB for y: an error, not a crash."""
    cores = [np.ones((1, 1, 2**13, 1), np.float32), np.ones((1, 1, 2**13, 1), np.float32)]
    session = _session(_unshaped(mpo_linear_model(cores, fallback=False)))
    with pytest.raises(Exception, match=r"MPOLinear node 'mpo_linear': .*[Aa]llocat"):
        session.run(None, {"x": np.ones((2**20, 1), np.float32)})
    (y,) = session.run(None, {"x": np.full((2, 1), 2.0, np.float32)})
    assert y.shape == (2, 2**26) and np.all(y == 2.0)
    # Many observables: y [2^20, 2^20] floats (4 TiB) from a 4 MiB x.
    one_qubit = Circuit(1, [Gate("ry", (0,), (Param("input", 0),))], ("Z",), 1, 0)
    wide = _set("observables", [3] * 2**20)(quantum_layer_model(one_qubit, fallback=False))
    session = _session(_unshaped(wide))
    with pytest.raises(Exception, match=r"QuantumLayer node 'quantum_layer': .*[Aa]llocat"):
        session.run(
            None, {"x": np.zeros((2**20, 1), np.float32), "weights": np.zeros(0, np.float32)}
        )
    _valid_session_still_works()


@needs_library
def test_mpo_core_count_and_shapes_are_checked_at_run():
    cores = _mpo_cores()
    session = _session(_unshaped(_set("in_modes", [16, 4])(
        _set("out_modes", [4, 2])(mpo_linear_model(cores, fallback=False))
    )))  # fmt: skip
    with pytest.raises(Exception, match=r"got 3 cores; in_modes has 2 entries, one per core"):
        session.run(None, {"x": np.zeros((2, 64), np.float32)})
    session = _session(_unshaped(mpo_linear_model(cores, fallback=False)))
    with pytest.raises(
        Exception, match=r"must have shape \[\.\.\., prod\(in_modes\)=64\], got \[2, 65\]"
    ):
        session.run(None, {"x": np.zeros((2, 65), np.float32)})
    (y,) = session.run(None, {"x": np.zeros((2, 64), np.float32)})
    assert y.shape == (2, 8)


@needs_library
def test_a_circuit_without_inputs_runs_on_rows_of_nothing():
    """x [..., 0] has rows even though it has no elements (the batch is its leading dims)."""
    circuit = Circuit(2, [Gate("ry", (0,), (Param("weight", 0),))], ("ZI", "IZ"), 0, 1)
    session = _session(quantum_layer_model(circuit, fallback=False))
    (y,) = session.run(
        None, {"x": np.zeros((3, 0), np.float32), "weights": np.array([np.pi], np.float32)}
    )
    np.testing.assert_allclose(y, [[-1.0, 1.0]] * 3, atol=1e-6)


# --- without the library: the OpSchemas reject what the kernel would --------------------------


@pytest.mark.parametrize("case", [*QUANTUM_LAYER_CASES, *MPO_CASES])
def test_the_checker_rejects_absurd_attributes_without_the_library(case):
    if case in QUANTUM_LAYER_CASES:
        edit, _ = QUANTUM_LAYER_CASES[case]
        model = edit(quantum_layer_model(CIRCUIT, fallback=False))
    else:
        edit, _ = MPO_CASES[case]
        model = edit(mpo_linear_model(_mpo_cores(), fallback=False))
    with pytest.raises(Exception, match=r"QuantumLayer|MPOLinear|attribute|observables"):
        onnx.checker.check_model(model, full_check=True)


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_the_checker_accepts_valid_nodes_and_infers_their_shapes():
    for model in (
        quantum_layer_model(CIRCUIT, leading_dims=("b", 5)),
        mpo_linear_model(_mpo_cores(), leading_dims=("b", 5)),
    ):
        onnx.checker.check_model(model, full_check=True)
        expected = _dims(model.graph.output[0])
        model.graph.output[0].type.tensor_type.ClearField("shape")
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        assert _dims(inferred.graph.output[0]) == expected


def test_the_checker_rejects_mismatched_declared_shapes():
    model = quantum_layer_model(CIRCUIT)
    model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value = 5
    with pytest.raises(Exception, match=r"'x' must have shape \[\.\.\., n_inputs=3\]"):
        onnx.checker.check_model(model, full_check=True)
    cores = _mpo_cores()
    model = mpo_linear_model([cores[0], cores[2], cores[1]])
    with pytest.raises(Exception, match=r"core 2 has shape \[2, 4, 2, 2\]; it must be \[bond_in"):
        onnx.checker.check_model(model, full_check=True)
