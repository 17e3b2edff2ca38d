"""OpenQASM 3 dialects (exporters.qasm ``dialect=``) run in the real tools they claim.

Every dialect is run, exactly, in each tool it is written for, on programs covering every gate
of the IR: qiskit (``qiskit.qasm3.loads`` + ``Statevector``), Amazon Braket's LocalSimulator and
PennyLane's ``qml.from_qasm3`` on ``default.qubit``. ``portable``, the default, must run in all
three, and so must the programs ``qwthn-export`` writes.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import qiskit.qasm3
import torch
from qiskit.quantum_info import Statevector

from exporters import ExportOptions
from exporters.cli import build_export_parser, export_main, qasm_main
from exporters.crosscheck import bind_weights
from exporters.export import ExportError
from exporters.qasm import (
    DEFAULT_DIALECT,
    DIALECTS,
    QasmError,
    circuit_to_qasm3,
    parameter_name,
    qasm3_to_circuit,
)
from qwthn_onnx.circuit import (
    GATES,
    Circuit,
    Gate,
    Param,
    expectation_values,
    hardware_efficient_circuit,
    paper_circuit,
)
from qwthn_onnx.circuit.qiskit_bridge import to_qiskit
from tests.exporters.conftest import make_model_pt
from tests.exporters.test_qasm import consts, random_z_circuit, rotation_circuit

# imported once for the module (each takes seconds)
qml = pytest.importorskip("pennylane", reason="PennyLane runs the pennylane/portable dialects")
braket_devices = pytest.importorskip("braket.devices", reason="Braket runs braket/portable")
from braket.ir.openqasm import Program  # noqa: E402

TOOLS = {
    "portable": ("qiskit", "braket", "pennylane"),
    "qiskit": ("qiskit",),
    "braket": ("braket",),
    "pennylane": ("pennylane",),
}
CLAIMS = [(dialect, tool) for dialect, tools in TOOLS.items() for tool in tools]
PROMPT = "12+7="


def every_gate_circuit() -> Circuit:
    """Every IR gate, two-qubit ones both ways round and on all pairs, with input, weight and
    constant angles, between two layers that spread the state (so any phase error shows in the
    measured distribution)."""
    n = 3
    gates = [Gate("h", (q,)) for q in range(n)]
    gates += [Gate("ry", (q,), (Param.weight(q),)) for q in range(n)]
    sources = [Param.input(0), Param.weight(3), Param.const(-0.83), Param.input(1)]
    for reverse in (False, True):
        for k, (name, spec) in enumerate(GATES.items()):
            a, b = k % n, (k + 1) % n
            wires = ((b, a) if reverse else (a, b))[: spec.n_qubits]
            params = tuple(sources[(k + j + reverse) % len(sources)] for j in range(spec.n_params))
            gates.append(Gate(name, wires, params))
    gates += [Gate("rx", (q,), (Param.input(q % 2),)) for q in range(n)]
    gates += [Gate("ry", (q,), (Param.const(0.4 + q),)) for q in range(n)]
    return Circuit(n, tuple(gates), ("ZII", "IZI", "IIZ", "ZZI", "ZIZ", "ZZZ"), 2, 4)


def circuits() -> list[Circuit]:
    return [every_gate_circuit(), paper_circuit(4, 2)]


def values(circuit: Circuit, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-3, 3, circuit.n_inputs), rng.uniform(-3, 3, circuit.n_weights)


def reference(circuit: Circuit, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, little-endian: bit i of the index is qubit i; Z expectations)."""
    probabilities = Statevector(to_qiskit(circuit, x, w)).probabilities()
    expectations = expectation_values(circuit, torch.tensor(x[None]), torch.tensor(w))[0]
    return probabilities, expectations.numpy()


def z_expectations(probabilities: np.ndarray, circuit: Circuit) -> np.ndarray:
    index = np.arange(len(probabilities))
    out = []
    for obs in circuit.observables:
        parity = sum((index >> q) & 1 for q, c in enumerate(obs) if c == "Z") % 2
        out.append(probabilities @ (1 - 2 * parity))
    return np.asarray(out)


def little_endian(big_endian: np.ndarray, n: int) -> np.ndarray:
    """Probabilities with qubit 0 the most significant bit (Braket, PennyLane) -> ours."""
    return np.asarray(big_endian).reshape([2] * n).transpose(list(range(n))[::-1]).reshape(-1)


def qubit_names(text: str, n: int) -> list[str]:
    """How the program names its qubits: q[i] (a register) or q<i> (one declaration each)."""
    register = re.search(r"^qubit\[\d+\] q;$", text, flags=re.MULTILINE)
    return [f"q[{i}]" if register else f"q{i}" for i in range(n)]


def run_qiskit(text: str, n: int, inputs: dict[str, float]) -> np.ndarray:
    program = qiskit.qasm3.loads(text).remove_final_measurements(inplace=False)
    by_name = {p.name: p for p in program.parameters}
    assert sorted(by_name) == sorted(inputs)
    bound = program.assign_parameters({by_name[k]: v for k, v in inputs.items()})
    return Statevector(bound).probabilities()


def run_braket(text: str, n: int, inputs: dict[str, float]) -> np.ndarray:
    """Exact probabilities: Braket runs a measuring program only with shots, so the final
    annotated measurement is replaced by a probability result type."""
    body, annotation, _ = text.rpartition("\n@qwthn.observables ")
    assert annotation
    source = f"{body}\n#pragma braket result probability {', '.join(qubit_names(text, n))}\n"
    result = braket_devices.LocalSimulator().run(Program(source=source, inputs=inputs), shots=0)
    return little_endian(result.result().values[0], n)


def run_pennylane(text: str, n: int, inputs: dict[str, float]) -> np.ndarray:
    """``input float`` declarations are keyword arguments of the callable from_qasm3 returns."""
    wires = qubit_names(text, n)

    @qml.qnode(qml.device("default.qubit"))
    def probabilities():
        qml.from_qasm3(text)(**inputs)
        return qml.probs(wires=wires)

    return little_endian(probabilities(), n)


RUN = {"qiskit": run_qiskit, "braket": run_braket, "pennylane": run_pennylane}


def assert_runs_exactly(tool, text, circuit, x, w, inputs):
    probabilities, expectations = reference(circuit, x, w)
    got = RUN[tool](text, circuit.n_qubits, inputs)
    np.testing.assert_allclose(got, probabilities, rtol=0, atol=1e-9)
    np.testing.assert_allclose(z_expectations(got, circuit), expectations, rtol=0, atol=1e-9)


def test_the_coverage_circuit_has_every_gate_both_ways():
    circuit = every_gate_circuit()
    assert {g.name for g in circuit.gates} == set(GATES)
    for name, spec in GATES.items():
        if spec.n_qubits == 2:
            wires = {g.wires for g in circuit.gates if g.name == name}
            assert any(a < b for a, b in wires) and any(a > b for a, b in wires), name


# --------------------------------------------------------------------------------------------
# Each dialect in each tool it claims
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("circuit", circuits(), ids=str)
@pytest.mark.parametrize(("dialect", "tool"), CLAIMS)
def test_inputs_bound_at_run_time(dialect, tool, circuit):
    x, w = values(circuit, seed=1)
    text = circuit_to_qasm3(circuit, w, dialect=dialect)
    inputs = {parameter_name("input", i): float(v) for i, v in enumerate(x)}
    assert_runs_exactly(tool, text, circuit, x, w, inputs)


@pytest.mark.parametrize(("dialect", "tool"), CLAIMS)
def test_weights_as_inputs_bound_at_run_time(dialect, tool):
    circuit = every_gate_circuit()
    x, w = values(circuit, seed=2)
    text = circuit_to_qasm3(circuit, w, weights_as_inputs=True, dialect=dialect)
    inputs = {parameter_name("input", i): float(v) for i, v in enumerate(x)}
    inputs |= {parameter_name("weight", j): float(v) for j, v in enumerate(w)}
    assert_runs_exactly(tool, text, circuit, x, w, inputs)


@pytest.mark.parametrize(("dialect", "tool"), CLAIMS)
def test_bound_programs(dialect, tool):
    circuit = every_gate_circuit()
    x, w = values(circuit, seed=3)
    text = circuit_to_qasm3(circuit, w, inputs=x, dialect=dialect)
    assert "\ninput " not in text
    assert_runs_exactly(tool, text, circuit, x, w, {})


def test_braket_runs_the_portable_program_as_written_with_shots():
    """The measuring program itself (not the probability form of the exact tests)."""
    circuit = paper_circuit(4, 2)
    x, w = values(circuit, seed=4)
    text = circuit_to_qasm3(circuit, w, inputs=x)
    shots = 4000
    result = braket_devices.LocalSimulator().run(Program(source=text), shots=shots).result()
    assert result.measured_qubits == [0, 1, 2, 3]
    frequencies = np.zeros(2**4)
    for bits, count in result.measurement_counts.items():
        frequencies[int(bits[::-1], 2)] = count / shots  # bits[i] is qubit i
    _, expected = reference(circuit, x, w)
    stderr = np.maximum(np.sqrt((1 - expected**2) / shots), 1 / shots)
    assert (np.abs(z_expectations(frequencies, circuit) - expected) <= 5 * stderr).all()


# --------------------------------------------------------------------------------------------
# Read-back and layout
# --------------------------------------------------------------------------------------------


def round_trip_circuits() -> list[Circuit]:
    return [
        every_gate_circuit(),
        paper_circuit(4, 2),
        hardware_efficient_circuit(3, 2),
        *(rotation_circuit(name) for name in ("rzz", "rxx", "ryy")),
        *(random_z_circuit(seed) for seed in range(3)),
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("circuit", round_trip_circuits(), ids=str)
def test_every_dialect_reads_back(dialect, circuit):
    x, w = values(circuit, seed=5)
    assert qasm3_to_circuit(circuit_to_qasm3(circuit, dialect=dialect)) == circuit
    literal = circuit_to_qasm3(circuit, w, dialect=dialect)
    assert qasm3_to_circuit(literal, n_weights=0) == consts(circuit, None, w)
    bound = circuit_to_qasm3(circuit, w, inputs=x, dialect=dialect)
    assert qasm3_to_circuit(bound, n_inputs=0, n_weights=0) == consts(circuit, x, w)


def definitions(text: str) -> list[str]:
    return re.findall(r"^gate (\w+)", text, flags=re.MULTILINE)


def test_portable_layout():
    circuit = paper_circuit(4, 1)  # ry and crz
    text = circuit_to_qasm3(circuit, layer="model.layers.0.mlp.up_proj")
    assert text == circuit_to_qasm3(circuit, layer="model.layers.0.mlp.up_proj", dialect="portable")
    program = text.split("OPENQASM 3.0;\n")[1]
    assert DEFAULT_DIALECT == "portable" and "include" not in program
    assert "// OpenQASM dialect: portable" in text
    assert "qiskit 2.6" in text and "Braket LocalSimulator" in text and "PennyLane 0.45" in text
    assert definitions(text) == ["ry", "crz"]  # only what the program uses
    assert "qubit i -> qi (q0, ...)" in text
    for line in ("qubit q0;", "qubit q3;", "bit[4] c;", "ry(x_0) q0;", "crz(theta_4) q3, q0;"):
        assert f"\n{line}\n" in program
    assert program.endswith(
        "@qwthn.observables ZIII,IZII,IIZI,IIIZ\nc[0] = measure q0;\nc[1] = measure q1;\n"
        "c[2] = measure q2;\nc[3] = measure q3;\n"
    )


def test_definitions_come_with_what_they_call_first():
    circuit = rotation_circuit("rxx")  # rxx calls h, cx and rz
    assert definitions(circuit_to_qasm3(circuit)) == ["h", "rx", "ry", "rz", "cx", "rxx"]
    assert definitions(circuit_to_qasm3(circuit, dialect="pennylane")) == ["rxx"]
    assert definitions(circuit_to_qasm3(circuit, dialect="qiskit")) == ["rxx"]
    text = circuit_to_qasm3(circuit, dialect="braket")
    assert definitions(text) == [] and "\nxx(theta_0) q[1], q[0];\n" in text


def test_braket_dialect_uses_braket_gate_names():
    text = circuit_to_qasm3(every_gate_circuit(), dialect="braket")
    used = set(re.findall(r"^(\w+)(?:\(.*\))? q\[", text, flags=re.MULTILINE))
    braket = {"cnot", "si", "ti", "phaseshift", "cphaseshift", "xx", "yy", "zz"}
    assert braket <= used and not used & {"cx", "sdg", "tdg", "p", "cp", "rxx", "ryy", "rzz"}
    assert definitions(text) == ["crx", "cry", "crz"]  # Braket has no controlled rotations


def test_unknown_dialect_is_refused():
    with pytest.raises(ValueError, match=r"unknown OpenQASM dialect 'cirq'; choose one of porta"):
        circuit_to_qasm3(paper_circuit(2, 1), dialect="cirq")
    with pytest.raises(ExportError, match="unknown OpenQASM dialect 'ibm'"):
        ExportOptions(qasm_dialect="ibm").validate()


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ("qubit q0;\nqubit[2] r;\n", "line 3: declare exactly one qubit register"),
        ("qubit[2] q;\nqubit r;\n", "line 3: declare exactly one qubit register"),
        ("qubit q0;\nqubit q0;\n", "line 3: declare exactly one qubit register"),
        ("qubit q0;\nqubit q1;\nx q[1];\n", r"'q\[1\]' must be one of the declared qubits q0, q1"),
        ("gate x a {\n  U(pi, 0, 0) a;\n}\n", "line 2: unsupported definition of gate 'x'"),
    ],
)
def test_reader_refuses_mixed_or_unknown_forms(program, message):
    with pytest.raises(QasmError, match=message):
        qasm3_to_circuit("OPENQASM 3.0;\n" + program)


def test_reader_takes_braket_names_and_single_qubits():
    text = (
        "OPENQASM 3.0;\nqubit a;\nqubit b;\nbit[2] c;\ncnot b, a;\nsi a;\nphaseshift(0.5) b;\n"
        "zz(0.25) a, b;\nc[0] = measure a;\nc[1] = measure b;\n"
    )
    assert qasm3_to_circuit(text) == Circuit(
        2,
        (
            Gate("cx", (1, 0)),
            Gate("sdg", (0,)),
            Gate("p", (1,), (Param.const(0.5),)),
            Gate("rzz", (0, 1), (Param.const(0.25),)),
        ),
        ("ZI", "IZ"),
        0,
        0,
    )


# --------------------------------------------------------------------------------------------
# What qwthn-export and qwthn-qasm job write
# --------------------------------------------------------------------------------------------


def test_exported_programs_run_in_all_three_tools(exported):
    _, result, model = exported("llama")
    index = json.loads((result.directory / "qasm" / "index.json").read_text())
    assert index["dialect"] == DEFAULT_DIALECT == "portable"
    rng = np.random.default_rng(6)
    for name, layer in model.adapter_layers().items():
        text = (result.directory / "qasm" / index["layers"][name]["file"]).read_text()
        circuit = layer.qwthn.qnn.circuit
        weights = layer.qwthn.qnn.weights.detach().double().numpy()
        x = rng.uniform(-np.pi, np.pi, circuit.n_inputs)
        inputs = {parameter_name("input", i): float(v) for i, v in enumerate(x)}
        assert qasm3_to_circuit(text, n_inputs=circuit.n_inputs) == bind_weights(circuit, weights)
        for tool in TOOLS["portable"]:
            assert_runs_exactly(tool, text, circuit, x, weights, inputs)


def test_cli_dialect_options(exported, tmp_path):
    assert build_export_parser().parse_args(["m.pt"]).qasm_dialect == "portable"
    path, model = make_model_pt(tmp_path / "model.pt")
    out = tmp_path / "out"
    argv = [str(path), "-o", str(out), "--no-verify", "--qasm-dialect", "braket", "-q"]
    assert export_main(argv) == 0
    index = json.loads((out / "qasm" / "index.json").read_text())
    assert index["dialect"] == "braket"
    name, layer = next(iter(model.adapter_layers().items()))
    text = (out / "qasm" / index["layers"][name]["file"]).read_text()
    assert "// OpenQASM dialect: braket" in text
    circuit = layer.qwthn.qnn.circuit
    weights = layer.qwthn.qnn.weights.detach().double().numpy()
    x = np.linspace(-1, 1, circuit.n_inputs)
    inputs = {parameter_name("input", i): float(v) for i, v in enumerate(x)}
    assert_runs_exactly("braket", text, circuit, x, weights, inputs)

    _, result, _ = exported("llama")
    job = tmp_path / "job"
    argv = ["job", str(result.directory), "-p", PROMPT, "-o", str(job), "--dialect", "pennylane"]
    assert qasm_main(argv) == 0
    index = json.loads((job / "job.json").read_text())
    assert index["dialect"] == "pennylane"
    entry = index["programs"][-1]
    text = (job / entry["file"]).read_text()
    circuit = qasm3_to_circuit(text)
    got = z_expectations(run_pennylane(text, circuit.n_qubits, {}), circuit)
    np.testing.assert_allclose(got, entry["expected"], rtol=0, atol=1e-6)  # the float32 kernel
