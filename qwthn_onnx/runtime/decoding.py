"""Independent sequences decoded together: one onnxruntime call per step for all of them.

A server's generation requests arrive at different times with prompts of different lengths, so
``generate_tokens`` (one batch, prompts padded together, finished together) does not fit them.
Here each ``DecodingSequence`` keeps its own unpadded KV cache, and ``BatchDecoder.step`` gives
every sequence its next token: a new sequence's prompt is prefilled alone (once), and the
sequences past their prefill run as batches of one new token each, their caches left-padded with
zeros to the longest and the padding masked out. A masked position adds exact zeros to
attention, so each sequence gets the tokens it would get alone, up to float rounding in the
larger matrix products (greedy decoding can differ only where two logits tie within ~1e-6).

On a CPU a decode step is bound by reading the weights, not by arithmetic: 32 sequences in one
call cost little more than one alone. Padding the caches costs a copy of them per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from qwthn_onnx.runtime.generation import GenerationConfig, StepFunction, next_tokens
from qwthn_onnx.runtime.signature import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    empty_cache,
    past_names,
    present_names,
)

__all__ = ["BatchDecoder", "DecodingSequence"]


@dataclass(eq=False)
class DecodingSequence:
    """One sequence: its prompt, sampling settings and, once prefilled, its cache and last token."""

    prompt: Sequence[int]
    config: GenerationConfig
    rng: np.random.Generator = field(init=False)
    cache: dict[str, np.ndarray] | None = None  # past key/values [1, heads, length, head_dim]
    length: int = 0  # tokens in the cache
    last: int | None = None  # the latest token: the next input

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("a sequence needs at least one prompt token")
        self.config.validate()
        self.rng = np.random.default_rng(self.config.seed)


class BatchDecoder:
    """Steps DecodingSequences of one model.

    Args:
        run: one forward pass of the exported model (feed -> outputs by name).
        cache: the export's ``{num_layers, num_kv_heads, head_dim}``.
        cache_dtype: the dtype of its past key/values.
        max_batch: the most sequences one decode call holds; 1 runs every sequence alone.
        observe: called with the number of sequences of each decode call (for metrics).
    """

    def __init__(
        self,
        run: StepFunction,
        cache: Mapping[str, int],
        cache_dtype: np.dtype,
        max_batch: int,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._run = run
        self._cache = dict(cache)
        self._dtype = cache_dtype
        self._names = [
            (past, present)
            for layer in range(cache["num_layers"])
            for past, present in zip(past_names(layer), present_names(layer), strict=True)
        ]
        self.max_batch = max_batch
        self._observe = observe

    def step(self, sequences: Sequence[DecodingSequence]) -> list[int | Exception]:
        """Each sequence's next token, in order, or the exception its forward pass raised.

        A batch that fails runs again one sequence at a time, so a failure stays with the
        sequence that caused it; a failed sequence is left as it was.
        """
        outcome: dict[int, int | Exception] = {}
        ongoing = []
        for i, sequence in enumerate(sequences):
            if sequence.cache is None:
                outcome[i] = self._attempt([sequence], self._prefill)[0]
            else:
                ongoing.append(i)
        for start in range(0, len(ongoing), self.max_batch):
            chunk = ongoing[start : start + self.max_batch]
            batch = [sequences[i] for i in chunk]
            results = self._attempt(batch, self._decode)
            if len(batch) > 1 and any(isinstance(r, Exception) for r in results):
                results = [self._attempt([s], self._decode)[0] for s in batch]
            outcome.update(zip(chunk, results, strict=True))
        return [outcome[i] for i in range(len(sequences))]

    @staticmethod
    def _attempt(
        batch: list[DecodingSequence], method: Callable[[list[DecodingSequence]], list[int]]
    ) -> list[int | Exception]:
        try:
            return method(batch)
        except Exception as e:  # onnxruntime's own exception types, among others
            return [e] * len(batch)

    def _prefill(self, batch: list[DecodingSequence]) -> list[int]:
        (sequence,) = batch
        ids = np.asarray([sequence.prompt], dtype=np.int64)
        n = ids.shape[1]
        feed = {
            INPUT_IDS: ids,
            ATTENTION_MASK: np.ones((1, n), np.int64),
            POSITION_IDS: np.arange(n, dtype=np.int64)[None],
            **empty_cache(self._cache, 1, self._dtype),
        }
        outputs = self._run(feed)
        token = self._sample(sequence, outputs[LOGITS][:, -1])
        sequence.cache = {past: outputs[present] for past, present in self._names}
        sequence.length, sequence.last = n, token
        return [token]

    def _decode(self, batch: list[DecodingSequence]) -> list[int]:
        longest = max(s.length for s in batch)
        pads = [longest - s.length for s in batch]
        mask = np.ones((len(batch), longest + 1), np.int64)
        for row, pad in enumerate(pads):
            mask[row, :pad] = 0
        feed = {
            INPUT_IDS: np.array([[s.last] for s in batch], np.int64),
            ATTENTION_MASK: mask,
            POSITION_IDS: np.array([[s.length] for s in batch], np.int64),
        }
        if len(batch) == 1:  # no padding: the cache goes in as it is
            feed.update(batch[0].cache)
        else:
            heads, head_dim = self._cache["num_kv_heads"], self._cache["head_dim"]
            for past, _ in self._names:
                padded = np.zeros((len(batch), heads, longest, head_dim), self._dtype)
                for row, (s, pad) in enumerate(zip(batch, pads, strict=True)):
                    padded[row, :, pad:] = s.cache[past][0]
                feed[past] = padded
        outputs = self._run(feed)
        if self._observe is not None:
            self._observe(len(batch))
        tokens = [self._sample(s, outputs[LOGITS][row, -1:]) for row, s in enumerate(batch)]
        for row, (s, pad) in enumerate(zip(batch, pads, strict=True)):
            # A copy of the row: a view would keep the whole batch's arrays alive.
            s.cache = {
                past: outputs[present][row : row + 1, :, pad:].copy()
                if len(batch) > 1
                else outputs[present]
                for past, present in self._names
            }
            s.length += 1
            s.last = tokens[row]
        return tokens

    @staticmethod
    def _sample(sequence: DecodingSequence, logits: np.ndarray) -> int:
        """The next token from ``logits`` [1, vocab], with the sequence's settings and rng."""
        return int(next_tokens(logits, sequence.config, sequence.rng)[0])
