import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from qwthn_onnx import QWTHNConfig, QWTHNModel, TrainingArguments, native, tokenize_examples, train
from qwthn_onnx.data import Example
from qwthn_onnx.demo import exact_match, make_task
from qwthn_onnx.training import LR_SCHEDULERS, TrainingError, evaluate

SMALL = {"n_qubits": 3, "n_layers": 2, "rank": 4, "alpha": 16.0}


def _run(tiny_model, tokenizer, seed):
    examples, _ = make_task("add_words", 64, 8, seed=0)
    model = QWTHNModel(tiny_model("llama"), QWTHNConfig(**SMALL))
    result = train(
        model,
        tokenize_examples(examples, tokenizer),
        TrainingArguments(steps=6, batch_size=8, seed=seed, warmup_steps=2),
        progress=False,
    )
    return result, model.adapter_state_dict()


def test_same_seed_gives_identical_runs(tiny_model, tokenizer):
    r1, w1 = _run(tiny_model, tokenizer, seed=3)
    r2, w2 = _run(tiny_model, tokenizer, seed=3)
    r3, _ = _run(tiny_model, tokenizer, seed=4)
    assert r1.losses == r2.losses
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert r1.losses != r3.losses


def test_training_reduces_loss(tiny_model, tokenizer):
    examples, _ = make_task("add", 256, 8, seed=0)
    model = tiny_model("gpt2")  # full training of the base: the loop trains what requires grad
    result = train(
        model,
        tokenize_examples(examples, tokenizer),
        TrainingArguments(steps=60, batch_size=32),
        progress=False,
    )
    assert len(result.losses) == 60
    assert result.final_loss < 0.6 * result.losses[0]
    assert result.trainable_parameters == sum(p.numel() for p in model.parameters())


def test_exact_match_counts_correct_answers(tokenizer):
    class Oracle(torch.nn.Module):
        """Answers '7' then eos whatever the prompt: right only where the answer is 7."""

        def generate(self, input_ids, max_new_tokens, **_):
            tail = torch.tensor([tokenizer.convert_tokens_to_ids("7"), tokenizer.eos_token_id])
            return torch.cat([input_ids, tail.expand(input_ids.shape[0], 2)], dim=1)

    examples = [
        Example("3+4=", "7"),
        Example("1+1=", "2"),
        Example("10+2=", "12"),
        Example("0+7=", "7"),
    ]
    assert exact_match(Oracle(), tokenizer, examples) == 0.5


def test_invalid_arguments_and_frozen_models_are_refused(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="steps must be >= 1"):
        TrainingArguments(steps=0)
    model = tiny_model("llama").requires_grad_(False)
    examples, _ = make_task("add", 8, 2)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(
            model,
            tokenize_examples(examples, tokenizer),
            TrainingArguments(steps=1),
            progress=False,
        )


# --- options of the loop ------------------------------------------------------------------------

TINY = {"n_qubits": 2, "n_layers": 1, "rank": 4, "alpha": 16.0}


def _tiny_data(tokenizer, n=12):
    """Rows whose trained-token counts differ a lot, so token weighting matters."""
    examples = [
        Example(f"{i}+{i}=", str(2 * i) * (1 + 5 * (i % 3)), source=f"row {i}") for i in range(n)
    ]
    return tokenize_examples(examples, tokenizer)


def _adapted(tiny_model, **config):
    torch.manual_seed(0)
    return QWTHNModel(tiny_model("llama"), QWTHNConfig(**{**TINY, **config}))


def test_accumulated_micro_batches_equal_one_big_batch(tiny_model, tokenizer):
    data = _tiny_data(tokenizer)
    grads, losses = [], []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        model = _adapted(tiny_model)
        args = TrainingArguments(
            steps=1,
            batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_grad_norm=0.0,
        )
        losses.append(train(model, data, args, progress=False).losses[0])
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-8)

    # The two micro-batches hold different numbers of trained tokens, so the mean of their mean
    # losses (what naive accumulation computes) has another gradient: the test can tell.
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    halves = [data.batch(order[:2]), data.batch(order[2:4])]
    assert len({int((b["labels"][:, 1:] != -100).sum()) for b in halves}) == 2
    model = _adapted(tiny_model)
    model.train()
    (sum(model(**b).loss for b in halves) / 2).backward()
    naive = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(not torch.allclose(naive[n], grads[0][n], rtol=1e-3) for n in naive)


def test_epochs_set_the_number_of_optimizer_steps(tiny_model, tokenizer):
    data = _tiny_data(tokenizer, n=20)
    args = TrainingArguments(epochs=1.5, batch_size=4, gradient_accumulation_steps=2)
    assert args.steps is None and args.total_steps(len(data)) == 4  # ceil(1.5 * 20 / 8)
    result = train(_adapted(tiny_model), data, args, progress=False)
    assert len(result.losses) == len(result.learning_rates) == 4
    assert TrainingArguments().steps == 200  # neither given: the default number of steps


def test_schedules_follow_transformers_and_the_default_is_unchanged(tiny_model, tokenizer):
    from transformers import get_scheduler

    data = _tiny_data(tokenizer, n=8)
    for name in LR_SCHEDULERS:
        args = TrainingArguments(steps=6, batch_size=4, warmup_steps=2, lr_scheduler=name)
        lrs = train(_adapted(tiny_model), data, args, progress=False).learning_rates
        if name == "warmup_cosine":  # the loop's schedule before options existed, exactly
            expected = [1.5e-3, 3e-3] + [
                3e-3 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in range(2, 6)
            ]
        else:
            optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
            scheduler = get_scheduler(name, optimizer, num_warmup_steps=2, num_training_steps=6)
            expected = []
            for _ in range(6):
                expected.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
        assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15), name


def test_evaluation_is_the_token_weighted_loss_and_its_perplexity(tiny_model, tokenizer):
    data = _tiny_data(tokenizer, n=7)
    model = _adapted(tiny_model)
    metrics = evaluate(model, data, batch_size=3)
    with torch.no_grad():  # directly: cross-entropy summed over every trained token
        logits = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
        labels = data.labels[:, 1:]
        total = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"
        )
    tokens = int((labels != -100).sum())
    assert metrics["tokens"] == tokens
    assert metrics["loss"] == pytest.approx(total.item() / tokens, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-12)
    assert evaluate(model, data, batch_size=1)["loss"] == pytest.approx(metrics["loss"], rel=1e-5)

    args = TrainingArguments(steps=5, batch_size=4, eval_every=2)
    result = train(model, _tiny_data(tokenizer), args, progress=False, eval_data=data)
    assert [e["step"] for e in result.evaluations] == [2, 4, 5]  # every 2 steps and at the end
    assert result.evaluations[-1] == {"step": 5, **evaluate(model, data, batch_size=4)}
    assert result.evaluations[-1]["loss"] < metrics["loss"]
    assert result.to_dict()["evaluations"] == result.evaluations
    with pytest.raises(TrainingError, match="eval_every needs eval_data"):
        train(model, data, args, progress=False)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_bf16_autocast_trains_while_the_adapter_stays_float32(tiny_model, tokenizer, backend):
    if backend == "cpp" and not native.available():
        pytest.skip("the C++ kernel is not built")
    model = _adapted(tiny_model, quantum_backend=backend)
    seen = {}
    layer = next(iter(model.adapter_layers().values()))
    layer.qwthn.register_forward_hook(lambda m, i, out: seen.__setitem__("adapter", out.dtype))
    model.base_model.lm_head.register_forward_hook(
        lambda m, i, out: seen.__setitem__("lm_head", out.dtype)
    )
    data = _tiny_data(tokenizer, n=4)  # one batch, learnt by heart
    before = evaluate(model, data)["loss"]
    args = TrainingArguments(
        steps=10, batch_size=4, learning_rate=3e-2, warmup_steps=0, mixed_precision="bf16"
    )
    result = train(model, data, args, progress=False)
    assert seen == {"adapter": torch.float32, "lm_head": torch.bfloat16}
    assert result.losses[-1] < result.losses[0] - 0.1
    assert evaluate(model, data, mixed_precision="bf16")["loss"] < before - 0.1


def test_bf16_where_autocast_is_unavailable_is_refused(tiny_model, tokenizer, monkeypatch):
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    args = TrainingArguments(steps=1, mixed_precision="bf16")
    with pytest.raises(TrainingError, match="'bf16' is not supported on this cpu device"):
        train(_adapted(tiny_model), _tiny_data(tokenizer), args, progress=False)


def test_non_finite_loss_stops_training(tokenizer):
    class Diverged(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, **batch):
            return SimpleNamespace(loss=self.w * float("nan"))

    with pytest.raises(TrainingError, match="loss became nan at step 0; lower the learning"):
        train(Diverged(), _tiny_data(tokenizer), TrainingArguments(steps=3), progress=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": 5, "epochs": 1.0}, "give steps or epochs, not both"),
        ({"epochs": 0}, "epochs must be > 0"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be >= 1"),
        ({"learning_rate": float("nan")}, "learning_rate must be > 0"),
        ({"lr_scheduler": "reduce_lr_on_plateau"}, "is not one of warmup_cosine, linear"),
        ({"mixed_precision": "fp16"}, "mixed_precision 'fp16' is not one of no, bf16"),
        ({"eval_every": 0}, "eval_every must be >= 1"),
        ({"checkpoint_every": 5}, "checkpoint_every needs checkpoint_dir"),
        ({"save_total_limit": 2}, "save_total_limit needs checkpoint_every"),
    ],
)
def test_bad_options_are_refused_with_the_field_named(options, message):
    with pytest.raises(TrainingError, match=re.escape(message)):
        TrainingArguments(**options)


DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def test_the_python_example_of_the_docs_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOCS), "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("3 {'step': 3, 'loss': ")  # as the example's comment says
    checkpoints = tmp_path / "runs" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-3"]
