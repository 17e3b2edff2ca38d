"""The embedded default: everything the main job needs, built offline in seconds.

- a character-level tokenizer (``tokenizers`` WordLevel), no download;
- tiny causal LMs of the Llama, Qwen2 and GPT-2 families built from configs;
- generated arithmetic tasks whose accuracy is measurable (exact match of the answer).

The demo pre-trains the tiny base on one task (``add``: "23+58=" -> "81"), then fine-tunes QWTHN
adapters on a notation the base has never seen for the same skill (``and_add``: "23&58=" -> "81",
read "23 and 58"), so the adaptation is real and measurable: held-out exact match goes from
9.5% to 78.0% at seed 0 on a 2-core Intel Xeon (3.5% to 75.0% on an AMD EPYC: the CPUs round
float32 sums differently; ``benchmarks/quality.py`` compares it with LoRA over seeds).
A harder variant (``add_words``, a whole new phrasing) is out of reach of q/v adapters of either
kind in a few hundred steps, which is why the demo does not use it.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from qwthn_onnx.data import Example, tokenize_examples
from qwthn_onnx.training import TrainingArguments, TrainingResult, train

__all__ = [
    "DEMO_ADAPTER",
    "DEMO_ARCHITECTURES",
    "DEMO_TRAINING",
    "TASKS",
    "build_char_tokenizer",
    "build_tiny_model",
    "exact_match",
    "finetune_task",
    "make_task",
    "pretrain_base",
]

_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
DEMO_ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase + " +-*/&=?:.,!'\""


def build_char_tokenizer(alphabet: str = DEMO_ALPHABET) -> Any:
    """A character-level ``PreTrainedTokenizerFast``: one token per character of ``alphabet``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*_SPECIALS, *dict.fromkeys(alphabet)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


# The demo uses a smaller circuit than the paper's 10 qubits x 10 layers so the whole
# job takes about a minute on two cores; pass --n-qubits/--n-layers to change it.
DEMO_ADAPTER = {"n_qubits": 4, "n_layers": 2, "rank": 8, "alpha": 16.0}
DEMO_TRAINING = {"steps": 600, "learning_rate": 1e-2}
DEMO_ARCHITECTURES: tuple[str, ...] = ("gpt2", "llama", "qwen2")


def _tiny_config(architecture: str, tokenizer: Any) -> Any:
    """A 2-layer, 64-wide config; Llama and Qwen2 also get grouped-query attention (kv 2)."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if architecture == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **common)
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[architecture]
    return config_class(
        hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, **common,
    )  # fmt: skip


def build_tiny_model(tokenizer: Any, architecture: str = "llama", seed: int = 0) -> nn.Module:
    """A randomly initialised tiny causal LM (~100k parameters) for ``tokenizer``'s vocab."""
    from transformers import AutoModelForCausalLM

    if architecture not in DEMO_ARCHITECTURES:
        raise ValueError(
            f"unknown demo architecture {architecture!r}; choose from {sorted(DEMO_ARCHITECTURES)}"
        )
    config = _tiny_config(architecture, tokenizer)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


TASKS: dict[str, Callable[[int, int], Example]] = {
    "add": lambda a, b: Example(f"{a}+{b}=", str(a + b)),
    "and_add": lambda a, b: Example(f"{a}&{b}=", str(a + b)),
    "add_words": lambda a, b: Example(f"{a} plus {b} is ", str(a + b)),
}


def make_task(
    task: str, n_train: int, n_test: int, seed: int = 0, max_operand: int = 99
) -> tuple[list[Example], list[Example]]:
    """Train and held-out examples of ``task`` over operand pairs that never overlap."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    if n_train + n_test > len(pairs):
        raise ValueError(f"{task}: only {len(pairs)} operand pairs for {n_train}+{n_test}")
    random.Random(seed).shuffle(pairs)
    make = TASKS[task]
    test = [make(a, b) for a, b in pairs[:n_test]]
    train = [make(a, b) for a, b in pairs[n_test : n_test + n_train]]
    return train, test


@torch.no_grad()
def exact_match(
    model: nn.Module, tokenizer: Any, examples: Sequence[Example], max_new_tokens: int = 6
) -> float:
    """Fraction of examples whose greedy continuation (up to eos) equals the completion.

    Prompts are batched by token length, so no padding enters the computation.
    """
    was_training = model.training
    model.eval()
    groups: dict[int, list[tuple[list[int], str]]] = {}
    for ex in examples:
        ids = [tokenizer.bos_token_id, *tokenizer.encode(ex.prompt, add_special_tokens=False)]
        groups.setdefault(len(ids), []).append((ids, ex.completion))
    correct = 0
    for items in groups.values():
        prompt = torch.tensor([ids for ids, _ in items])
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts = tokenizer.batch_decode(out[:, prompt.shape[1] :], skip_special_tokens=False)
        for text, (_, answer) in zip(texts, items, strict=True):
            correct += text.split(tokenizer.eos_token)[0] == answer
    model.train(was_training)
    return correct / len(examples)


def pretrain_base(
    base: nn.Module,
    tokenizer: Any,
    steps: int = 1500,
    n_train: int = 2000,
    n_test: int = 200,
    seed: int = 0,
    progress: bool = True,
) -> tuple[TrainingResult, float]:
    """Fully train the tiny base on ``add``; returns the run and held-out exact match."""
    examples, test = make_task("add", n_train, n_test, seed=seed + 1)
    result = train(
        base,
        tokenize_examples(examples, tokenizer),
        TrainingArguments(steps=steps, batch_size=64, learning_rate=3e-3, seed=seed),
        description="pre-train base",
        progress=progress,
    )
    return result, exact_match(base, tokenizer, test)


def finetune_task(
    n_train: int = 2000, n_test: int = 200, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """The demo's fine-tuning data: ``and_add`` ("23&58=" -> "81"), train and held-out."""
    return make_task("and_add", n_train, n_test, seed=seed + 2)
