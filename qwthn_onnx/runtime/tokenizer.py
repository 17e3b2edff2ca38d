"""The export's tokenizer without transformers: ``tokenizers`` for the text, jinja2 for chats.

An export carries its tokenizer as the files ``save_pretrained`` wrote (``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja``). Serving needs only to encode, decode and
render the chat template, which the Rust ``tokenizers`` library and jinja2 do at a fraction of
transformers' import time and memory. :class:`Tokenizer` implements the subset of a
transformers fast tokenizer's API the runtime and :mod:`qwthn_onnx.chat` use, with the same
results (the tests compare it with transformers on the demo and a real model's tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from qwthn_onnx.runtime.export_dir import CHAT_TEMPLATE, TOKENIZER, TOKENIZER_CONFIG

__all__ = ["Tokenizer", "TokenizerError"]

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")
# transformers' clean_up_tokenization: spaces a word-piece decoder leaves before punctuation.
_CLEANUPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


class TokenizerError(ValueError):
    """Tokenizer files that cannot be read, or a chat the template cannot render."""


def _text(files: Mapping[str, str | bytes], name: str) -> str | None:
    content = files.get(name)
    if content is None:
        return None
    return content if isinstance(content, str) else bytes(content).decode("utf-8")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(files: Mapping[str, str | bytes], config: dict[str, Any]) -> str | None:
    """``chat_template.jinja`` (transformers 5), else the config's template (4.x; the default
    one when it holds a list of named templates)."""
    template = _text(files, CHAT_TEMPLATE)
    if template is not None:
        return template
    value = config.get("chat_template")
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) else None


class Tokenizer:
    """A tokenizer read from an export's tokenizer files (see the module docstring)."""

    def __init__(self, files: Mapping[str, str | bytes]) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        if TOKENIZER not in files:
            raise TokenizerError(
                f"the export's tokenizer has no tokenizer.json (files: {sorted(files)}); only "
                "fast (tokenizers-backed) tokenizers can be served: export a model whose "
                "tokenizer has a tokenizer.json, or pass token ids"
            )
        try:
            self._tokenizer = RustTokenizer.from_str(_text(files, TOKENIZER))
            config = json.loads(_text(files, TOKENIZER_CONFIG) or "{}")
        except Exception as e:  # tokenizers raises its own Exception type
            raise TokenizerError(f"the export's tokenizer files cannot be read: {e}") from e
        if not isinstance(config, dict):
            raise TokenizerError("the export's tokenizer_config.json is not a JSON object")
        self.special_tokens: dict[str, str] = {}
        for name in _SPECIAL_NAMES:
            token = _token_text(config.get(name))
            if token is not None:
                self.special_tokens[name] = token
        try:
            self.chat_template = _chat_template(files, config)
        except UnicodeDecodeError as e:
            raise TokenizerError(f"the export's chat_template.jinja is not UTF-8: {e}") from e
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self._template: Any = None

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self._tokenizer.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(
        self, texts: str | Sequence[str], add_special_tokens: bool = True
    ) -> dict[str, Any]:
        """``{"input_ids": ...}`` for one text or a batch, like a transformers tokenizer."""
        if isinstance(texts, str):
            return {"input_ids": self.encode(texts, add_special_tokens)}
        batch = self._tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in batch]}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_spaces:
            for before, after in _CLEANUPS:
                text = text.replace(before, after)
        return text

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render ``conversation`` with the chat template the way transformers does (sandboxed
        jinja2, trim_blocks/lstrip_blocks, the special tokens as variables)."""
        if not self.chat_template:
            raise TokenizerError(
                "the tokenizer has no chat template; lay the conversation out yourself"
            )
        from jinja2 import TemplateError

        try:
            text = self._compiled().render(
                messages=list(conversation),
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
                **kwargs,
            )
        except TemplateError as e:
            raise TokenizerError(f"the chat template failed on this conversation: {e}") from e
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def _compiled(self) -> Any:
        if self._template is None:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                from jinja2 import TemplateError

                raise TemplateError(message)

            def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, **kw: Any):
                return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)

            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
            )
            env.filters["tojson"] = tojson
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._template = env.from_string(self.chat_template)
        return self._template
