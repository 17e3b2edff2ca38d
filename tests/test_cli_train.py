import dataclasses
import json
import os
import shutil
import signal
import subprocess

import pytest

from qwthn_onnx import QWTHNConfig
from qwthn_onnx.checkpoint import load_model_pt, read_model_pt
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
    assert read_model_pt(out)["training"]["dataset"]["path"] == str(data)  # not the demo's


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "missing.jsonl"], "dataset file not found"),
        (["--target-modules", "qproj"], "Candidates"),
        (["--rank", "0"], "rank must be a positive integer"),
        (["--base-weights", "reference"], "needs --model"),
        (["--model", "nowhere", "--data", "x.txt"], "not a packaged model name (known: smollm2"),
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
        if f.name not in cli.CONFIG_FIELDS_WITHOUT_FLAGS:
            assert "--" + f.name.replace("_", "-") in result.stdout
    assert "--circuits" not in result.stdout


def test_local_model_directory_with_referenced_base(tmp_path, tiny_model, tokenizer):
    model_dir = tmp_path / "hf"
    tiny_model("qwen2").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "train.txt"
    data.write_text("12+3=15\n4+4=8\n")
    out = tmp_path / "model.pt"
    argv = ["--model", str(model_dir), "--data", str(data), "-o", str(out), "--steps", "2", "-q",
            "--n-qubits", "2", "--n-layers", "1", "--base-weights", "reference"]  # fmt: skip
    assert cli.main(argv) == 0
    payload = read_model_pt(out)
    assert payload["base_model"]["architecture"] == "Qwen2ForCausalLM"
    assert payload["base_model"]["state_dict"] is None
    assert payload["base_model"]["reference"]["path"] == str(model_dir.resolve())
    assert payload["training"]["dataset"]["path"] == str(data)
    assert load_model_pt(out).model.adapted_modules[0] == "model.layers.0.self_attn.q_proj"


def test_sigterm_leaves_no_partial_output(tmp_path):
    outdir, log = tmp_path / "out", tmp_path / "stderr.txt"
    outdir.mkdir()
    with log.open("w") as err:
        proc = subprocess.Popen(
            ["qwthn-train", "-o", str(outdir / "model.pt"), "--pretrain-steps", "100000"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert "demo" in proc.stdout.readline()  # started: imports done, training begins
        finally:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "was not written" in log.read_text()
    assert list(outdir.iterdir()) == []


def test_unwritable_output_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main([*FAST, "-o", str(blocker / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert "is not writable" in err and "demo" not in err
    assert cli.main([*FAST, "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
