import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

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
    err = capsys.readouterr().err
    assert "was not written" in err and "--resume" not in err
    # With checkpoints, the message says how to continue.
    assert cli.main([*FAST, "-o", str(out), "--checkpoint-every", "2"]) == 130
    assert "the same command with --resume" in capsys.readouterr().err


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


def test_a_model_directory_run_is_fixed_by_its_seed(tmp_path, tiny_model, tokenizer):
    """The adapters' initial weights come from --seed too: two runs on a --model directory with
    one seed train the same adapter (torch's RNG was left unseeded before they were built)."""
    model_dir = tmp_path / "hf"
    tiny_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "train.txt"
    data.write_text("12+3=15\n4+4=8\n")
    adapters = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.pt"
        argv = ["--model", str(model_dir), "--data", str(data), "-o", str(out), "--steps", "2",
                "-q", "--n-qubits", "2", "--n-layers", "1", "--seed", "5"]  # fmt: skip
        assert cli.main(argv) == 0
        adapters.append(read_model_pt(out)["adapter"]["state_dict"])
    first, second = adapters
    assert first.keys() == second.keys()
    assert all(first[k].equal(second[k]) for k in first)


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


def test_loop_options_reach_training_and_model_pt(tmp_path):
    out = tmp_path / "m.pt"
    argv = [*FAST, "-o", str(out), "--eval-every", "2", "--checkpoint-every", "2",
            "--save-total-limit", "1", "--gradient-accumulation-steps", "2", "--batch-size", "8",
            "--lr-scheduler", "linear", "--warmup-steps", "0",
            "--mixed-precision", "bf16"]  # fmt: skip
    assert cli.main(argv) == 0
    training = read_model_pt(out)["training"]
    args = training["args"]
    assert (args["gradient_accumulation_steps"], args["batch_size"]) == (2, 8)
    assert (args["lr_scheduler"], args["mixed_precision"]) == ("linear", "bf16")
    assert training["learning_rates"] == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])  # linear
    # The demo evaluates on its held-out set; checkpoints go beside the output, newest kept.
    assert [e["step"] for e in training["evaluations"]] == [2, 4]
    assert training["validation"] == "generated:and_add:held-out"
    assert sorted(p.name for p in (tmp_path / "m-checkpoints").iterdir()) == ["checkpoint-4"]


def test_resume_continues_the_interrupted_run_exactly(tmp_path, capsys):
    common = [*FAST, "--checkpoint-every", "2", "--eval-every", "3"]
    assert cli.main([*common, "-o", str(tmp_path / "whole.pt")]) == 0
    whole = read_model_pt(tmp_path / "whole.pt")
    checkpoints = tmp_path / "ck"
    shutil.copytree(tmp_path / "whole-checkpoints" / "checkpoint-2", checkpoints / "checkpoint-2")
    out = tmp_path / "resumed.pt"
    assert (
        cli.main([*common, "-o", str(out), "--checkpoint-dir", str(checkpoints), "--resume"]) == 0
    )
    resumed = read_model_pt(out)
    assert resumed["training"]["losses"] == whole["training"]["losses"]
    assert resumed["training"]["evaluations"] == whole["training"]["evaluations"]
    assert resumed["training"]["resumed_from"] == str(checkpoints / "checkpoint-2")
    for key, value in whole["adapter"]["state_dict"].items():
        assert resumed["adapter"]["state_dict"][key].equal(value)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    capsys.readouterr()
    # Another batch size is another run: refused before any work.
    argv = [*common, "-o", str(out), "--resume", str(checkpoints), "--batch-size", "16"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert "other training options: batch_size=32 (now 16)" in err and "pre-training" not in out


def test_validation_split_epochs_and_chat_template_with_a_data_file(tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    record = {
        "messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]
    }
    data.write_text("\n".join([json.dumps(record)] * 10) + "\n")
    out = tmp_path / "m.pt"
    argv = ["--pretrain-steps", "5", "-q", "-o", str(out), "--data", str(data), "--n-qubits", "2",
            "--n-layers", "1", "--validation-split", "0.2", "--epochs", "2", "--batch-size", "4",
            "--chat-template", "off"]  # fmt: skip
    assert cli.main(argv) == 0
    training = read_model_pt(out)["training"]
    assert len(training["losses"]) == 4  # 2 epochs of the 8 training examples, 4 at a time
    assert training["validation"] == {"split": 0.2, "seed": 0}
    assert [e["step"] for e in training["evaluations"]] == [4]  # at the end
    # --chat-template reaches the tokenisation: the demo's character tokenizer has no template.
    assert cli.main([*argv[:-1], "on"]) == 2
    assert "no chat template" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epochs", "1"], "--steps and --epochs are alternatives"),
        (["--validation-data", "v.jsonl", "--validation-split", "0.1"], "are alternatives"),
        (["--validation-split", "1.5"], "validation fraction must be in (0, 1)"),
        (["--validation-data", "missing.jsonl"], "dataset file not found"),
        (["--checkpoint-dir", "ck"], "--checkpoint-dir needs --checkpoint-every"),
        (["--save-total-limit", "2"], "save_total_limit needs checkpoint_every"),
        (["--resume"], "no checkpoint to resume from in"),
        (["--resume", "nowhere"], "nowhere is not a checkpoint"),
        (["--gradient-accumulation-steps", "0"], "gradient_accumulation_steps must be >= 1"),
        (["--eval-every", "0"], "eval_every must be >= 1"),
        (["--lr-scheduler", "nope"], "argument --lr-scheduler: invalid choice: 'nope'"),
        (["--mixed-precision", "fp16"], "argument --mixed-precision: invalid choice"),
        (["--epochs", "x"], "argument --epochs: invalid float value: 'x'"),
    ],
)
def test_bad_loop_options_exit_2_on_one_line_before_any_work(
    tmp_path, capsys, monkeypatch, extra, message
):
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main([*FAST, "-o", "m.pt", *extra])
    except SystemExit as e:  # argparse's own checks
        code = e.code
    assert code == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "pre-training" not in out and list(tmp_path.iterdir()) == []


def test_eval_every_without_a_validation_set_is_refused_for_a_data_file(tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("1+1=2\n")
    argv = [*FAST, "-o", str(tmp_path / "m.pt"), "--data", str(data), "--eval-every", "2"]
    assert cli.main(argv) == 2
    assert "--eval-every needs a validation set" in capsys.readouterr().err


def test_the_options_table_of_the_docs_names_real_flags_and_fields():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    table = [line for line in docs.splitlines() if re.match(r"\| (`--|\(none\))", line)]
    rows = [re.split(r"(?<!\\)\|", line)[1:3] for line in table]  # "\|": a pipe in a cell
    flags = {s for action in cli.build_parser()._actions for s in action.option_strings}
    names = {f.name for f in dataclasses.fields(cli.TrainingArguments)}
    documented = set()
    for flag_cell, field_cell in rows:
        assert set(re.findall(r"`(--[a-z-]+)", flag_cell)) <= flags, flag_cell
        if field := re.fullmatch(r" `(\w+)` ", field_cell):
            documented.add(field.group(1))
    assert documented == names
