"""OpenQASM 3 / 2 export and import of the circuit IR (exporters.qasm)."""

from __future__ import annotations

import dataclasses
import math
import random
import re

import numpy as np
import openqasm3
import pytest
import qiskit.qasm2
import qiskit.qasm3
import torch
from qiskit.quantum_info import Operator, Statevector

from exporters.qasm import (
    QASM2_BASIS,
    QasmError,
    circuit_to_qasm2,
    circuit_to_qasm3,
    parameter_name,
    qasm3_to_circuit,
)
from qwthn_onnx.circuit import (
    Circuit,
    CircuitError,
    Gate,
    Param,
    expectation_values,
    hardware_efficient_circuit,
    paper_circuit,
)
from qwthn_onnx.circuit.qiskit_bridge import observables_to_qiskit, to_qiskit
from tests.circuit.helpers import random_circuit

SEEDS = range(6)


def z_only(circuit: Circuit) -> Circuit:
    """The same circuit with every X/Y of its observables turned into Z (exportable)."""
    table = str.maketrans("XY", "ZZ")
    return dataclasses.replace(
        circuit, observables=tuple(o.translate(table) for o in circuit.observables)
    )


def random_z_circuit(seed: int) -> Circuit:
    rng = random.Random(seed)
    return z_only(random_circuit(rng, rng.randint(2, 4), 30))


def rotation_circuit(name: str) -> Circuit:
    """A 2-qubit circuit around one rzz/rxx/ryy, on (1, 0) so that wire order matters."""
    gates = (
        Gate("ry", (0,), (Param.input(0),)),
        Gate("rx", (1,), (Param.const(0.3),)),
        Gate(name, (1, 0), (Param.weight(0),)),
        Gate("rz", (0,), (Param.weight(1),)),
    )
    return Circuit(2, gates, ("ZI", "IZ", "ZZ"), n_inputs=1, n_weights=2)


def circuits() -> list[Circuit]:
    return [
        paper_circuit(4, 2),
        hardware_efficient_circuit(3, 2),
        *(rotation_circuit(name) for name in ("rzz", "rxx", "ryy")),
        *(random_z_circuit(seed) for seed in SEEDS),
    ]


def values(circuit: Circuit, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-3, 3, circuit.n_inputs), rng.uniform(-3, 3, circuit.n_weights)


def reference(circuit: Circuit, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    out = expectation_values(circuit, torch.tensor(x[None]), torch.tensor(w))
    return out[0].numpy()


def qiskit_expectations(qc: qiskit.QuantumCircuit, circuit: Circuit) -> np.ndarray:
    state = Statevector(qc.remove_final_measurements(inplace=False))
    return np.array([state.expectation_value(op).real for op in observables_to_qiskit(circuit)])


def consts(circuit: Circuit, x: np.ndarray | None, w: np.ndarray | None) -> Circuit:
    """What a program with bound inputs (x) / literal weights (w) reads back as."""
    source = {"input": x, "weight": w}

    def fix(p: Param) -> Param:
        if p.kind == "const" or source[p.kind] is None:
            return p
        return Param.const(float(source[p.kind][p.value]))

    gates = tuple(Gate(g.name, g.wires, tuple(fix(p) for p in g.params)) for g in circuit.gates)
    return Circuit(
        circuit.n_qubits,
        gates,
        circuit.observables,
        0 if x is not None else circuit.n_inputs,
        0 if w is not None else circuit.n_weights,
    )


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("circuit", circuits(), ids=str)
def test_round_trip_is_identity_with_inputs_kept(circuit):
    _, w = values(circuit)
    for text in (circuit_to_qasm3(circuit), circuit_to_qasm3(circuit, w, weights_as_inputs=True)):
        assert qasm3_to_circuit(text) == circuit
        sizes = {"n_inputs": circuit.n_inputs, "n_weights": circuit.n_weights}
        assert qasm3_to_circuit(text, **sizes) == circuit


@pytest.mark.parametrize("circuit", circuits(), ids=str)
def test_literal_values_come_back_as_constants(circuit):
    x, w = values(circuit, seed=1)
    w = w.astype(np.float32)  # float32-derived values must survive exactly too
    assert qasm3_to_circuit(circuit_to_qasm3(circuit, w)) == consts(circuit, None, w)
    bound = circuit_to_qasm3(circuit, w, inputs=x)
    assert qasm3_to_circuit(bound, n_inputs=0, n_weights=0) == consts(circuit, x, w)


def test_random_circuits_with_x_or_y_observables_are_refused():
    refused = 0
    for seed in SEEDS:
        circuit = random_circuit(random.Random(seed), 3, 10)
        xy = [o for o in circuit.observables if set(o) & set("XY")]
        if not xy:
            continue
        refused += 1
        with pytest.raises(CircuitError, match=re.escape(repr(xy[0]))):
            circuit_to_qasm3(circuit)
    assert refused > 0


# --------------------------------------------------------------------------------------------
# Other parsers and simulation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("circuit", circuits(), ids=str)
def test_bound_program_matches_simulator_in_qiskit(circuit):
    x, w = values(circuit, seed=2)
    text = circuit_to_qasm3(circuit, w, inputs=x, layer="model.layers.0.mlp.down_proj")
    openqasm3.parse(text)
    qc = qiskit.qasm3.loads(text)
    assert not qc.parameters
    np.testing.assert_allclose(
        qiskit_expectations(qc, circuit), reference(circuit, x, w), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("circuit", circuits(), ids=str)
def test_unbound_program_binds_by_name_in_qiskit(circuit):
    x, w = values(circuit, seed=3)
    text = circuit_to_qasm3(circuit)
    openqasm3.parse(text)
    qc = qiskit.qasm3.loads(text)
    by_name = {parameter_name("input", i): v for i, v in enumerate(x)}
    by_name |= {parameter_name("weight", j): v for j, v in enumerate(w)}
    qc = qc.assign_parameters({p: by_name[p.name] for p in qc.parameters})
    np.testing.assert_allclose(
        qiskit_expectations(qc, circuit), reference(circuit, x, w), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("name", ["rzz", "rxx", "ryy"])
def test_rotation_definitions_match_qiskit_gates(name):
    gate = Circuit(2, (Gate(name, (1, 0), (Param.weight(0),)),), ("ZZ",), 0, 1)
    text = circuit_to_qasm3(gate, [0.37])
    assert f"gate {name}(theta) a, b {{" in text
    exported = qiskit.qasm3.loads(text).remove_final_measurements(inplace=False)
    np.testing.assert_allclose(
        Operator(exported).data, Operator(to_qiskit(gate, [], [0.37])).data, rtol=0, atol=1e-12
    )
    assert qasm3_to_circuit(circuit_to_qasm3(gate)) == gate


EXACT = [
    float(np.float32(0.7)),
    1 / 3,
    -2.5e-17,
    0.1,
    -1e-300,
    5e-324,
    1e22,
    -1.7976931348623157e308,
    math.pi / 2,
]


def test_floats_survive_text_exactly():
    gates = tuple(Gate("rz", (0,), (Param.const(v),)) for v in EXACT)
    gates += (Gate("ry", (1,), (Param.weight(0),)), Gate("rx", (1,), (Param.input(0),)))
    circuit = Circuit(2, gates, ("ZI",), n_inputs=1, n_weights=1)
    w, x = [float(np.float32(-0.7))], [1 / 7]
    text = circuit_to_qasm3(circuit, w, inputs=x)
    assert "pi" not in text.split("bit[2] c;")[1]  # never printed as a multiple of pi
    back = [g.params[0].value for g in qasm3_to_circuit(text).gates]
    assert back == [*EXACT, *w, *x]
    loaded = [float(i.operation.params[0]) for i in qiskit.qasm3.loads(text).data[: len(back)]]
    assert loaded == back


def test_negative_zero_keeps_its_sign():
    circuit = Circuit(1, (Gate("rz", (0,), (Param.const(-0.0),)),), ("Z",), 0, 0)
    (gate,) = qasm3_to_circuit(circuit_to_qasm3(circuit)).gates
    assert math.copysign(1.0, gate.params[0].value) == -1.0


# --------------------------------------------------------------------------------------------
# Program layout and name map
# --------------------------------------------------------------------------------------------


def declarations(text: str) -> list[str]:
    return re.findall(r"^input float\[64\] (\w+);$", text, flags=re.MULTILINE)


def test_name_map_and_layout():
    circuit = paper_circuit(4, 1)
    # the qiskit dialect's layout (the default's: tests/exporters/test_qasm_dialects.py)
    text = circuit_to_qasm3(circuit, layer="model.layers.3.self_attn.q_proj", dialect="qiskit")
    assert text.index("//") < text.index("OPENQASM 3.0;") < text.index('include "stdgates.inc";')
    assert "layer: 'model.layers.3.self_attn.q_proj'" in text
    assert "<Z_i> = P(c[i]=0) - P(c[i]=1)" in text
    for line in ("qubit[4] q;", "bit[4] c;", "ry(x_0) q[0];", "crz(theta_4) q[3], q[0];"):
        assert f"\n{line}\n" in text
    assert "@qwthn.observables ZIII,IZII,IIZI,IIIZ\nc = measure q;\n" in text
    names = [f"x_{i}" for i in range(4)] + [f"theta_{j}" for j in range(circuit.n_weights)]
    assert declarations(text) == names
    w = np.arange(circuit.n_weights) / 10
    assert declarations(circuit_to_qasm3(circuit, w, weights_as_inputs=True)) == names
    assert declarations(circuit_to_qasm3(circuit, w)) == names[:4]
    bound = circuit_to_qasm3(circuit, w, inputs=[0.1, 0.2, 0.3, 0.4])
    assert declarations(bound) == []
    assert "\ninput " not in bound
    assert parameter_name("input", 3) == "x_3"
    assert parameter_name("weight", 12) == "theta_12"


def test_wrong_value_count_is_refused():
    circuit = paper_circuit(3, 1)
    with pytest.raises(CircuitError, match="got 2 weights values, the circuit has 12"):
        circuit_to_qasm3(circuit, [0.1, 0.2])
    with pytest.raises(CircuitError, match="got 1 inputs values, the circuit has 3"):
        circuit_to_qasm3(circuit, inputs=[0.1])
    with pytest.raises(CircuitError, match="finite"):
        circuit_to_qasm3(circuit, inputs=[0.1, math.nan, 0.3])


# --------------------------------------------------------------------------------------------
# Reading hand-written programs
# --------------------------------------------------------------------------------------------

HEADER = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


def test_hand_written_program_without_annotation():
    text = HEADER + (
        "input float[64] x_0;\nqubit[3] q;\nbit[3] c;\n"
        "ry(pi / 2) q[0];\nphase(-pi / 4) q[1];\nrz(2 * tau - 1) q[2];\nrx(x_0) q[1];\n"
        "barrier q;\nc[2] = measure q[2];\nc[0] = measure q[0];\n"
    )
    circuit = qasm3_to_circuit(text)
    assert circuit == Circuit(
        3,
        (
            Gate("ry", (0,), (Param.const(math.pi / 2),)),
            Gate("p", (1,), (Param.const(-math.pi / 4),)),
            Gate("rz", (2,), (Param.const(2 * math.tau - 1),)),
            Gate("rx", (1,), (Param.input(0),)),
        ),
        ("IIZ", "ZII"),
        n_inputs=1,
        n_weights=0,
    )


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("qubit[2] q;\nry(0.1 q[0];\n", "line 4, column 8"),
        ("qubit[2] q;\n  ry(0.1) q[0] $ ;\n", "line 4, column 16"),
        ("qubit[2] q;\nry(0.1) q[0]\n", "line 5, column 1: unexpected end of input"),
    ],
)
def test_syntax_error_reports_line_and_column(body, where):
    with pytest.raises(QasmError, match=re.escape(where)):
        qasm3_to_circuit(HEADER + body)


@pytest.mark.parametrize(
    "gate", ["u3(0.1, 0.2, 0.3) q[0];", "ccx q[0], q[1], q[2];", "rzz(0.1) q[0], q[1];"]
)
def test_unknown_gate_is_named(gate):
    name = gate.split("(")[0].split(" ")[0]
    text = HEADER + f"qubit[3] q;\n{gate}\n"
    with pytest.raises(QasmError, match=rf"line 4: unsupported gate '{name}'.*'crz'"):
        qasm3_to_circuit(text)


def test_other_gate_definitions_are_refused():
    text = HEADER + "gate rzz(theta) a, b {\n  cz a, b;\n}\nqubit[2] q;\nrzz(0.1) q[0], q[1];\n"
    with pytest.raises(QasmError, match="line 3: unsupported definition of gate 'rzz'"):
        qasm3_to_circuit(text)
    text = HEADER + "gate my(theta) a {\n  rz(theta) a;\n}\n"
    with pytest.raises(QasmError, match=r"gate 'my'.*Supported gates: .*'rx'"):
        qasm3_to_circuit(text)


def test_inputs_must_match_the_layer():
    text = circuit_to_qasm3(paper_circuit(3, 1))
    with pytest.raises(QasmError, match=r"expected \[.*'x_3', 'theta_0'.*found \['x_0', 'x_1'"):
        qasm3_to_circuit(text, n_inputs=4, n_weights=12)
    with pytest.raises(QasmError, match=r"expected \['x_0', 'x_1', 'x_2'\], found \[.*'theta_0'"):
        qasm3_to_circuit(text, n_inputs=3, n_weights=0)
    gap = HEADER + "input float[64] x_0;\ninput float[64] x_2;\nqubit[1] q;\nmeasure q[0];\n"
    with pytest.raises(QasmError, match=r"expected \['x_0', 'x_1'\], found \['x_0', 'x_2'\]"):
        qasm3_to_circuit(gap)
    with pytest.raises(QasmError, match="input 'alpha'"):
        qasm3_to_circuit(HEADER + "input float[64] alpha;\n")


def test_x_observable_is_refused():
    circuit = Circuit(2, (Gate("h", (0,)),), ("ZI", "XZ"), 0, 0)
    with pytest.raises(CircuitError, match=r"'XZ'.*only Z-basis observables"):
        circuit_to_qasm3(circuit)
    with pytest.raises(CircuitError, match="'XZ'"):
        circuit_to_qasm2(circuit, [], [])
    text = circuit_to_qasm3(dataclasses.replace(circuit, observables=("ZI",)))
    with pytest.raises(QasmError, match="'XZ' is not a Z/I"):
        qasm3_to_circuit(text.replace("observables ZI", "observables XZ"))


@pytest.mark.parametrize(
    ("statement", "name"),
    [
        ("reset q[0];", "QuantumReset"),
        ("if (c[0]) x q[1];", "BranchingStatement"),
        ("for int i in [0:1] { x q[0]; }", "ForInLoop"),
    ],
)
def test_unsupported_statement_is_named_with_its_line(statement, name):
    text = HEADER + f"qubit[2] q;\nbit[2] c;\n{statement}\n"
    with pytest.raises(QasmError, match=rf"line 5: unsupported statement .*\({name}\)"):
        qasm3_to_circuit(text)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("rx(0.1) q[0];\nc = measure q;\nx q[1];\n", "after a measurement"),
        ("input float[64] x_0;\nrx(2 * x_0) q[0];\n", "argument '2 \\* x_0' is not supported"),
        ("rx(0.1) q[2];\n", "qubit operand 'q\\[2\\]'"),
        ("cx q[1], q[1];\n", "repeated qubit"),
        ("rx q[0];\n", "rx takes 1 argument"),
        ("rx(0.1) q[0];\n", "measure at least one qubit"),
        ("@qwthn.observables IZ\nmeasure q[0];\n", "unmeasured: \\[1\\]"),
        ("rx(1 / (2 - 2)) q[0];\n", "cannot evaluate '1 / \\(2 - 2\\)': float division by zero"),
    ],
)
def test_invalid_circuits_are_refused(body, message):
    with pytest.raises(QasmError, match=message):
        qasm3_to_circuit(HEADER + "qubit[2] q;\nbit[2] c;\n" + body)


# --------------------------------------------------------------------------------------------
# OpenQASM 2
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("basis", [QASM2_BASIS, ("rz", "sx", "x", "cz")])
@pytest.mark.parametrize("circuit", circuits(), ids=str)
def test_qasm2_keeps_the_measured_distribution(circuit, basis):
    x, w = values(circuit, seed=4)
    text = circuit_to_qasm2(circuit, x, w, basis)
    assert text.startswith("OPENQASM 2.0;")
    # sx is in qiskit's qelib1.inc, not the original one: load with qiskit's legacy gate set
    lowered = qiskit.qasm2.loads(text, custom_instructions=qiskit.qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
    assert {i.operation.name for i in lowered.data} <= {*basis, "measure", "barrier"}
    assert lowered.count_ops()["measure"] == circuit.n_qubits
    expected = Statevector(to_qiskit(circuit, x, w)).probabilities()
    got = Statevector(lowered.remove_final_measurements(inplace=False)).probabilities()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


# Found by fuzzing (fuzz/python_targets.py "qasm"): an empty program crashed the openqasm3
# parser with an AttributeError, and a huge register made reading quadratic (a hang).
@pytest.mark.parametrize("text", ["", "   \n", "// nothing but a comment\n"])
def test_empty_program_is_refused(text):
    with pytest.raises(QasmError, match=r"found no statement to read \(is the program empty"):
        qasm3_to_circuit(text)


@pytest.mark.parametrize("size", [0, 30_000, 2**62])
def test_register_size_is_checked_before_use(size):
    with pytest.raises(QasmError, match=rf"qubit\[{size}\]: a circuit has 1\.\.20 qubits"):
        qasm3_to_circuit(HEADER + f"qubit[{size}] q;\nbit[1] c;\nc = measure q;\n")
