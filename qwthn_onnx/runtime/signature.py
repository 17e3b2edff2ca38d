"""Input and output names of exported causal LMs (Optimum / onnxruntime-genai conventions).

One graph serves prefill and decode: the past key/values go in (with ``past_sequence_length``
0 for the prefill) and the present ones (past + new) come out::

    input_ids        int64  [batch, sequence_length]
    attention_mask   int64  [batch, past_sequence_length + sequence_length]
    position_ids     int64  [batch, sequence_length]
    past_key_values.N.key / .value   [batch, num_kv_heads, past_sequence_length, head_dim]
    -> logits        [batch, sequence_length, vocab_size]
       present.N.key / .value        [batch, num_kv_heads, total_sequence_length, head_dim]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "ATTENTION_MASK",
    "INPUT_IDS",
    "LOGITS",
    "POSITION_IDS",
    "empty_cache",
    "past_names",
    "position_ids",
    "present_names",
]

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"


def past_names(layer: int) -> tuple[str, str]:
    """``(key, value)`` input names of decoder layer ``layer``'s cache."""
    return f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"


def present_names(layer: int) -> tuple[str, str]:
    """``(key, value)`` output names of decoder layer ``layer``'s updated cache."""
    return f"present.{layer}.key", f"present.{layer}.value"


def empty_cache(cache: Mapping[str, int], batch: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    """Past key/values of length 0 for every layer (a prefill); ``cache`` is the export's
    ``{num_layers, num_kv_heads, head_dim}``."""
    shape = (batch, cache["num_kv_heads"], 0, cache["head_dim"])
    return {
        name: np.zeros(shape, dtype=dtype)
        for layer in range(cache["num_layers"])
        for name in past_names(layer)
    }


def position_ids(mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Positions of the last ``new_tokens`` tokens under ``mask`` [batch, total]: they count the
    attended tokens, so a left-padded row starts at 0; padding gets 1 (as transformers does)."""
    positions = np.where(mask == 0, 1, np.cumsum(mask, axis=-1, dtype=np.int64) - 1)
    return positions[:, mask.shape[1] - new_tokens :]
