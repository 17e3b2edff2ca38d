"""Fine-tuning data: text and JSONL files, and their tokenisation for causal-LM training.

Formats (one example per line):
- ``.txt`` (any non-JSONL name): each non-empty line is a text example, trained on whole.
- ``.jsonl``: ``{"text": ...}`` (trained on whole) or ``{"prompt": ..., "completion": ...}``
  (loss on the completion only, as users of instruction tuning expect).
- ``.json``: the same records, one per line or as one JSON array.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DataError",
    "Example",
    "TokenizedData",
    "load_examples",
    "split_examples",
    "tokenize_examples",
]


class DataError(ValueError):
    """A dataset that is missing, empty or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """A training example: the model learns ``completion`` given ``prompt`` (which may be "")."""

    prompt: str
    completion: str


def _parse_jsonl_line(path: Path, lineno: int, line: str) -> Example:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    return _parse_record(f"{path}:{lineno}", record)


def _parse_json_array(path: Path, text: str) -> list[Example]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    return [_parse_record(f"{path}: item {i}", r) for i, r in enumerate(records)]


def _parse_record(where: str, record: Any) -> Example:
    """One ``{"text"}`` or ``{"prompt", "completion"}`` record; ``where`` names it in errors."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "text" in record:
        fields = {"prompt": "", "completion": record["text"]}
    elif "prompt" in record and "completion" in record:
        fields = {"prompt": record["prompt"], "completion": record["completion"]}
    else:
        raise DataError(
            f'{where}: needs a "text" key or "prompt" and "completion" keys, found {sorted(record)}'
        )
    for key, value in fields.items():
        if not isinstance(value, str):
            raise DataError(f'{where}: "{key}" must be a string, got {type(value).__name__}')
    if not fields["completion"]:
        raise DataError(f"{where}: empty completion/text; nothing to learn from")
    return Example(**fields)


def load_examples(path: str | Path) -> list[Example]:
    """Read a ``.txt`` or ``.jsonl`` dataset; raise DataError naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset file not found")
    if not path.is_file():
        raise DataError(f"{path}: is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); convert it to UTF-8") from e
    suffix = path.suffix.lower()
    if suffix == ".json" and text.lstrip().startswith("["):
        examples = _parse_json_array(path, text)
        if not examples:
            raise DataError(f"{path}: the dataset is empty (an empty JSON array)")
        return examples
    jsonl = suffix in (".jsonl", ".json")
    examples = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if jsonl:
            examples.append(_parse_jsonl_line(path, lineno, line))
        else:
            examples.append(Example("", line))
    if not examples:
        raise DataError(f"{path}: the dataset is empty (no non-blank lines)")
    return examples


def split_examples(
    examples: Sequence[Example], validation_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Shuffle with ``seed`` and split off ``validation_fraction`` as (train, validation).

    Deterministic for a given seed, so a resumed run evaluates on the same held-out examples.
    The validation side gets ``round(fraction * n)`` examples; both sides must be non-empty.
    """
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)):
        raise DataError(
            f"validation fraction must be a number in (0, 1), got {validation_fraction!r}"
        )
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(
            f"validation fraction must be in (0, 1) (e.g. 0.1), got {validation_fraction}"
        )
    n = len(examples)
    n_val = round(validation_fraction * n)
    if n_val == 0 or n_val == n:
        side = "validation" if n_val == 0 else "training"
        raise DataError(
            f"a validation fraction of {validation_fraction} of {n} examples leaves the {side} "
            "set empty; use more examples, another fraction, or a separate validation file"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    train = [examples[i] for i in sorted(order[n_val:])]
    validation = [examples[i] for i in sorted(order[:n_val])]
    return train, validation


@dataclass
class TokenizedData:
    """Right-padded tensors; ``labels`` is -100 on prompt and padding positions."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows in ``index``, trimmed to their longest sequence (saves compute)."""
        mask = self.attention_mask[index]
        width = int(mask.sum(dim=1).max())
        return {
            "input_ids": self.input_ids[index, :width],
            "attention_mask": mask[:, :width],
            "labels": self.labels[index, :width],
        }


def tokenize_examples(
    examples: Sequence[Example], tokenizer: Any, max_length: int = 256
) -> TokenizedData:
    """Tokenise as ``[bos] prompt completion [eos]``, masking the prompt out of the loss.

    Examples longer than ``max_length`` are truncated (the end, including eos, is dropped).
    """
    if not examples:
        raise DataError("no examples to tokenize")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    rows = []
    for ex in examples:
        prompt = bos + tokenizer.encode(ex.prompt, add_special_tokens=False)
        completion = tokenizer.encode(ex.completion, add_special_tokens=False) + eos
        ids = (prompt + completion)[:max_length]
        labels = ([-100] * len(prompt) + completion)[:max_length]
        rows.append((ids, labels))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
    if not (labels != -100).any():
        raise DataError(f"every token is masked out (max_length={max_length} too small?)")
    return TokenizedData(input_ids, attention, labels)
