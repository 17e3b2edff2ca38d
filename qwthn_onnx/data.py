"""Fine-tuning data: text, instruction and chat files, and their tokenisation for causal LMs.

Record formats (``docs/data.md`` has examples of each):
- ``.txt`` (any name but ``.json``/``.jsonl``): each non-blank line is a text example.
- ``.jsonl`` / ``.json`` (one record per line, or one JSON array), per record:
  ``{"text"}`` and ``{"prompt", "completion"}`` (plain records), alpaca
  ``{"instruction", "input"?, "output", "system"?}``, OpenAI ``{"messages": [...]}``,
  ShareGPT ``{"conversations": [...]}`` and TRL's conversational ``{"prompt": [...],
  "completion": [...]}`` (conversation records). A file holds one family or the other.

Plain records train ``[bos] prompt completion [eos]`` with the loss on the completion.
Conversations are rendered with the tokenizer's chat template (or a plain ``Role: content``
layout) and the loss falls on trained assistant turns only, end-of-turn marker included.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qwthn_onnx.chat import (
    CHAT_TEMPLATE_MODES,
    ROLE_ALIASES,
    ChatTemplateMode,
    DataError,
    Message,
    chat_prompt_ids,
    plain_rows,
    render_conversation,
    specials,
    use_template,
)

__all__ = [
    "CHAT_TEMPLATE_MODES",
    "ROLE_ALIASES",
    "DataError",
    "Example",
    "Message",
    "TokenizedData",
    "chat_prompt_ids",
    "load_examples",
    "split_examples",
    "tokenize_examples",
]

_FORMATS = (
    '"text" key, "prompt" and "completion" keys, "instruction" and "output" (alpaca), '
    '"messages" (OpenAI chat) or "conversations" (ShareGPT)'
)


@dataclass(frozen=True)
class Example:
    """A training example: ``completion`` given ``prompt`` (may be ""), or a conversation.

    ``Example(prompt, completion)`` is a plain record; ``Example(messages=(...))`` a
    conversation (then prompt and completion stay empty). ``source`` ("file:line") names the
    record in errors raised after loading; it takes no part in equality.
    """

    prompt: str = ""
    completion: str = ""
    messages: tuple[Message, ...] = ()
    source: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.messages:
            return
        if self.prompt or self.completion:
            raise DataError("an Example holds either prompt/completion or messages, not both")
        if not any(m.trained for m in self.messages):
            raise DataError("a conversation needs at least one trained assistant turn")


# ---------------------------------------------------------------------------------------------
# Loading


def load_examples(path: str | Path) -> list[Example]:
    """Read a ``.txt``, ``.jsonl`` or ``.json`` dataset; raise DataError naming file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset file not found")
    if not path.is_file():
        raise DataError(f"{path}: is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); convert it to UTF-8") from e
    suffix = path.suffix.lower()
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
        if not records:
            raise DataError(f"{path}: the dataset is empty (an empty JSON array)")
        examples = [_parse_record(f"{path}: item {i}", r) for i, r in enumerate(records)]
    else:
        examples = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            if suffix in (".jsonl", ".json"):
                examples.append(_parse_record(where, _json_line(where, line, suffix)))
            else:
                examples.append(Example("", line, source=where))
        if not examples:
            raise DataError(f"{path}: the dataset is empty (no non-blank lines)")
    _check_one_family(examples)
    return examples


def _json_line(where: str, line: str, suffix: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        hint = "; a .json file holds one JSON array, or one record per line" * (suffix == ".json")
        raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno}){hint}") from e


def _check_one_family(examples: list[Example]) -> None:
    """Refuse files mixing plain records and conversations: they would train two layouts."""
    first = examples[0]
    for ex in examples:
        if bool(ex.messages) != bool(first.messages):
            chat, plain = (ex, first) if ex.messages else (first, ex)
            raise DataError(
                f"{ex.source}: the file mixes plain records ({plain.source}: text or "
                f"prompt/completion strings) with conversations ({chat.source}: messages, "
                "conversations, alpaca or prompt/completion message lists); they are trained "
                "in different layouts, so put them in separate files or convert one kind"
            )


def _parse_record(where: str, record: Any) -> Example:
    """Detect the record's format by its keys (first match in the documented order)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        turns = _parse_turns(where, record["messages"], "messages", trained=True)
        return _conversation(where, record, turns)
    if "conversations" in record:
        turns = _parse_turns(where, record["conversations"], "conversations", trained=True)
        return _conversation(where, record, turns)
    if "instruction" in record and "output" in record:
        return _parse_alpaca(where, record)
    if "prompt" in record and "completion" in record:
        prompt, completion = record["prompt"], record["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):
            turns = _parse_turns(where, prompt, "prompt", trained=False)
            turns += _parse_turns(where, completion, "completion", trained=True)
            return _conversation(where, record, turns)
        fields = {"prompt": prompt, "completion": completion}
    elif "text" in record:
        fields = {"prompt": "", "completion": record["text"]}
    else:
        raise DataError(f"{where}: needs a {_FORMATS}; found keys {sorted(record)}")
    for key, value in fields.items():
        if not isinstance(value, str):
            raise DataError(
                f'{where}: "{key}" must be a string (or both prompt and completion lists of '
                f"messages), got {type(value).__name__}"
            )
    if not fields["completion"]:
        raise DataError(f"{where}: empty completion/text; nothing to learn from")
    return Example(**fields, source=where)


def _string_field(where: str, record: dict, key: str, required: bool) -> str:
    value = record.get(key, "")
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataError(f'{where}: "{key}" must be a string, got {type(value).__name__}')
    if required and not value.strip():
        raise DataError(f'{where}: "{key}" is empty; nothing to learn from')
    return value


def _parse_alpaca(where: str, record: dict) -> Example:
    instruction = _string_field(where, record, "instruction", required=True)
    extra = _string_field(where, record, "input", required=False)
    output = _string_field(where, record, "output", required=True)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    turns = [Message("user", user), Message("assistant", output, trained=True)]
    return _conversation(where, record, turns)


def _conversation(where: str, record: dict, turns: list[Message]) -> Example:
    """Prepend the record's optional top-level "system" prompt and check what is trained."""
    system = _string_field(where, record, "system", required=False)
    if system.strip():
        if turns and turns[0].role == "system":
            raise DataError(f'{where}: both a "system" key and a system turn; keep one')
        turns = [Message("system", system), *turns]
    if not any(t.trained for t in turns):
        raise DataError(
            f"{where}: no trained assistant turn (none, or all have weight 0); the loss "
            "falls on assistant turns only, so this record would teach nothing"
        )
    return Example(messages=tuple(turns), source=where)


def _parse_turns(where: str, turns: Any, key: str, trained: bool) -> list[Message]:
    """Turns as ``{"role", "content"}`` or ShareGPT ``{"from", "value"}``, roles by alias.

    ``trained`` is whether assistant turns here are trained (OpenAI ``"weight": 0`` opts out).
    Empty system turns are dropped; other empty turns are errors.
    """
    if not isinstance(turns, list) or not turns:
        got = "an empty list" if turns == [] else type(turns).__name__
        raise DataError(f'{where}: "{key}" must be a non-empty list of turns, got {got}')
    messages = []
    for i, turn in enumerate(turns):
        at = f"{where}: {key}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"{at}: expected an object, got {type(turn).__name__}")
        role_key, content_key = ("from", "value") if "from" in turn else ("role", "content")
        if role_key not in turn:
            raise DataError(
                f'{at}: needs "role" and "content" (or ShareGPT "from" and "value"), '
                f"found keys {sorted(turn)}"
            )
        raw_role = turn[role_key]
        role = ROLE_ALIASES.get(raw_role.lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise DataError(f"{at}: unknown role {raw_role!r}; accepted: {sorted(ROLE_ALIASES)}")
        content = _turn_content(at, turn, content_key)
        weight = turn.get("weight", 1)
        if "weight" in turn:
            if role != "assistant":
                raise DataError(f'{at}: "weight" applies to assistant turns only, not {role}')
            if isinstance(weight, bool) or weight not in (0, 1):
                raise DataError(f'{at}: "weight" must be 0 or 1, got {weight!r}')
        if not content.strip():
            if role == "system":
                continue
            raise DataError(f"{at}: empty {role} content")
        learn = trained and role == "assistant" and weight == 1
        messages.append(Message(role, content, trained=learn))
    return messages


def _turn_content(at: str, turn: dict, key: str) -> str:
    """A string, or OpenAI's list of ``{"type": "text", "text"}`` parts (joined)."""
    content = turn.get(key)
    if isinstance(content, str):
        return content
    if content is None and turn.get("tool_calls"):
        raise DataError(f"{at}: tool calls are not supported; give the turn text content")
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise DataError(
        f'{at}: "{key}" must be a string (or a list of {{"type": "text", "text": ...}} parts), '
        f"got {type(content).__name__ if not isinstance(content, list) else 'other parts'}"
    )


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


# ---------------------------------------------------------------------------------------------
# Tokenisation


@dataclass
class TokenizedData:
    """Right-padded tensors; ``labels`` is -100 on untrained and padding positions."""

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
    examples: Sequence[Example],
    tokenizer: Any,
    max_length: int = 256,
    chat_template: ChatTemplateMode = "auto",
) -> TokenizedData:
    """Tokenise examples for causal-LM training, with labels only where the model should learn.

    Plain records: ``[bos] prompt completion [eos]``, loss on completion + eos. Conversations:
    the tokenizer's chat template (``chat_template`` "auto" when it has one, "on" to require
    it, "off" never) or the plain layout of :func:`chat_prompt_ids`; loss on trained assistant
    turns through their end-of-turn marker. Rows longer than ``max_length`` lose their end;
    rows left with nothing trained are dropped, with a warning that counts them.
    """
    templated = use_template(tokenizer, chat_template)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise DataError(f"max_length must be a positive integer, got {max_length!r}")
    if not examples:
        raise DataError("no examples to tokenize")
    special = specials(tokenizer)
    rows, truncated, dropped = [], 0, 0
    for i, ex in enumerate(examples):
        if not ex.messages:
            prompt = special.bos + tokenizer.encode(ex.prompt, add_special_tokens=False)
            completion = tokenizer.encode(ex.completion, add_special_tokens=False) + special.eos
            ids, labels = prompt + completion, [-100] * len(prompt) + completion
        else:
            last = max(j for j, m in enumerate(ex.messages) if m.trained)
            turns = ex.messages[: last + 1]  # later turns carry no loss
            if templated:
                ids, labels = _template_rows(turns, tokenizer, ex.source or f"example {i}")
            else:
                ids, labels = plain_rows(turns, tokenizer, special)
        truncated += len(ids) > max_length
        ids, labels = ids[:max_length], labels[:max_length]
        if all(label == -100 for label in labels):
            dropped += 1
            continue
        rows.append((ids, labels))
    if truncated or dropped:
        warnings.warn(
            f"{truncated} of {len(examples)} examples are longer than max_length={max_length} "
            f"tokens and were cut at the end; {dropped} kept no trained token and were "
            "left out. Raise max_length to train on them whole.",
            stacklevel=2,
        )
    if not rows:
        raise DataError(f"every token is masked out (max_length={max_length} too small?)")
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), special.pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    label_tensor = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        label_tensor[i, : len(lab)] = torch.tensor(lab)
    return TokenizedData(input_ids, attention, label_tensor)


def _template_rows(
    turns: Sequence[Message], tokenizer: Any, where: str
) -> tuple[list[int], list[int]]:
    """Render with the chat template; find each trained assistant turn's tokens by prefixes.

    For a trained turn i, ``turns[:i]`` rendered with the generation prompt must be a token
    prefix of ``turns[:i+1]``, which must be a prefix of the next rendering, and so on: the
    tokens in between are that turn's reply. They are trained through the last non-whitespace
    text of the turn (its end-of-turn token); whitespace the template adds after it is not.
    """
    texts = []
    for i, turn in enumerate(turns):
        if turn.trained:
            start = render_conversation(tokenizer, turns[:i], where, generation_prompt=True)
            stop = render_conversation(tokenizer, turns[: i + 1], where, generation_prompt=False)
            texts += [start, stop.rstrip(), stop]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = encoded[-1]
    labels = [-100] * len(ids)
    for k in range(0, len(texts), 3):
        turn_number = k // 3 + 1
        for j in (k, k + 2):
            if not texts[-1].startswith(texts[j]):
                raise DataError(
                    f"{where}: the chat template renders the conversation up to trained "
                    f"assistant turn {turn_number} differently once later turns follow "
                    "(e.g. it rewrites earlier turns or adds a system prompt only sometimes), "
                    "so the turn's tokens cannot be found; use chat_template='off'"
                )
            if encoded[j] != ids[: len(encoded[j])]:
                raise DataError(
                    f"{where}: tokens merge across the boundary of trained assistant turn "
                    f"{turn_number} (the tokens of the text before it are not a prefix of the "
                    "whole conversation's); change the text at that boundary (e.g. leading "
                    "whitespace in the reply) or use chat_template='off'"
                )
        begin, full = len(encoded[k]), len(encoded[k + 2])
        trimmed = encoded[k + 1]
        end = len(trimmed) if trimmed == ids[: len(trimmed)] and len(trimmed) > begin else full
        if end <= begin:
            raise DataError(
                f"{where}: the chat template renders trained assistant turn {turn_number} as "
                "no tokens (does it print message content?); use chat_template='off'"
            )
        labels[begin:end] = ids[begin:end]
    return ids, labels
