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

__all__ = [
    "ATTENTION_MASK",
    "INPUT_IDS",
    "LOGITS",
    "POSITION_IDS",
    "past_names",
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
