"""QWTHN models under transformers' Trainer and TRL's SFTTrainer, through the documented examples
(examples/train_with_trainer.py, examples/train_with_trl.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qwthn_onnx import AdapterError, DataError, QWTHNConfig, QWTHNModel, load_adapter
from qwthn_onnx.data import Example, Message
from qwthn_onnx.demo import build_char_tokenizer, build_tiny_model
from qwthn_onnx.integrations import QWTHNSFTTrainer, QWTHNTrainer, sft_records
from tests.examples_loader import TINY_ADAPTER, load_example

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
DOC = Path(__file__).resolve().parents[1] / "docs" / "trainers.md"


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _check_adapter_training(trainer, tokenizer, batch, checkpoint) -> None:
    """The base is untouched, the adapter learnt, and ``checkpoint`` holds exactly the adapter,
    which a fresh base loads back to the trained model's outputs."""
    model = trainer.qwthn_model
    fresh = build_tiny_model(tokenizer, "llama", seed=0)  # the examples' base (seed 0)
    base = model.base_state_dict()
    assert base.keys() == fresh.state_dict().keys()
    assert all(torch.equal(base[k], v) for k, v in fresh.state_dict().items())
    adapter_params = {id(p) for n, p in model.named_parameters() if ".qwthn." in n}
    optimised = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert optimised and all(id(p) in adapter_params for p in optimised)
    torch.manual_seed(0)
    initial = QWTHNModel(fresh, model.qwthn_config).adapter_state_dict()
    trained = model.adapter_state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)

    # PEFT-style checkpoint: the adapter, no copy of the (tied-embedding) base.
    files = {p.name for p in checkpoint.iterdir()}
    assert files >= ADAPTER_FILES and "model.safetensors" not in files
    saved = load_file(checkpoint / "adapter_model.safetensors")
    assert saved.keys() == trained.keys()

    reloaded = load_adapter(build_tiny_model(tokenizer, "llama", seed=0), checkpoint.parent)
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        assert torch.equal(reloaded(**batch).logits, expected)


def test_trainer_trains_the_adapter_and_checkpoints_hold_it(tmp_path, tokenizer, batch):
    example = load_example("train_with_trainer")
    out = tmp_path / "run"
    trainer = example.run(
        [*TINY_ADAPTER, "--output", str(out), "--steps", "16", "--save-steps", "8", "--quiet"]
    )
    assert isinstance(trainer, QWTHNTrainer)
    losses = _losses(trainer)
    assert len(losses) == 16 and sum(losses[-4:]) / 4 < losses[0] - 0.1
    _check_adapter_training(trainer, tokenizer, batch, out / "checkpoint-8")
    assert {p.name for p in out.iterdir()} >= ADAPTER_FILES  # save_model(): the final adapter


def test_trainer_resume_equals_uninterrupted(tmp_path):
    example = load_example("train_with_trainer")
    args = [*TINY_ADAPTER, "--steps", "6", "--save-steps", "3", "--quiet"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    example.run([*args, "--output", str(whole)])
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-3", resumed / "checkpoint-3")
    trainer = example.run([*args, "--output", str(resumed), "--resume"])
    assert trainer.state.global_step == 6
    expected = load_file(whole / "adapter_model.safetensors")
    got = load_file(resumed / "adapter_model.safetensors")
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    # the checkpoint's weights were loaded: resuming differs from starting afresh at step 3
    start = load_file(whole / "checkpoint-3" / "adapter_model.safetensors")
    assert any(not torch.equal(start[k], v) for k, v in expected.items())


def test_resume_refuses_an_adapter_of_another_configuration(tmp_path):
    example = load_example("train_with_trainer")
    args = ["--steps", "2", "--save-steps", "2", "--quiet", "--output", str(tmp_path)]
    example.run([*TINY_ADAPTER, *args])
    other = ["--rank", "4", "--n-qubits", "3", "--n-layers", "1"]
    with pytest.raises(AdapterError, match=r"configured differently.*n_qubits"):
        example.run([*other, *args, "--resume"])


def test_sft_trainer_on_chat_data_trains_assistant_turns_like_trainer(tmp_path, tokenizer, batch):
    args = [*TINY_ADAPTER, "--steps", "8", "--save-steps", "8", "--quiet"]
    sft = load_example("train_with_trl").run([*args, "--output", str(tmp_path / "sft")])
    assert isinstance(sft, QWTHNSFTTrainer)
    assert sft.args.gradient_checkpointing  # TRL's default, kept: the adapter still learns
    _check_adapter_training(sft, tokenizer, batch, tmp_path / "sft" / "checkpoint-8")
    # The demo chat renders "<bos>23&58=" + "81<eos>" with only the reply trained: the very
    # rows and labels Trainer gets from tokenize_examples, so the two runs see the same losses.
    plain = load_example("train_with_trainer").run([*args, "--output", str(tmp_path / "plain")])
    torch.testing.assert_close(_losses(sft), _losses(plain), rtol=1e-5, atol=1e-6)


CHAT = [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]
CHAT2 = [*CHAT, {"role": "user", "content": "3+3="}, {"role": "assistant", "content": "6"}]


@pytest.mark.parametrize(
    ("records", "assistant_only_loss"),
    [
        ([{"messages": CHAT}], False),  # one answer: conversational prompt/completion
        ([{"messages": CHAT2}], True),  # two answers: messages, the template's generation marks
        ([{"prompt": "2+2=", "completion": "4"}], False),
    ],
    ids=["one-answer-chat", "multi-turn-chat", "prompt-completion"],
)
def test_sft_trainer_reads_data_files(tmp_path, records, assistant_only_loss):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records * 8))
    args = ["--data", str(data), "--steps", "6", "--batch-size", "4", "--quiet"]
    trainer = load_example("train_with_trl").run(
        [*TINY_ADAPTER, *args, "--output", str(tmp_path / "out")]
    )
    assert trainer.args.assistant_only_loss == assistant_only_loss
    losses = _losses(trainer)
    assert len(losses) == 6 and losses[-1] < losses[0]


def _chat(*turns: tuple[str, str, bool], source: str = "") -> Example:
    return Example(messages=tuple(Message(*t) for t in turns), source=source)


def test_sft_records_train_what_qwthn_train_trains():
    plain = [Example("1+1=", "2"), Example("", "some text")]
    assert sft_records(plain) == [
        {"prompt": "1+1=", "completion": "2"},
        {"prompt": "", "completion": "some text"},
    ]
    # One trained answer: conversational prompt/completion (any chat template); an answer
    # given with weight 0 stays in the prompt, a turn after the trained one is left out.
    weighted = _chat(
        ("user", "a", False), ("assistant", "b", False), ("user", "c", False),
        ("assistant", "d", True), ("user", "e", False),
    )  # fmt: skip
    assert sft_records([weighted]) == [
        {
            "prompt": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ],
            "completion": [{"role": "assistant", "content": "d"}],
        }
    ]
    # Several trained answers somewhere: {"messages"} for every record (one format per dataset).
    one = _chat(("user", "x", False), ("assistant", "y", True))
    two = _chat(("user", "a", False), ("assistant", "b", True), ("user", "c", False),
                ("assistant", "d", True))  # fmt: skip
    records = sft_records([one, two])
    assert [list(r) for r in records] == [["messages"], ["messages"]]
    assert [t["content"] for t in records[1]["messages"]] == ["a", "b", "c", "d"]


def test_sft_records_refuse_what_trl_cannot_express():
    partly = _chat(
        ("user", "a", False), ("assistant", "b", False), ("user", "c", False),
        ("assistant", "d", True), ("user", "e", False), ("assistant", "f", True),
        source="chat.jsonl:3",
    )  # fmt: skip
    with pytest.raises(DataError, match=r"chat\.jsonl:3: trains some assistant turns but not"):
        sft_records([partly])
    with pytest.raises(DataError, match="mix plain records and conversations"):
        sft_records([Example("1+1=", "2"), _chat(("user", "x", False), ("assistant", "y", True))])


def test_trainers_refuse_what_they_cannot_save(tmp_path, tiny_model):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(TypeError, match="QWTHNModel"):
        QWTHNTrainer(model=tiny_model(), args=args)
    model = QWTHNModel(tiny_model(), QWTHNConfig(rank=4, n_qubits=2, n_layers=1))
    from peft import LoraConfig

    with pytest.raises(AdapterError, match="peft_config=None"):
        QWTHNSFTTrainer(model=model, args=args, peft_config=LoraConfig())


def test_examples_report_misuse_without_a_traceback(tmp_path, capsys):
    example = load_example("train_with_trainer")
    common = load_example("example_common")
    assert common.run_main(example.run, ["--model", str(tmp_path)]) == 2
    assert "neither a Hugging Face model directory" in capsys.readouterr().err
    missing = ["--output", str(tmp_path / "none"), "--resume"]
    assert common.run_main(example.run, missing) == 2
    assert "holds no checkpoint yet" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        example.run(["--steps", "0"])
    assert exit_info.value.code == 2
    assert "positive whole number" in capsys.readouterr().err


def test_the_documented_snippets_run(tmp_path, monkeypatch, batch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    trainer_snippet: dict = {}
    exec(blocks[0], trainer_snippet)
    model, restored = trainer_snippet["model"], trainer_snippet["restored"]
    model.eval()
    with torch.no_grad():
        assert torch.equal(restored(**batch).logits, model(**batch).logits)
    assert {p.name for p in (tmp_path / "out").iterdir()} >= ADAPTER_FILES
    sft_snippet: dict = {}
    exec(blocks[1], sft_snippet)
    assert sft_snippet["trainer"].state.global_step == 2
    assert {p.name for p in (tmp_path / "sft-out").iterdir()} >= ADAPTER_FILES


def test_examples_take_a_hugging_face_folder(tmp_path, tokenizer, capsys):
    """--model DIR: the folder's model and tokenizer; chat data need the tokenizer's template."""
    folder = tmp_path / "hf-model"
    build_tiny_model(tokenizer, "llama", seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    args = [*TINY_ADAPTER, "--model", str(folder), "--steps", "2", "--quiet"]
    trainer = load_example("train_with_trainer").run([*args, "--output", str(tmp_path / "a")])
    assert trainer.state.global_step == 2
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": CHAT}) + "\n")
    example, common = load_example("train_with_trl"), load_example("example_common")
    argv = [*args, "--data", str(chat), "--output", str(tmp_path / "b")]
    assert common.run_main(example.run, argv) == 2
    assert "has no chat template, which conversations need" in capsys.readouterr().err


def test_load_best_model_at_end_loads_the_best_checkpoints_adapter(tmp_path, tokenizer):
    from torch.utils.data import StackDataset
    from transformers import TrainingArguments

    from qwthn_onnx import tokenize_examples
    from qwthn_onnx.demo import finetune_task

    data = tokenize_examples(finetune_task(n_train=32, n_test=0)[0], tokenizer)
    dataset = StackDataset(
        input_ids=data.input_ids, attention_mask=data.attention_mask, labels=data.labels
    )
    model = QWTHNModel(build_tiny_model(tokenizer), QWTHNConfig(rank=4, n_qubits=2, n_layers=1))
    args = TrainingArguments(
        str(tmp_path), max_steps=4, save_steps=2, eval_strategy="steps", eval_steps=2,
        learning_rate=5e-2, load_best_model_at_end=True, metric_for_best_model="loss",
        greater_is_better=True,  # "best" = the higher eval loss: the earlier checkpoint
        report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = QWTHNTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")
    best = load_file(tmp_path / "checkpoint-2" / "adapter_model.safetensors")
    last = load_file(tmp_path / "checkpoint-4" / "adapter_model.safetensors")
    now = model.adapter_state_dict()
    assert all(torch.equal(now[k], v) for k, v in best.items())
    assert any(not torch.equal(now[k], v) for k, v in last.items())


def test_several_answers_need_a_template_with_generation_marks(tmp_path, capsys):
    """SmolLM2's case: a chat template TRL cannot mark assistant turns in."""
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    folder = tmp_path / "hf-model"
    build_tiny_model(tokenizer, "llama", seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": CHAT2}) + "\n")
    argv = [*TINY_ADAPTER, "--model", str(folder), "--data", str(chat), "--quiet"]
    example, common = load_example("train_with_trl"), load_example("example_common")
    assert common.run_main(example.run, [*argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not training-compatible" in err and "one-answer conversations work" in err
