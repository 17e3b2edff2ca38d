import dataclasses
import json
import math
import pickle
import random

import numpy as np
import pytest
import torch

from qwthn_onnx.circuit import (
    GATES,
    Circuit,
    CircuitError,
    Gate,
    Param,
    gate_matrix,
    paper_circuit,
)
from tests.circuit.helpers import random_circuit

ALL_GATES = sorted(GATES)


def circuit(gates, n_qubits=2, observables=None, n_inputs=2, n_weights=2, **kw):
    observables = observables if observables is not None else ("Z" + "I" * (n_qubits - 1),)
    return Circuit(n_qubits, tuple(gates), tuple(observables), n_inputs, n_weights, **kw)


# ---------------------------------------------------------------------------------------------
# Gate table
# ---------------------------------------------------------------------------------------------


def test_gate_table_lists_every_required_gate():
    required = "rx ry rz h x y z s sdg t tdg p cx cy cz swap crx cry crz cp rzz rxx ryy"
    assert set(required.split()) == set(GATES)
    for name, spec in GATES.items():
        assert spec.name == name
        assert spec.n_qubits in (1, 2)
        assert spec.n_params in (0, 1)


@pytest.mark.parametrize("name", ALL_GATES)
def test_gate_matrices_are_unitary_batched_and_match_their_flags(name):
    spec = GATES[name]
    params = torch.rand(3, 5, spec.n_params, dtype=torch.float64) * 10 - 5
    mats = gate_matrix(spec, params)
    dim = 2**spec.n_qubits
    assert mats.shape == (3, 5, dim, dim)
    assert mats.dtype == torch.complex128
    eye = torch.eye(dim, dtype=torch.complex128)
    assert torch.allclose(mats @ mats.mH, eye.expand_as(mats), atol=1e-12)
    off_diagonal = mats - torch.diag_embed(torch.diagonal(mats, dim1=-2, dim2=-1))
    assert bool(off_diagonal.abs().max() == 0) == spec.diagonal
    assert bool(mats.imag.abs().max() == 0) == spec.real
    if spec.permutation:
        assert spec.n_params == 0
        assert set(mats.real.flatten().tolist()) == {0.0, 1.0}
        assert mats.imag.abs().max() == 0
        assert torch.equal(mats.real.sum(-1), torch.ones(3, 5, dim, dtype=torch.float64))
    assert gate_matrix(spec, params.float()).dtype == torch.complex64
    # the plain (numpy) matrix is the same data the simulator builds from (torch's vectorised
    # cos/sin may round the last bit differently from libm's)
    angle = float(params[0, 0, 0]) if spec.n_params else 0.0
    np.testing.assert_allclose(spec.matrix(angle), mats[0, 0].numpy(), rtol=0, atol=1e-15)


def test_rotation_conventions_match_the_documented_formulas():
    theta = 0.7
    c, s = math.cos(theta / 2), math.sin(theta / 2)
    ry = torch.tensor([[c, -s], [s, c]], dtype=torch.complex128)
    rx = torch.tensor([[c, -1j * s], [-1j * s, c]], dtype=torch.complex128)
    rz = torch.diag(torch.tensor([complex(c, -s), complex(c, s)], dtype=torch.complex128))
    crz = torch.diag(torch.tensor([1, 1, complex(c, -s), complex(c, s)], dtype=torch.complex128))
    zz = torch.diag(torch.tensor([1, -1, -1, 1], dtype=torch.complex128))
    p = torch.diag(torch.tensor([1, complex(math.cos(theta), math.sin(theta))]))
    assert torch.allclose(torch.from_numpy(GATES["ry"].matrix(theta)), ry)
    assert torch.allclose(torch.from_numpy(GATES["rx"].matrix(theta)), rx)
    assert torch.allclose(torch.from_numpy(GATES["rz"].matrix(theta)), rz)
    assert torch.allclose(torch.from_numpy(GATES["crz"].matrix(theta)), crz)
    assert torch.allclose(
        torch.from_numpy(GATES["rzz"].matrix(theta)), torch.linalg.matrix_exp(-0.5j * theta * zz)
    )
    assert torch.allclose(torch.from_numpy(GATES["p"].matrix(theta)), p.to(torch.complex128))


def test_cnot_alias_and_case_are_normalised():
    assert Gate("cnot", (0, 1)) == Gate("cx", (0, 1))
    assert Gate("CNOT", [0, 1]).name == "cx"
    assert Gate("RY", [1], [Param.input(0)]) == Gate("ry", (1,), (Param.input(0),))


# ---------------------------------------------------------------------------------------------
# Param / Gate / Circuit construction
# ---------------------------------------------------------------------------------------------


def test_param_constructors():
    assert Param.input(2) == Param("input", 2)
    assert Param.weight(0).kind == "weight"
    const = Param.const(1)
    assert const.value == 1.0 and isinstance(const.value, float)


def test_numpy_scalars_are_normalised_to_python_numbers():
    assert Param.input(np.int64(2)) == Param.input(2)
    assert type(Param.weight(np.int32(1)).value) is int
    assert Param.const(np.float32(0.5)) == Param.const(0.5)
    gate = Gate("cx", (np.int64(0), np.int64(1)))
    assert gate == Gate("cx", (0, 1)) and hash(gate) == hash(Gate("cx", (0, 1)))


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: Param("angle", 1), "kind 'angle'"),
        (lambda: Param.input(1.5), "integer index"),
        (lambda: Param.weight(True), "integer index"),
        (lambda: Param.weight(np.bool_(True)), "integer index"),
        (lambda: Param.const("pi"), "real angle"),
        (lambda: Gate("rx", 0, ()), "wires must be a tuple"),
    ],
)
def test_param_and_gate_reject_malformed_values(make, fragment):
    with pytest.raises(CircuitError, match=fragment):
        make()


def test_circuit_is_frozen_hashable_and_picklable():
    c = paper_circuit(3, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n_qubits = 4  # type: ignore[misc]
    again = paper_circuit(3, 2)
    assert c == again and hash(c) == hash(again)
    assert {c: 1}[again] == 1
    restored = pickle.loads(pickle.dumps(c))
    assert restored == c and hash(restored) == hash(c)
    assert "_hash" not in c.__getstate__()


def test_summary_properties_and_str():
    c = paper_circuit(3, 2)
    assert c.n_observables == 3
    assert c.n_gates == len(c.gates) == 3 + 2 * 12
    assert c.n_parameters == c.n_weights == 24
    text = str(c)
    assert "3 qubits" in text and "crz: 12" in text and "ry: 15" in text and "24 weights" in text


# ---------------------------------------------------------------------------------------------
# Validation errors
# ---------------------------------------------------------------------------------------------

W0 = (Param.weight(0),)


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"gates": [Gate("foo", (0,))]}, ["unknown gate 'foo'", "'crz'", "'ryy'", "cnot"]),
        ({"gates": [Gate("cx", (0,))]}, ["cx acts on 2 wire(s), got 1"]),
        ({"gates": [Gate("h", (0, 1))]}, ["h acts on 1 wire(s), got 2"]),
        ({"gates": [Gate("rx", (0,))]}, ["rx takes 1 param(s), got 0"]),
        ({"gates": [Gate("h", (0,), W0)]}, ["h takes 0 param(s), got 1"]),
        ({"gates": [Gate("ry", (2,), W0)]}, ["wire 2 is out of range", "0..1"]),
        ({"gates": [Gate("ry", (-1,), W0)]}, ["wire -1 is out of range"]),
        ({"gates": [Gate("crz", (1, 1), W0)]}, ["repeated wire"]),
        ({"gates": [Gate("ry", (0,), (Param.input(2),))]}, ["input index 2", "n_inputs=2"]),
        ({"gates": [Gate("ry", (0,), (Param.weight(5),))]}, ["weight index 5", "n_weights=2"]),
        ({"gates": [Gate("ry", (0,), (Param.weight(-1),))]}, ["weight index -1"]),
        ({"gates": [Gate("ry", (0,), (Param.const(math.nan),))]}, ["not finite"]),
        ({"gates": [Gate("ry", (0,), (Param.const(math.inf),))]}, ["not finite"]),
        ({"gates": [], "observables": ["Z"]}, ["length 1", "n_qubits=2"]),
        ({"gates": [], "observables": ["ZA"]}, ["invalid characters ['A']"]),
        ({"gates": [], "observables": ["zi"]}, ["invalid characters"]),
        ({"gates": [], "observables": []}, ["no observables"]),
        ({"gates": [], "n_qubits": 0, "observables": [""]}, ["n_qubits must be >= 1"]),
        ({"gates": [], "n_inputs": -1}, ["must be >= 0"]),
    ],
)
def test_validation_errors_name_the_problem(kwargs, fragments):
    with pytest.raises(CircuitError) as info:
        circuit(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_validation_reports_the_offending_gate_position():
    with pytest.raises(CircuitError, match=r"gate 1 \(crz on wires \(0, 5\)\)"):
        circuit([Gate("ry", (0,), W0), Gate("crz", (0, 5), W0)])


def test_qubit_limit_states_memory_and_how_to_raise_it(monkeypatch):
    monkeypatch.delenv("QWTHN_MAX_QUBITS", raising=False)
    with pytest.raises(CircuitError) as info:
        circuit([], n_qubits=21, observables=["Z" * 21])
    message = str(info.value)
    for fragment in ["21 qubits", "limit of 20", "16.0 MiB", "complex64", "32.0 MiB"]:
        assert fragment in message
    assert "QWTHN_MAX_QUBITS" in message and "max_qubits" in message

    with pytest.raises(CircuitError) as info:
        circuit([], n_qubits=40, observables=["Z" * 40], max_qubits=30)
    assert "8.0 TiB" in str(info.value) and "16.0 TiB" in str(info.value)

    # found by fuzzing: 2**n for an 80-digit n never finished; the message now says 2^n
    with pytest.raises(CircuitError, match=r"needs 8 x 2\^10{80} bytes"):
        circuit([], n_qubits=10**80, observables=["Z"])


def test_qubit_limit_is_configurable(monkeypatch):
    monkeypatch.delenv("QWTHN_MAX_QUBITS", raising=False)
    big = circuit([Gate("h", (20,))], n_qubits=21, observables=["Z" * 21], max_qubits=21)
    assert big.n_qubits == 21
    with pytest.raises(CircuitError, match="limit of 20"):
        big.validate()
    big.validate(max_qubits=22)
    monkeypatch.setenv("QWTHN_MAX_QUBITS", "21")
    assert circuit([], n_qubits=21, observables=["Z" * 21]).n_qubits == 21
    monkeypatch.setenv("QWTHN_MAX_QUBITS", "4")
    with pytest.raises(CircuitError, match="limit of 4"):
        circuit([], n_qubits=5, observables=["Z" * 5])
    monkeypatch.setenv("QWTHN_MAX_QUBITS", "many")
    with pytest.raises(CircuitError, match="QWTHN_MAX_QUBITS='many' is not an integer"):
        circuit([])


def test_max_qubits_is_not_part_of_equality():
    a = circuit([], max_qubits=5)
    b = circuit([])
    assert a == b and hash(a) == hash(b)
    assert "max_qubits" not in a.to_dict()


# ---------------------------------------------------------------------------------------------
# to_dict / from_dict
# ---------------------------------------------------------------------------------------------


def test_dict_round_trip_through_json():
    rng = random.Random(3)
    for c in [paper_circuit(4, 2), random_circuit(rng, 3, 30), random_circuit(rng, 1, 5)]:
        data = json.loads(json.dumps(c.to_dict()))
        restored = Circuit.from_dict(data)
        assert restored == c
        assert hash(restored) == hash(c)
        assert restored.to_dict() == c.to_dict()


def good_dict():
    return {
        "n_qubits": 2,
        "n_inputs": 1,
        "n_weights": 1,
        "observables": ["ZI"],
        "gates": [{"name": "crz", "wires": [0, 1], "params": [{"kind": "weight", "value": 0}]}],
    }


def mutate(path, value):
    data = good_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (mutate(["gates"], KeyError), ["missing the key 'gates'"]),
        (mutate(["n_qubits"], KeyError), ["missing the key 'n_qubits'"]),
        (mutate(["extra"], 1), ["unknown key(s) ['extra']"]),
        (mutate(["gates"], "crz"), ["circuit['gates'] must be a list"]),
        (mutate(["gates", 0, "wires"], KeyError), ["circuit['gates'][0]", "'wires'"]),
        (mutate(["gates", 0, "params", 0, "kind"], "angle"), ["['params'][0]", "'angle'"]),
        (mutate(["gates", 0, "params", 0, "value"], 0.5), ["['params'][0]", "integer index"]),
        (mutate(["gates", 0, "params", 0], 3), ["['params'][0] must be a dict"]),
        (mutate(["gates", 0, "name"], "crq"), ["unknown gate 'crq'"]),
        (mutate(["gates", 0, "wires"], [0, 2]), ["wire 2 is out of range"]),
        (mutate(["n_qubits"], "2"), ["n_qubits must be an int"]),
        (mutate(["format_version"], 9), ["format_version"]),
        ("not a dict", ["circuit must be a dict"]),
    ],
)
def test_from_dict_rejects_malformed_dicts(data, fragments):
    with pytest.raises(CircuitError) as info:
        Circuit.from_dict(data)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_from_dict_accepts_the_good_dict_and_limit_override():
    c = Circuit.from_dict(good_dict())
    assert c.gates == (Gate("crz", (0, 1), (Param.weight(0),)),)
    data = good_dict() | {"n_qubits": 21, "observables": ["Z" * 21]}
    with pytest.raises(CircuitError, match="limit of"):
        Circuit.from_dict(data)
    assert Circuit.from_dict(data, max_qubits=21).n_qubits == 21
