"""Training checkpoints: contents, atomic writes, rotation, and resume == uninterrupted."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from qwthn_onnx import QWTHNConfig, QWTHNModel, TrainingArguments, load_adapter, train
from qwthn_onnx import training as training_module
from qwthn_onnx.data import Example, tokenize_examples
from qwthn_onnx.training import (
    CHECKPOINT_FILE,
    STATE_FILE,
    TRAINABLE_FILE,
    TrainingError,
    latest_checkpoint,
)

# Dropout makes the run depend on torch's RNG, which resuming must restore too.
ADAPTER = {"n_qubits": 2, "n_layers": 1, "rank": 4, "alpha": 16.0, "dropout": 0.1}


def _data(tokenizer, n=10):
    examples = [Example(f"{i}+{i}=", str(2 * i) * (1 + i % 3)) for i in range(n)]
    return tokenize_examples(examples, tokenizer)


def _model(tiny_model, base_seed=0, init_seed=0, **config):
    torch.manual_seed(init_seed)  # the adapters' initial weights
    return QWTHNModel(tiny_model("llama", seed=base_seed), QWTHNConfig(**{**ADAPTER, **config}))


def _args(directory, **options):
    # 10 examples in steps of 3 x 2: checkpoints fall mid-epoch, between two permutations.
    base = {"steps": 6, "batch_size": 3, "gradient_accumulation_steps": 2, "warmup_steps": 2}
    return TrainingArguments(checkpoint_every=2, checkpoint_dir=str(directory), **base | options)


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def uninterrupted(tiny_model, tokenizer, tmp_path):
    """A whole run with checkpoints at steps 2, 4 and 6: (result, final weights, directory)."""
    model = _model(tiny_model)
    result = train(model, _data(tokenizer), _args(tmp_path / "run"), progress=False)
    return result, _weights(model), tmp_path / "run"


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resumed_training_equals_uninterrupted_training(
    tiny_model, tokenizer, tmp_path, accumulation
):
    data, args = _data(tokenizer), _args(tmp_path / "a", gradient_accumulation_steps=accumulation)
    model = _model(tiny_model)
    whole = train(model, data, args, progress=False)
    expected = _weights(model)
    for step in (2, 4):
        resumed_model = _model(tiny_model, init_seed=step)
        resumed = train(
            resumed_model,
            data,
            dataclasses.replace(args, checkpoint_dir=str(tmp_path / f"b{step}")),
            progress=False,
            resume_from=tmp_path / "a" / f"checkpoint-{step}",
        )
        assert resumed.losses == whole.losses  # bit for bit
        assert resumed.learning_rates == whole.learning_rates
        assert resumed.resumed_from == str(tmp_path / "a" / f"checkpoint-{step}")
        got = _weights(resumed_model)
        assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_checkpoint_contents(uninterrupted, tiny_model):
    result, final, directory = uninterrupted
    assert sorted(p.name for p in directory.iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    ]
    last = directory / "checkpoint-6"
    meta = json.loads((last / CHECKPOINT_FILE).read_text())
    assert (meta["step"], meta["total_steps"], meta["loss"]) == (6, 6, result.losses[-1])
    assert meta["args"]["gradient_accumulation_steps"] == 2
    assert set(meta["identity"]["trainable"]) == set(final)
    assert meta["identity"]["adapter_config"]["rank"] == 4
    weights = load_file(last / TRAINABLE_FILE)
    assert all(torch.equal(weights[name], final[name]) for name in final)
    # A plain-data file: loadable with weights_only=True, as the loop itself loads it.
    state = torch.load(last / STATE_FILE, weights_only=True)
    assert state["step"] == 6 and state["losses"] == result.losses
    assert set(state) >= {"optimizer", "scheduler", "generator", "torch_rng", "order"}
    # The checkpoint is an adapter directory too.
    adapter = load_adapter(tiny_model("llama"), last).adapter_state_dict()
    trained = _model(tiny_model)
    trained.load_state_dict(final, strict=False)
    assert all(torch.equal(v, trained.adapter_state_dict()[k]) for k, v in adapter.items())
    assert latest_checkpoint(directory) == last


def test_save_total_limit_keeps_the_newest(tiny_model, tokenizer, tmp_path):
    args = _args(tmp_path / "run", steps=5, save_total_limit=2)
    train(_model(tiny_model), _data(tokenizer), args, progress=False)
    # Every 2 steps and at the end: 2, 4, 5; the newest two stay, nothing half-deleted is left.
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint-4",
        "checkpoint-5",
    ]


def test_an_interrupted_checkpoint_write_keeps_the_previous_ones(
    uninterrupted, tiny_model, tokenizer, tmp_path, monkeypatch
):
    calls = []
    real_save = training_module.torch.save

    def save_then_die(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:  # the second checkpoint (step 4), part-way through
            raise KeyboardInterrupt
        real_save(*args, **kwargs)

    monkeypatch.setattr(training_module.torch, "save", save_then_die)
    directory = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(_model(tiny_model), _data(tokenizer), _args(directory), progress=False)
    monkeypatch.undo()
    assert [p.name for p in directory.iterdir()] == ["checkpoint-2"]  # no partial directory
    assert sorted(p.name for p in (directory / "checkpoint-2").iterdir()) == sorted(
        p.name for p in (uninterrupted[2] / "checkpoint-2").iterdir()
    )
    model = _model(tiny_model)
    resumed = train(model, _data(tokenizer), _args(directory), progress=False, resume_from="latest")
    assert resumed.losses == uninterrupted[0].losses
    assert all(torch.equal(p, uninterrupted[1][n]) for n, p in _weights(model).items())


def _tamper_with_state(path):
    state = torch.load(path / STATE_FILE, weights_only=True)
    state["hook"] = Example("arbitrary", "object")  # needs unpickling of a class: refused
    torch.save(state, path / STATE_FILE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"args": {"batch_size": 2}}, "other training options: batch_size=3 (now 2)"),
        ({"args": {"lr_scheduler": "linear"}}, "lr_scheduler='warmup_cosine' (now 'linear')"),
        ({"config": {"rank": 2}}, "trained other parameters than this model's"),
        ({"config": {"alpha": 8.0}}, "adapter configured differently (fields alpha)"),
        ({"base_seed": 1}, "other frozen (base model) weights"),
        ({"rows": 9}, "other data (10 rows; now 9)"),
        ({"tamper": _tamper_with_state}, "needs arbitrary unpickling to load"),
    ],
)
def test_resuming_onto_another_run_is_refused(
    uninterrupted, tiny_model, tokenizer, tmp_path, change, message
):
    checkpoint = uninterrupted[2] / "checkpoint-2"
    if "tamper" in change:
        change["tamper"](checkpoint)
    model = _model(tiny_model, change.get("base_seed", 0), **change.get("config", {}))
    args = _args(tmp_path / "other", **change.get("args", {}))
    with pytest.raises(TrainingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(model, _data(tokenizer, change.get("rows", 10)), args, resume_from=checkpoint)


def test_a_changed_quantum_backend_may_resume(uninterrupted, tiny_model, tokenizer, tmp_path):
    model = _model(tiny_model, quantum_backend="torch")  # the simulator is no part of the run
    result = train(
        model,
        _data(tokenizer),
        _args(tmp_path / "other", log_every=1, save_total_limit=1),  # free to change
        progress=False,
        resume_from=uninterrupted[2],  # a directory of checkpoints: its latest
    )
    assert result.losses == uninterrupted[0].losses  # nothing left to train


def test_checkpoint_locations_are_checked(uninterrupted, tiny_model, tokenizer, tmp_path):
    model, data = _model(tiny_model), _data(tokenizer)
    with pytest.raises(TrainingError, match="already holds checkpoints of an earlier run"):
        train(model, data, _args(uninterrupted[2]), progress=False)
    with pytest.raises(TrainingError, match="no checkpoint to resume from in"):
        train(model, data, _args(tmp_path / "empty"), progress=False, resume_from="latest")
    with pytest.raises(TrainingError, match="is not a checkpoint"):
        train(model, data, _args(tmp_path / "x"), progress=False, resume_from=tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(TrainingError, match="is a file; choose a directory"):
        train(model, data, _args(tmp_path / "file"), progress=False)
