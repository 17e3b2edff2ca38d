"""A reader of protobuf text format (Triton's ``config.pbtxt``) that needs no schema.

The server reads a few fields of a model's ``config.pbtxt`` (its name, platform, batch size)
and must not depend on tritonclient or on protobuf, which only arrives through onnx. This reads
any well-formed text-format message into nested dicts: each field name maps to the list of its
values in order (a repeated field, a ``[...]`` list and a field given twice all append), a
message value is such a dict, a quoted string is ``str``, a number is ``int`` or ``float``, and
a bare identifier (enum value, ``true``) is an :class:`Identifier`. Malformed text raises
:class:`PbtxtError` naming the line and column, as protobuf's own parser does.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["Identifier", "Message", "PbtxtError", "parse"]


class Identifier(str):
    """A bare identifier value: an enum name such as ``TYPE_FP32``, or ``true``/``false``."""


Message = dict[str, list[Any]]
Value = str | int | float | Identifier | Message


class PbtxtError(ValueError):
    """Text that is not protobuf text format."""


_TOKEN = re.compile(
    r"""
    (?P<skip>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fF]?)
        (?![A-Za-z0-9_]))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<symbol>[{}<>\[\]:;,])
    """,
    re.VERBOSE,
)
_ESCAPES = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "?": b"?",
    "\\": b"\\",
    "'": b"'",
    '"': b'"',
}
_ESCAPE = re.compile(
    r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.))"
)


class _Tokens:
    def __init__(self, text: str) -> None:
        self.text = text
        self.items: list[tuple[str, str, int]] = []  # (kind, text, offset)
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                self.fail(pos, f"unexpected character {text[pos]!r}")
            if match.lastgroup != "skip":
                self.items.append((match.lastgroup or "", match.group(), pos))
            pos = match.end()
        self.index = 0

    def fail(self, offset: int, message: str) -> None:
        line = self.text.count("\n", 0, offset) + 1
        column = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        raise PbtxtError(f"line {line}, column {column}: {message}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.items[self.index] if self.index < len(self.items) else None

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            self.fail(len(self.text), "unexpected end of text")
            raise AssertionError  # fail raised
        self.index += 1
        return token

    def accept(self, symbol: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "symbol" and token[1] == symbol:
            self.index += 1
            return True
        return False

    def expect(self, symbol: str) -> None:
        if not self.accept(symbol):
            token = self.peek()
            found = repr(token[1]) if token else "the end of the text"
            self.fail(token[2] if token else len(self.text), f"expected {symbol!r}, found {found}")


def _unescape(body: str) -> str:
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(body):
        out += body[pos : match.start()].encode()
        octal, hexa, u4, u8, char = match.groups()
        if octal:
            out.append(int(octal, 8) & 0xFF)
        elif hexa:
            out.append(int(hexa, 16))
        elif u4 or u8:
            out += chr(int(u4 or u8, 16)).encode()
        elif char in _ESCAPES:
            out += _ESCAPES[char]
        else:
            raise ValueError(f"invalid escape '\\{char}'")
        pos = match.end()
    out += body[pos:].encode()
    return out.decode()


def _number(text: str) -> int | float:
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text)
    if digits[:2] in ("0x", "0X"):
        return sign * int(digits, 16)
    if re.fullmatch(r"0[0-7]+", digits):  # protobuf's octal
        return sign * int(digits, 8)
    if re.fullmatch(r"0[0-9]+", digits):
        raise ValueError(f"invalid octal number {text!r}")
    if re.fullmatch(r"[0-9]+", digits):
        return sign * int(digits)
    return sign * float(digits.rstrip("fF"))


def _scalar(tokens: _Tokens) -> Value:
    kind, text, offset = tokens.take()
    if kind == "string":
        parts = [(text, offset)]
        while (nxt := tokens.peek()) is not None and nxt[0] == "string":  # "a" "b" == "ab"
            parts.append((nxt[1], nxt[2]))
            tokens.index += 1
        value = ""
        for part, where in parts:
            try:
                value += _unescape(part[1:-1])
            except (ValueError, UnicodeDecodeError) as e:
                tokens.fail(where, f"bad string {part}: {e}")
        return value
    if kind == "number":
        try:
            return _number(text)
        except ValueError as e:
            tokens.fail(offset, str(e))
    if kind == "ident":
        return Identifier(text)
    tokens.fail(offset, f"expected a value, found {text!r}")
    raise AssertionError  # fail raised


def _message(tokens: _Tokens, close: str | None) -> Message:
    fields: Message = {}
    while True:
        token = tokens.peek()
        if token is None:
            if close is not None:
                tokens.fail(len(tokens.text), f"expected {close!r}, found the end of the text")
            return fields
        kind, text, offset = token
        if close is not None and kind == "symbol" and text == close:
            tokens.index += 1
            return fields
        if kind != "ident" or text.startswith("-"):
            tokens.fail(offset, f"expected a field name, found {text!r}")
        tokens.index += 1
        values = fields.setdefault(text, [])
        colon = tokens.accept(":")
        values.extend(_field_values(tokens, colon))
        if not tokens.accept(";"):
            tokens.accept(",")


def _field_values(tokens: _Tokens, colon: bool) -> list[Value]:
    if tokens.accept("["):
        values: list[Value] = []
        if tokens.accept("]"):
            return values
        while True:
            values.append(_value(tokens, colon))
            if tokens.accept("]"):
                return values
            tokens.expect(",")
    return [_value(tokens, colon)]


def _value(tokens: _Tokens, colon: bool) -> Value:
    if tokens.accept("{"):
        return _message(tokens, "}")
    if tokens.accept("<"):
        return _message(tokens, ">")
    if not colon:
        token = tokens.peek()
        where = token[2] if token else len(tokens.text)
        tokens.fail(where, "expected ':' before a scalar value")
    return _scalar(tokens)


def parse(text: str) -> Message:
    """The message in ``text`` as nested dicts (see the module docstring); PbtxtError if the
    text is not protobuf text format."""
    return _message(_Tokens(text), None)
