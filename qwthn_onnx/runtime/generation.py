"""Text generation with the KV cache of an exported causal LM: greedy and sampling.

The loop follows transformers' ``generate`` where it matters for equal results: prompts of
unequal length are left-padded, positions count real tokens only (``cumsum(mask) - 1``, padding
at 1), and greedy decoding takes the first maximal logit. Sampling applies temperature, then
top-k, then top-p (nucleus), then draws with a seeded numpy generator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from qwthn_onnx.runtime.signature import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    empty_cache,
    past_names,
    position_ids,
    present_names,
)

__all__ = [
    "GenerationConfig",
    "GenerationError",
    "StepFunction",
    "generate_tokens",
    "next_tokens",
]

# feed -> outputs by name (an onnxruntime session's run, or anything with its contract)
StepFunction = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class GenerationError(ValueError):
    """Bad generation parameters or prompts; the message names the parameter."""


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1: no nucleus filter
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def validate(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise GenerationError(f"max_new_tokens must be an int, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 0:
            raise GenerationError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise GenerationError(f"temperature must be > 0, got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise GenerationError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")


def _filtered_probabilities(logits: np.ndarray, config: GenerationConfig) -> np.ndarray:
    """Row-wise sampling distribution after temperature, top-k and top-p."""
    scores = logits.astype(np.float64) / config.temperature
    if config.top_k and config.top_k < scores.shape[-1]:
        kth = np.partition(scores, -config.top_k, axis=-1)[:, -config.top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if config.top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        drop_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs >= config.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def next_tokens(
    logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator
) -> np.ndarray:
    """The next token of each row of ``logits`` [batch, vocab]: the first maximal logit, or a
    draw (one ``rng.random`` per row) from the filtered distribution when sampling."""
    if not config.do_sample:
        return logits.argmax(axis=-1)
    probs = _filtered_probabilities(logits, config)
    cumulative = np.cumsum(probs, axis=-1)
    draws = rng.random((probs.shape[0], 1))
    return np.minimum((cumulative < draws * cumulative[:, -1:]).sum(axis=-1), probs.shape[1] - 1)


def generate_tokens(
    step: StepFunction,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    *,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    cache_dtype: np.dtype,
    pad_token_id: int,
    max_length: int | None = None,
) -> Iterator[list[int | None]]:
    """Yield, per step, each prompt's new token (None once that sequence has finished).

    A sequence finishes at a stop token (which is yielded) or after ``max_new_tokens``; the
    whole batch also stops when ``max_length`` (the model's context) would be exceeded.
    """
    config.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenerationError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    if max_length is not None and longest > max_length:
        raise GenerationError(
            f"the prompt has {longest} tokens but the model's context is {max_length}"
        )
    batch = len(prompts)
    ids = np.full((batch, longest), pad_token_id, dtype=np.int64)
    mask = np.zeros((batch, longest), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = prompt
        mask[row, longest - len(prompt) :] = 1
    geometry = {"num_layers": num_layers, "num_kv_heads": num_kv_heads, "head_dim": head_dim}
    past = empty_cache(geometry, batch, cache_dtype)
    rng = np.random.default_rng(config.seed)
    stop = set(config.stop_token_ids)
    done = np.zeros(batch, dtype=bool)
    new_ids = ids
    for _ in range(config.max_new_tokens):
        if max_length is not None and mask.shape[1] >= max_length:
            return
        positions = position_ids(mask, new_ids.shape[1])
        outputs = step({INPUT_IDS: new_ids, ATTENTION_MASK: mask, POSITION_IDS: positions, **past})
        tokens = next_tokens(outputs[LOGITS][:, -1, :], config, rng)
        tokens = np.where(done, pad_token_id, tokens)
        yield [None if d else int(t) for t, d in zip(tokens, done, strict=True)]
        done |= np.isin(tokens, list(stop))
        if done.all():
            return
        for layer in range(num_layers):
            for past_name, present_name in zip(
                past_names(layer), present_names(layer), strict=True
            ):
                past[past_name] = outputs[present_name]
        new_ids = tokens[:, None].astype(np.int64)
        # A finished sequence's new position is masked: its output is thrown away, and a model
        # whose quantum layers run on a QPU then sends no circuits for it.
        mask = np.concatenate([mask, (~done)[:, None].astype(np.int64)], axis=1)
