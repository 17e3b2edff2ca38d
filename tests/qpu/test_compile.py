"""Compiling a layer for a device, checked against the C++ kernel; an export's compile report."""

import argparse
import json

import numpy as np
import pytest
from qiskit.converters import circuit_to_dag, dag_to_circuit
from qiskit.quantum_info import SparsePauliOp, Statevector

from qwthn_onnx.circuit import Circuit, Gate, Param, paper_circuit
from qwthn_onnx.qpu.backend import ExactBackend, LayerCall, QPUError
from qwthn_onnx.qpu.compile import compile_layer
from qwthn_onnx.qpu.compile_cli import add_compile_command, compile_export, run_compile
from qwthn_onnx.qpu.devices import resolve_device


def _weights(circuit, seed=0):
    return np.random.default_rng(seed).uniform(-np.pi, np.pi, circuit.n_weights)


def _exact(circuit, weights, inputs):
    backend = ExactBackend()
    backend.prepare("layer", circuit, weights)
    return backend.run([LayerCall("layer", circuit, weights, inputs)])[0]


def _statevector_expectations(compiled, inputs):
    """qiskit's own Statevector on the compiled circuit, its idle device qubits dropped (they
    stay |0> and the observables are I there): independent of Aer and of our kernel."""
    keep = list(compiled.active_qubits)
    assert set(compiled.readout_qubits) <= set(keep)
    observables = [
        SparsePauliOp([p[keep] for p in op.paulis], op.coeffs) for op in compiled.observables
    ]
    for op in compiled.observables:  # nothing measured outside the kept qubits
        outside = np.delete(op.paulis.x | op.paulis.z, keep, axis=1)
        assert not outside.any()
    rows = []
    for values in compiled.parameter_values(inputs):
        bound = compiled.circuit.assign_parameters(
            dict(zip(compiled.circuit.parameters, values, strict=True))
        )
        dag = circuit_to_dag(bound)
        dag.remove_qubits(*[q for i, q in enumerate(dag.qubits) if i not in set(keep)])
        state = Statevector(dag_to_circuit(dag))
        rows.append([state.expectation_value(op).real for op in observables])
    return np.array(rows)


@pytest.mark.parametrize(
    "device", ["fake_torino", "fake_sherbrooke", "custom:basis=rz,sx,x,cz;coupling=line:6"]
)
def test_the_compiled_circuit_gives_the_kernel_expectations(device):
    circuit = paper_circuit(4, 2)
    weights = _weights(circuit)
    inputs = np.random.default_rng(1).uniform(-np.pi, np.pi, (4, 4))
    compiled = compile_layer("layer", circuit, weights, device)
    got = _statevector_expectations(compiled, inputs)
    np.testing.assert_allclose(got, _exact(circuit, weights, inputs), rtol=0, atol=1e-9)
    backend = resolve_device(device)
    names = {p.name for p in compiled.circuit.parameters}
    assert names == {f"x_{i}" for i in range(4)}  # the weights are bound, the inputs free
    assert set(compiled.report.gate_counts) <= set(backend.operation_names)
    assert compiled.circuit.num_qubits == backend.num_qubits


def test_inputs_bind_by_name_not_by_position():
    """qiskit sorts parameters by name: x_10 and x_11 come before x_2."""
    circuit = paper_circuit(12, 1)
    weights = _weights(circuit, 2)
    inputs = np.random.default_rng(3).uniform(-np.pi, np.pi, (3, 12))
    compiled = compile_layer("layer", circuit, weights, "fake_torino")
    names = [p.name for p in compiled.circuit.parameters]
    assert names[:4] == ["x_0", "x_1", "x_10", "x_11"] and names[4] == "x_2"
    assert compiled.input_order == (0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9)
    np.testing.assert_array_equal(compiled.parameter_values(inputs)[:, 2], inputs[:, 10])
    exact = _exact(circuit, weights, inputs)
    np.testing.assert_allclose(_statevector_expectations(compiled, inputs), exact, atol=1e-9)
    # binding by position would compute another function of the inputs
    positional = _statevector_expectations(
        compiled.__class__(**{**compiled.__dict__, "input_order": tuple(range(12))}), inputs
    )
    assert np.abs(positional - exact).max() > 1e-3


def _gates(qc):
    return [(i.operation.name, [qc.find_bit(q).index for q in i.qubits]) for i in qc.data]


def test_the_report_on_fake_torino():
    device = resolve_device("fake_torino")
    circuit = paper_circuit(4, 2)
    compiled = compile_layer("q_proj", circuit, _weights(circuit), device)
    report, isa = compiled.report, compiled.circuit
    assert report.layer == "q_proj" and report.n_qubits == 4 and report.parameters == 4
    assert len(set(report.physical_qubits)) == 4
    assert set(report.physical_qubits) <= set(compiled.active_qubits)
    assert set(compiled.readout_qubits) <= set(compiled.active_qubits)
    assert report.gate_counts == dict(isa.count_ops()) and set(report.gate_counts) <= {
        "rz",
        "sx",
        "x",
        "cz",
    }
    # 16 CRZ need at least 32 CZ; routing the rings onto heavy-hex adds SWAPs (3 CZ each)
    assert report.two_qubit_gates == report.gate_counts["cz"] >= 32
    assert report.depth == isa.depth()
    assert report.duration_s == pytest.approx(isa.estimate_duration(device.target, unit="s"))
    assert 1e-6 < report.duration_s < 1e-4
    measure = device.target["measure"]
    assert compiled.readout_s == max(measure[(q,)].duration for q in compiled.readout_qubits)
    # the transpiler seed fixes layout and routing
    again = compile_layer("q_proj", circuit, _weights(circuit), device)
    assert again.report == report and _gates(again.circuit) == _gates(isa)


def test_optimization_levels_and_the_logical_circuit():
    circuit = paper_circuit(4, 2)
    weights = _weights(circuit)
    levels = [
        compile_layer("l", circuit, weights, "fake_torino", optimization_level=k) for k in range(4)
    ]
    assert levels[0].report.two_qubit_gates > levels[2].report.two_qubit_gates
    logical = compile_layer("l", circuit, weights, None)
    assert logical.report.physical_qubits == () and logical.report.duration_s is None
    assert logical.report.gate_counts == {"ry": 20, "crz": 16} and logical.readout_s is None
    inputs = np.random.default_rng(5).uniform(-np.pi, np.pi, (2, 4))
    np.testing.assert_allclose(
        _statevector_expectations(logical, inputs), _exact(circuit, weights, inputs), atol=1e-9
    )


def test_durations_are_none_when_the_device_has_none():
    circuit = paper_circuit(3, 1)
    ideal = compile_layer("l", circuit, _weights(circuit), "custom:coupling=ring:3")
    assert ideal.report.duration_s is None and ideal.readout_s is None
    timed = compile_layer(
        "l",
        circuit,
        _weights(circuit),
        "custom:coupling=ring:3;duration_1q=1e-8;duration_2q=1e-7;duration_readout=1e-6",
    )
    assert timed.readout_s == 1e-6
    cx, sx = timed.report.gate_counts["cx"], timed.report.gate_counts.get("sx", 0)
    assert 1e-7 <= timed.report.duration_s <= cx * 1e-7 + sx * 1e-8 + 1e-12


def test_refusals():
    circuit = paper_circuit(4, 1)
    weights = _weights(circuit)
    with pytest.raises(QPUError, match="has 3"):
        compile_layer("l", circuit, weights, "custom:coupling=line:3")
    with pytest.raises(QPUError, match="optimization_level must be 0, 1, 2 or 3"):
        compile_layer("l", circuit, weights, "fake_torino", optimization_level=4)
    with pytest.raises(QPUError, match=r"has 16 weights, got an array of shape \[15\]"):
        compile_layer("l", circuit, weights[:-1], None)
    with pytest.raises(QPUError, match="NaN"):
        compile_layer("l", circuit, np.full_like(weights, np.nan), None)
    compiled = compile_layer("l", circuit, weights, None)
    with pytest.raises(QPUError, match=r"shape \[N, 4\], got \[2, 3\]"):
        compiled.parameter_values(np.zeros((2, 3)))
    with pytest.raises(QPUError, match="NaN or infinity"):
        compiled.parameter_values(np.full((1, 4), np.inf))


def test_a_circuit_with_an_unused_input_binds_the_others():
    circuit = Circuit(
        2,
        (
            Gate("ry", (0,), (Param.input(1),)),
            Gate("cx", (0, 1)),
            Gate("rx", (1,), (Param.weight(0),)),
        ),
        ("ZI", "IZ"),
        n_inputs=3,
        n_weights=1,
    )
    compiled = compile_layer("l", circuit, np.array([0.4]), "fake_torino")
    assert compiled.input_order == (1,)
    inputs = np.random.default_rng(0).uniform(-np.pi, np.pi, (3, 3))
    np.testing.assert_allclose(
        _statevector_expectations(compiled, inputs),
        _exact(circuit, np.array([0.4]), inputs),
        atol=1e-9,
    )


# --- the compile report of an export ----------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser(prog="qwthn-qasm")
    add_compile_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_compile_export_reports_every_layer_with_its_trained_weights(exported):
    _, result, model = exported("llama")
    reports = compile_export(result.directory, "fake_torino")
    layers = model.adapter_layers()
    assert sorted(r.layer for r in reports) == sorted(layers) == sorted(result.adapted_layers)
    for report in reports:
        assert report.n_qubits == 3 and len(report.physical_qubits) == 3
        assert report.two_qubit_gates > 0 and report.duration_s > 0
    # the weights come from the export: the compiled layers compute the trained model's QNNs
    from qwthn_onnx.qpu.compile_cli import compile_model

    compiled = compile_model(result.directory / "model.onnx", "fake_torino", optimization_level=2)
    inputs = np.random.default_rng(0).uniform(-np.pi, np.pi, (2, 3))
    for c in compiled:
        qnn = layers[c.layer].qwthn.qnn
        weights = qnn.weights.detach().double().numpy()
        np.testing.assert_allclose(
            _statevector_expectations(c, inputs), _exact(qnn.circuit, weights, inputs), atol=1e-6
        )


def test_run_compile_prints_the_table_and_writes_json(exported, tmp_path, capsys):
    _, result, _ = exported("llama")
    out = tmp_path / "report.json"
    args = _parse(["compile", str(result.directory), "--device", "fake_torino", "--json", str(out)])
    assert run_compile(args) == 0
    text = capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["device"] == "fake_torino" and document["optimization_level"] == 1
    layers = document["layers"]
    assert len(layers) == len(result.adapted_layers)
    for layer in layers:
        assert layer["layer"] in text and layer["readout_s"] > 0
        assert sum(layer["gate_counts"].values()) >= layer["two_qubit_gates"] > 0
    totals = document["totals"]
    assert totals["two_qubit_gates"] == sum(layer["two_qubit_gates"] for layer in layers)
    assert totals["duration_s"] == pytest.approx(sum(layer["duration_s"] for layer in layers))
    assert f"total ({len(layers)} layers" in text and "2q gates" in text


def test_run_compile_refuses_bad_input(exported, tmp_path, capsys):
    _, result, _ = exported("llama")
    cases = [
        (["compile", str(tmp_path / "missing"), "--device", "fake_torino"], "no such file"),
        (["compile", str(result.directory), "--device", "fake_nowhere"], "unknown device"),
        (["compile", str(result.directory), "--device", "custom:coupling=line:2"], "has 2"),
    ]
    for argv, message in cases:
        assert run_compile(_parse(argv)) == 2
        assert message in capsys.readouterr().err
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not a model")
    assert run_compile(_parse(["compile", str(broken), "--device", "fake_torino"])) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(
            [
                "compile",
                str(result.directory),
                "--device",
                "fake_torino",
                "--optimization-level",
                "5",
            ]
        )


def test_qwthn_qasm_compile_is_a_subcommand(exported, capsys):
    from exporters.cli import qasm_main

    _, result, _ = exported("llama")
    assert qasm_main(["compile", str(result.directory), "--device", "fake_sherbrooke"]) == 0
    out = capsys.readouterr().out
    assert "fake_sherbrooke" in out and "ecr" in out  # Sherbrooke's two-qubit gate
    assert qasm_main(["compile", str(result.directory), "--device", "fake_mars"]) == 2
    assert "unknown device 'fake_mars'" in capsys.readouterr().err


def test_qwthn_qasm_compile_names_the_missing_extra(exported, monkeypatch, capsys):
    import sys

    from exporters.cli import qasm_main
    from qwthn_onnx.qpu import devices

    _, result, _ = exported("llama")
    devices._fake_backends.cache_clear()
    monkeypatch.setitem(sys.modules, "qiskit_ibm_runtime", None)  # as if not installed
    try:
        assert qasm_main(["compile", str(result.directory), "--device", "fake_torino"]) == 2
    finally:
        devices._fake_backends.cache_clear()
    assert "pip install 'qwthn-onnx[qpu]'" in capsys.readouterr().err
