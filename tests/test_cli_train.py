import dataclasses
import json
import shutil
import subprocess

import pytest

from qwthn_onnx import QWTHNConfig
from qwthn_onnx.checkpoint import read_model_pt
from qwthn_onnx.cli import train as cli

FAST = [
    "--pretrain-steps",
    "20",
    "--steps",
    "4",
    "--train-examples",
    "64",
    "--test-examples",
    "8",
    "-q",
]


def test_demo_writes_model_pt_and_adapter(tmp_path):
    out, adapter = tmp_path / "model.pt", tmp_path / "adapter"
    assert cli.main([*FAST, "-o", str(out), "--adapter-dir", str(adapter), "--arch", "gpt2"]) == 0
    payload = read_model_pt(out)
    training = payload["training"]
    assert len(training["losses"]) == 4 and training["seed"] == 0
    assert 0.0 <= training["eval_after"] <= 1.0
    assert training["base_pretraining"]["steps"] == 20
    assert payload["adapter"]["config"]["n_qubits"] == cli.DEMO_ADAPTER["n_qubits"]
    assert payload["tokenizer"]["files"]["tokenizer.json"]
    assert json.loads((adapter / "adapter_config.json").read_text())["rank"] == 8
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0


def test_adapter_flags_reach_the_config_and_custom_data(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "completion": "2"}\n{"text": "hello"}\n')
    out = tmp_path / "m.pt"
    args = [
        *FAST,
        "-o",
        str(out),
        "--data",
        str(data),
        "--n-qubits",
        "2",
        "--n-layers",
        "1",
        "--fusion",
        "linear",
        "--target-modules",
        "q_proj",
        "--mpo-modes",
        '{"64": [8, 8, 1]}',
    ]
    assert cli.main(args) == 0
    cfg = read_model_pt(out)["adapter"]["config"]
    assert (cfg["n_qubits"], cfg["fusion"], cfg["target_modules"]) == (2, "linear", ["q_proj"])
    assert cfg["mpo_modes"] == {"64": [8, 8, 1]}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "missing.jsonl"], "dataset file not found"),
        (["--target-modules", "qproj"], "Candidates"),
        (["--rank", "0"], "rank must be a positive integer"),
        (["--base-weights", "reference"], "needs --model"),
        (["--model", "nowhere", "--data", "x.txt"], "is not a Hugging Face model directory"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, extra, message):
    assert cli.main([*FAST, "-o", str(tmp_path / "m.pt"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_interrupted_run_keeps_previous_model_pt(tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous")

    def interrupt(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupt)
    assert cli.main([*FAST, "-o", str(out)]) == 130
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert "was not written" in capsys.readouterr().err


def test_console_script_is_installed_and_lists_every_config_field():
    exe = shutil.which("qwthn-train")
    assert exe, "qwthn-train is not on PATH: install the package (pip install -e .)"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    for f in dataclasses.fields(QWTHNConfig):
        assert "--" + f.name.replace("_", "-") in result.stdout
