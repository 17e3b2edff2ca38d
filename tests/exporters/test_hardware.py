"""OpenQASM 3 in the export directory, the QPU job of a prompt, and qwthn-verify."""

import json

import numpy as np
import onnx
import openqasm3
import pytest
from qiskit import qasm2, qasm3
from qiskit.quantum_info import Statevector

from exporters import ExportOptions, export_model
from exporters.cli import qasm_main, verify_main
from exporters.crosscheck import bind_weights, crosscheck
from exporters.hardware import capture_quantum_calls, run_job, write_job
from exporters.qasm import qasm3_to_circuit
from qwthn_onnx.circuit.qiskit_bridge import observables_to_qiskit
from qwthn_onnx.runtime.session import QWTHNSession
from tests.exporters.conftest import make_model_pt

PROMPT = "23&58="


@pytest.fixture(scope="module")
def job(exported, tmp_path_factory):
    _, result, model = exported("llama")
    directory = tmp_path_factory.mktemp("job") / "job"
    index = write_job(result.directory, PROMPT, directory, qasm2=True)
    return result.directory, directory, index, model


def _exact(text, circuit):
    program = qasm3.loads(text)
    program.remove_final_measurements()
    state = Statevector(program)
    return np.array([state.expectation_value(o).real for o in observables_to_qiskit(circuit)])


def test_export_writes_one_program_per_layer_with_the_trained_weights(exported):
    _, result, model = exported("llama")
    index = json.loads((result.directory / "qasm" / "index.json").read_text())
    assert sorted(index["layers"]) == sorted(model.adapted_modules)
    for name, layer in model.adapter_layers().items():
        text = (result.directory / "qasm" / index["layers"][name]["file"]).read_text()
        openqasm3.parse(text)
        assert qasm3.loads(text).num_qubits == layer.qwthn.qnn.circuit.n_qubits
        weights = layer.qwthn.qnn.weights.detach().double().numpy()
        circuit = layer.qwthn.qnn.circuit
        assert qasm3_to_circuit(text, n_inputs=circuit.n_inputs) == bind_weights(circuit, weights)
        assert f"layer: '{name}'" in text and "input float[64] x_0;" in text
    manifest = json.loads((result.directory / "manifest.json").read_text())
    assert "qasm/index.json" in manifest["files"]


def test_weights_as_inputs_reads_back_to_the_same_circuit(tmp_path):
    path, model = make_model_pt(tmp_path / "model.pt")
    out = tmp_path / "out"
    export_model(path, out, ExportOptions(verify=False, qasm_weights_as_inputs=True))
    index = json.loads((out / "qasm" / "index.json").read_text())
    for name, layer in model.adapter_layers().items():
        circuit = layer.qwthn.qnn.circuit
        text = (out / "qasm" / f"{name}.qasm").read_text()
        assert "input float[64] theta_0;" in text
        read = qasm3_to_circuit(text, n_inputs=circuit.n_inputs, n_weights=circuit.n_weights)
        assert read == circuit
        values = index["layers"][name]["weights"]
        assert [values[f"theta_{j}"] for j in range(circuit.n_weights)] == [
            float(w) for w in layer.qwthn.qnn.weights.detach()
        ]


def test_no_qasm_option_writes_none(tmp_path):
    path, _ = make_model_pt(tmp_path / "model.pt")
    export_model(path, tmp_path / "out", ExportOptions(verify=False, qasm=False))
    assert not (tmp_path / "out" / "qasm").exists()


def test_captured_angles_are_those_the_model_feeds_its_circuits(exported):
    """The angles read out of the ONNX graph equal the PyTorch model's QNN inputs."""
    import torch

    _, result, model = exported("llama")
    session = QWTHNSession(result.directory)
    ids = session.encode(PROMPT)
    seen = {}

    def recorder(name):
        def hook(module, args, output):
            seen[name] = (args[0], output)  # returns None: the output is left as it is

        return hook

    hooks = [
        layer.qwthn.qnn.register_forward_hook(recorder(name))
        for name, layer in model.adapter_layers().items()
    ]
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for h in hooks:
        h.remove()
    calls = capture_quantum_calls(result.directory, ids)
    assert [c.layer for c in calls] == model.adapted_modules
    for call in calls:
        angles, expectations = seen[call.layer]
        np.testing.assert_allclose(call.inputs, angles.numpy(), atol=1e-5)
        np.testing.assert_allclose(call.outputs, expectations.numpy(), atol=1e-5)


def test_job_has_one_bound_program_per_layer_and_token(job):
    _, directory, index, model = job
    tokens = len(index["tokens"])
    assert len(index["programs"]) == tokens * len(model.adapted_modules)
    assert "".join(t["text"] for t in index["tokens"][1:]) == PROMPT
    for entry in index["programs"]:
        text = (directory / entry["file"]).read_text()
        assert "input" not in text.split("OPENQASM 3.0;")[1]
        circuit = qasm3_to_circuit(text)
        # the literal angles are exactly the ones in the index (no rounding on the way)
        encoded = [p.value for g in circuit.gates[: circuit.n_qubits] for p in g.params]
        assert encoded == [entry["inputs"][f"x_{i}"] for i in range(len(entry["inputs"]))]
        # exact simulation of the program equals the kernel's expectations
        np.testing.assert_allclose(_exact(text, circuit), entry["expected"], atol=1e-6)
        lowered = (directory / entry["qasm2"]).read_text()
        qasm2.loads(lowered, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)


def test_running_the_job_with_shots_lands_within_five_standard_errors(job):
    _, directory, index, _ = job
    summary = run_job(directory, shots=2000, seed=3)
    assert summary["programs"] == len(index["programs"]) and summary["within_5_stderr"]
    assert 0 < summary["max_z"] < 5
    saved = json.loads((directory / "results.json").read_text())
    assert saved["results"][0]["stderr"][0] > 0
    assert saved == summary


def test_qwthn_verify_passes_on_paper_size_circuits(tmp_path):
    """10 qubits x 10 layers, the paper's circuit (as on SmolLM2): the float32 kernel is ~3e-6
    from the exact program there, which the face-to-face bounds must allow."""
    path, _ = make_model_pt(tmp_path / "model.pt", n_qubits=10, n_layers=10)
    result = export_model(path, tmp_path / "onnx", ExportOptions())
    report = crosscheck(result.directory, samples=8, shots=1000)
    assert report.passed, [c for c in report.checks if not c.passed]
    kernel = [c.value for c in report.checks if c.face == "qasm exact vs onnx kernel"]
    assert len(kernel) == 4 and max(kernel) > 1e-7  # a float32 kernel: not bit-exact


def test_qwthn_verify_passes_and_catches_a_tampered_program(exported, tmp_path, capsys):
    import shutil

    _, result, _ = exported("llama")
    report = crosscheck(result.directory, samples=4, shots=2000)
    assert report.passed
    faces = {c.face for c in report.checks}
    assert {"onnx kernel", "onnx fallback", "qasm exact", "qasm shots", "files = manifest"} <= faces
    assert "qasm exact vs onnx kernel" in faces
    assert (
        verify_main([str(result.directory), "--samples", "2", "--json", str(tmp_path / "r")]) == 0
    )
    assert json.loads((tmp_path / "r").read_text())["passed"] is True

    copy = tmp_path / "copy"
    shutil.copytree(result.directory, copy)
    program = next((copy / "qasm").glob("*.qasm"))
    text = program.read_text()
    first_literal = text.split("ry(")[5].split(")")[0]  # a trained weight, after 4 encodings
    program.write_text(text.replace(f"ry({first_literal})", "ry(0.5)", 1))
    bad = crosscheck(copy, samples=4, shots=2000)
    failed = {c.face for c in bad.checks if not c.passed}
    assert "circuit: qasm = node with weights" in failed and "qasm exact" in failed
    assert "files = manifest" in failed  # the edit is named, and the other checks still ran
    capsys.readouterr()
    assert verify_main([str(copy), "--samples", "2"]) == 1
    assert "disagreement found" in capsys.readouterr().out


def test_cli_job_and_run(exported, tmp_path, capsys):
    _, result, _ = exported("llama")
    assert qasm_main(["job", str(result.directory), "-p", "1&2=", "-o", str(tmp_path / "j")]) == 0
    assert "programs (4 layers x 5 tokens)" in capsys.readouterr().out
    assert qasm_main(["run", str(tmp_path / "j"), "--shots", "500"]) == 0
    assert "within 5 standard errors" in capsys.readouterr().out
    assert qasm_main(["run", str(tmp_path / "nothing")]) == 2


def test_verify_without_qasm_says_how_to_get_it(tmp_path, capsys):
    path, _ = make_model_pt(tmp_path / "model.pt")
    export_model(path, tmp_path / "out", ExportOptions(verify=False, qasm=False))
    assert verify_main([str(tmp_path / "out")]) == 2
    assert "qwthn-export --qasm" in capsys.readouterr().err
    proto = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert all(n.name for n in proto.graph.node if n.domain == "ai.qwthn")


def _layer_program(export_dir, layer):
    return (export_dir / "qasm" / f"{layer}.qasm").read_text()


def test_a_program_with_literal_weights_loads_back_into_the_model(exported, tmp_path, batch):
    import torch

    from qwthn_onnx import load_model_pt

    path, result, model = exported("llama")
    layer = model.adapted_modules[0]
    out = tmp_path / "literal.pt"
    assert qasm_main(["load", str(path), str(tmp_path / "x.qasm"), "--layer", layer,
                      "-o", str(out)]) == 2  # fmt: skip
    (tmp_path / "x.qasm").write_text(_layer_program(result.directory, layer))
    assert qasm_main(["load", str(path), str(tmp_path / "x.qasm"), "--layer", layer,
                      "-o", str(out)]) == 0  # fmt: skip
    loaded = load_model_pt(out).model.eval()
    qnn = loaded.adapter_layers()[layer].qwthn.qnn
    assert qnn.circuit.n_weights == 0 and qnn.weights.numel() == 0
    with torch.no_grad():  # the trained weights now live in the program as constants
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=1e-5,
                                   rtol=1e-5)  # fmt: skip
    again = export_model(out, tmp_path / "again", ExportOptions())
    assert again.verification.passed
    assert crosscheck(again.directory, samples=2, shots=1000).passed


def test_an_edited_program_keeps_the_trained_weights_and_travels_everywhere(tmp_path, batch):
    import torch

    from exporters.onnx_import import import_onnx
    from qwthn_onnx import load_model_pt

    path, model = make_model_pt(tmp_path / "model.pt")
    out = tmp_path / "out"
    export_model(path, out, ExportOptions(verify=False, qasm_weights_as_inputs=True))
    layer = model.adapted_modules[1]
    text = _layer_program(out, layer).replace(  # the default (portable) names qubits q0, q1, ...
        "\n@qwthn.observables", "\nrz(0.75) q1;\nry(-0.5) q2;\n@qwthn.observables"
    )
    (tmp_path / "edited.qasm").write_text(text)
    edited = tmp_path / "edited.pt"
    assert qasm_main(["load", str(path), str(tmp_path / "edited.qasm"), "--layer", layer,
                      "-o", str(edited)]) == 0  # fmt: skip
    loaded = load_model_pt(edited).model.eval()
    old, new = model.adapter_layers()[layer].qwthn.qnn, loaded.adapter_layers()[layer].qwthn.qnn
    assert torch.equal(new.weights, old.weights) and new.weights.requires_grad
    assert new.circuit.gates[-2:] == tuple(qasm3_to_circuit(text).gates[-2:])
    with torch.no_grad():
        assert (loaded(**batch).logits - model(**batch).logits).abs().max() > 1e-6
    again = export_model(edited, tmp_path / "again", ExportOptions())
    assert again.verification.passed
    back = import_onnx(again.directory).model
    assert back.adapter_layers()[layer].qwthn.qnn.circuit == new.circuit


def test_programs_that_do_not_fit_the_layer_are_refused(exported, tmp_path):
    from exporters.qasm import QasmError
    from qwthn_onnx import AdapterError, ConfigError, QWTHNConfig
    from qwthn_onnx.circuit import paper_circuit

    _, result, model = exported("llama")
    layer = model.adapted_modules[0]
    with pytest.raises(AdapterError, match="is not an adapted module; adapted:"):
        model.replace_circuit("model.layers.9.q", paper_circuit(3, 1))
    with pytest.raises(QasmError, match=r"expected .*x_0.*found"):
        qasm3_to_circuit(_layer_program(result.directory, layer), n_inputs=5)
    with pytest.raises(AdapterError, match="has 6 weights; use 0"):
        model.replace_circuit(layer, paper_circuit(3, 1).__class__(
            3, paper_circuit(3, 1).gates[:9], paper_circuit(3, 1).observables,
            n_inputs=3, n_weights=6))  # fmt: skip
    with pytest.raises(ConfigError, match="takes 4 angles"):
        QWTHNConfig(n_qubits=3, circuits={"m": paper_circuit(4, 1).to_dict()})


def test_capture_without_the_kernel_library_uses_the_fallbacks(exported, monkeypatch, tmp_path):
    _, result, _ = exported("llama")
    ids = QWTHNSession(result.directory).encode(PROMPT)
    with_kernels = capture_quantum_calls(result.directory, ids)
    monkeypatch.setenv("QWTHN_OPS_LIBRARY", str(tmp_path / "missing.so"))
    without = capture_quantum_calls(result.directory, ids)
    for a, b in zip(with_kernels, without, strict=True):
        np.testing.assert_allclose(a.inputs, b.inputs, atol=1e-5)
        np.testing.assert_allclose(a.outputs, b.outputs, atol=1e-5)
