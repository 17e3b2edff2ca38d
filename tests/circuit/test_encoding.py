import json
import random

import numpy as np
import pytest

from qwthn_onnx.circuit import GATES, CircuitError, paper_circuit
from qwthn_onnx.circuit.encoding import GATE_CODES, decode, encode
from tests.circuit.helpers import random_circuit


def test_opcode_table_covers_every_gate_once():
    assert sorted(GATE_CODES) == sorted(GATES)
    assert len(set(GATE_CODES)) == len(GATE_CODES)
    # Append-only: these codes are in files already written; they must never move.
    assert GATE_CODES[:3] == ("rx", "ry", "rz") and GATE_CODES.index("crz") == 18


@pytest.mark.parametrize("seed", range(12))
def test_random_circuits_round_trip_exactly(seed):
    rng = random.Random(seed)
    circuit = random_circuit(rng, rng.randint(1, 5), rng.randint(0, 30))
    data = encode(circuit).as_dict()
    assert decode(json.loads(json.dumps(data))) == circuit  # survives JSON, constants exact


def test_paper_circuit_layout():
    enc = encode(paper_circuit(3, 1))
    assert enc.gates.shape == (3 + 12, 3)
    assert enc.gates[0].tolist() == [GATE_CODES.index("ry"), 0, -1]  # encoding RY on qubit 0
    assert enc.params[0].tolist() == [0, 0] and enc.params[3].tolist() == [1, 0]
    assert enc.observables.tolist() == [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    assert enc.constants.size == 0


def test_constants_keep_float64_precision():
    from qwthn_onnx.circuit import Circuit, Gate, Param

    angle = 0.1 + 1e-13
    circuit = Circuit(1, (Gate("rx", (0,), (Param.const(angle),)),), ("Z",), 0, 0)
    assert decode(encode(circuit).as_dict()).gates[0].params[0].value == angle


def _valid():
    return encode(paper_circuit(2, 1)).as_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoding_version": 2}, "encoding_version 2 is not supported"),
        ({"n_qubits": 0}, "n_qubits is 0; it must be in 1..20"),
        ({"n_qubits": 2**40}, "n_qubits is 1099511627776"),
        ({"n_qubits": "2"}, "'n_qubits' must be an int"),
        ({"gates": [1, 0]}, "'gates' has 2 values, not a multiple of 3"),
        ({"gates": [99, 0, -1]}, "gate 0 has opcode 99"),
        ({"gates": [-1, 0, -1]}, "gate 0 has opcode -1"),
        ({"gates": [1, 0, 1]}, "one-qubit gate 0 (ry) has wire1 1"),
        ({"gates": [1, 5, -1], "params": [0, 0]}, "wire"),
        ({"params": [0, 0]}, "needs parameter"),
        ({"params": [[7, 0]] * 10}, "parameter kind 7"),
        ({"gates": [1, 0, -1], "params": [0, 0, 1, 0]}, "'params' has 2 entries, the gates use 1"),
        ({"gates": [1, 0, -1], "params": [2, 3]}, "uses constant 3"),
        ({"gates": [1, 0, -1], "params": [0, 9]}, "input"),
        ({"observables": [3, 4]}, "Pauli code 4"),
        ({"observables": [3, 0, 0]}, "not a multiple of 2"),
        ({"gates": "abc"}, "'gates' must be a list of ints"),
        # found by the circuit_encoding fuzz target: ints and floats beyond int64 / float64
        ({"params": [0, 10**59]}, "'params' must be a list of ints in the int64 range"),
        ({"constants": [2**1100]}, "'constants' must be a list of floats"),
    ],
)
def test_malformed_encodings_raise_clear_errors(change, message):
    data = {**_valid(), **change}
    with pytest.raises(CircuitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode(data)


def test_missing_key_is_named():
    data = _valid()
    del data["params"]
    with pytest.raises(CircuitError, match="missing 'params'"):
        decode(data)


def test_arrays_have_documented_dtypes():
    enc = encode(paper_circuit(2, 1))
    assert enc.gates.dtype == enc.params.dtype == enc.observables.dtype == np.int64
    assert enc.constants.dtype == np.float64
