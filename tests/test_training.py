import pytest
import torch

from qwthn_onnx import QWTHNConfig, QWTHNModel, TrainingArguments, tokenize_examples, train
from qwthn_onnx.demo import exact_match, make_task

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

    from qwthn_onnx.data import Example

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
