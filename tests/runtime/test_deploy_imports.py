"""The deploy layer runs without the training stack: loading an export, generating and serving
import neither torch, transformers, peft nor qiskit (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TRAINING_STACK = ("torch", "transformers", "peft", "qiskit")

DEPLOY = """
import json, sys
from qwthn_onnx.runtime import QWTHNSession
from qwthn_onnx.chat import Message, chat_prompt_ids
from serving import ModelRepository, Settings, create_app
from starlette.testclient import TestClient

directory, TRAINING_STACK = sys.argv[1], sys.argv[2:]
session = QWTHNSession(directory)
text = session.generate("12+34=", max_new_tokens=4).text
chat = chat_prompt_ids([Message("user", "1+1=")], session.tokenizer)
with TestClient(create_app(ModelRepository.load(directory), Settings())) as client:
    ready = client.get("/v2/health/ready").status_code
    served = client.post(
        "/v2/models/export/generate", json={"prompt": "12+34=", "max_new_tokens": 4}
    ).json()
print(json.dumps({
    "text": text, "chat": chat, "ready": ready, "served": served,
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in TRAINING_STACK),
}))
"""


def test_loading_generating_and_serving_import_no_training_stack(export):
    run = subprocess.run(
        [sys.executable, "-c", DEPLOY, str(export), *TRAINING_STACK],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["loaded"] == []
    assert result["ready"] == 200
    assert result["served"]["text"] == result["text"]
    assert result["chat"]  # the plain chat layout, through the torch-free tokenizer


def test_the_package_still_offers_its_training_api_lazily():
    code = (
        "import sys, qwthn_onnx; assert 'torch' not in sys.modules; "
        "from qwthn_onnx import QWTHNConfig, train; assert 'torch' in sys.modules; "
        "print(qwthn_onnx.QWTHNConfig is QWTHNConfig, 'train' in dir(qwthn_onnx))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        import qwthn_onnx

        qwthn_onnx.nonexistent  # noqa: B018


def test_a_command_whose_extra_is_missing_names_the_extra(monkeypatch, capsys):
    from qwthn_onnx.cli import entry

    monkeypatch.setitem(entry._EXTRAS, "train", ("torch", "no_such_module_for_this_test"))
    assert entry.train() == 2
    assert capsys.readouterr().err == (
        "error: qwthn-train needs the 'train' extra (no_such_module_for_this_test not "
        "installed); install it with: pip install 'qwthn-onnx[train]'\n"
    )


def test_the_console_scripts_point_at_the_checked_entry_points():
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    for command in ("train", "export", "import", "qasm", "verify", "run", "serve"):
        assert scripts[f"qwthn-{command}"].startswith("qwthn_onnx.cli.entry:")
        assert callable(entry_points(group="console_scripts")[f"qwthn-{command}"].load())
