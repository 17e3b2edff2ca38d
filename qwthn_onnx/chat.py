"""Conversations as a causal LM sees them: roles, and the prompt layout of a chat.

Training (:mod:`qwthn_onnx.data`) and inference (``qwthn-run``, the server's chat endpoint)
both lay conversations out through this module, so a model is queried exactly as it was
trained: with the tokenizer's chat template when it has one, else a plain ``Role: content``
layout. Plain Python: any tokenizer with ``encode`` / ``apply_chat_template`` works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

__all__ = [
    "CHAT_TEMPLATE_MODES",
    "ROLE_ALIASES",
    "DataError",
    "Message",
    "chat_prompt_ids",
]

ChatTemplateMode = Literal["auto", "on", "off"]
CHAT_TEMPLATE_MODES: tuple[str, ...] = ("auto", "on", "off")

# Role names found in the wild (OpenAI, ShareGPT, Gemini, ...) -> the role a chat template knows.
ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "tool": "tool",
}
# Plain rendering (no chat template): "User: hi\nAssistant: hello<eos>".
_PLAIN_TITLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


class DataError(ValueError):
    """A dataset that is missing, empty or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Message:
    """One conversation turn; ``trained`` marks an assistant turn the loss is computed on."""

    role: str
    content: str
    trained: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.content, str):
            raise DataError(f"message content must be a string, got {type(self.content).__name__}")
        if self.role not in _PLAIN_TITLES:
            raise DataError(f"unknown role {self.role!r}; use one of {sorted(_PLAIN_TITLES)}")
        if self.trained and self.role != "assistant":
            raise DataError(f"only assistant turns can be trained, not a {self.role} turn")


def chat_prompt_ids(
    messages: Sequence[Message], tokenizer: Any, chat_template: ChatTemplateMode = "auto"
) -> list[int]:
    """Token ids that prompt the next assistant turn, laid out exactly as training laid it out.

    Use it to query a model fine-tuned on conversations: generate from these ids until eos
    (or the template's end-of-turn token).
    """
    if use_template(tokenizer, chat_template):
        text = render_conversation(tokenizer, messages, "the prompt", generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)
    return plain_rows(messages, tokenizer, specials(tokenizer), generation_prompt=True)[0]


class Specials(NamedTuple):
    """The tokenizer's bos/eos (as 0- or 1-element lists) and padding id."""

    bos: list[int]
    eos: list[int]
    pad: int


def specials(tokenizer: Any) -> Specials:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    return Specials(bos, eos, pad)


def use_template(tokenizer: Any, mode: Any) -> bool:
    if not isinstance(mode, str) or mode not in CHAT_TEMPLATE_MODES:
        raise DataError(f"chat_template must be one of {list(CHAT_TEMPLATE_MODES)}, got {mode!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has_template:
        raise DataError(
            "chat_template='on' but the tokenizer has no chat template; set "
            "tokenizer.chat_template, or use 'auto'/'off' for the plain 'Role: content' layout"
        )
    return has_template and mode != "off"


def plain_rows(
    turns: Sequence[Message],
    tokenizer: Any,
    special: Specials,
    generation_prompt: bool = False,
) -> tuple[list[int], list[int]]:
    """``[bos]System: ..\\nUser: ..\\nAssistant: <content><eos>User: ..``; loss on content+eos.

    Text between assistant contents is tokenised as one string, the way a user would tokenise
    a prompt; without an eos token, an assistant turn ends with a (trained) newline.
    """
    end = special.eos or tokenizer.encode("\n", add_special_tokens=False)
    ids, labels = list(special.bos), [-100] * len(special.bos)
    context = ""
    for turn in turns:
        if turn.role != "assistant":
            context += f"{_PLAIN_TITLES[turn.role]}: {turn.content}\n"
            continue
        head = tokenizer.encode(context + "Assistant: ", add_special_tokens=False)
        body = tokenizer.encode(turn.content, add_special_tokens=False) + end
        ids += head + body
        labels += [-100] * len(head) + (body if turn.trained else [-100] * len(body))
        context = ""
    if generation_prompt:
        context += "Assistant: "
    if context:
        tail = tokenizer.encode(context, add_special_tokens=False)
        ids += tail
        labels += [-100] * len(tail)
    return ids, labels


def render_conversation(
    tokenizer: Any, turns: Sequence[Message], where: str, generation_prompt: bool
) -> str:
    from jinja2 import TemplateError

    conversation = [{"role": t.role, "content": t.content} for t in turns]
    try:
        return tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=generation_prompt
        )
    except (TemplateError, ValueError, TypeError, KeyError, IndexError) as e:
        raise DataError(
            f"{where}: the tokenizer's chat template failed on this conversation ({e}); fix "
            "the turns (some templates need alternating user/assistant turns), or pass "
            "chat_template='off' for the plain layout"
        ) from e
