"""TextStream: streamed pieces add up to the final text, cut at stop strings, never sending what
may still change."""

import random

import pytest

from serving.generation import TextStream


def _chars(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def _utf8(ids: list[int]) -> str:
    """A byte-level vocabulary: one token per byte, as byte-level BPE decodes a split character."""
    return bytes(ids).decode("utf-8", errors="replace")


def _stream(text_or_bytes, stop=(), decode=_chars) -> tuple[list[str], TextStream, bool]:
    """Push every token (stopping at a stop string, as a job does); the pieces, the stream, and
    whether a stop string ended it."""
    stream = TextStream(decode, stop)
    ids = list(text_or_bytes.encode()) if decode is _utf8 else [ord(c) for c in text_or_bytes]
    pieces = []
    for n, token in enumerate(ids):
        stopped = stream.push(token)
        pieces.append(stream.piece(final=stopped or n == len(ids) - 1))
        if stopped:
            return pieces, stream, True
    return pieces, stream, False


def test_without_stop_strings_each_token_sends_its_text():
    pieces, stream, stopped = _stream("hello")
    assert pieces == list("hello") and stream.final_text() == "hello" and not stopped


def test_a_possible_stop_string_is_held_back_until_it_is_not():
    pieces, stream, stopped = _stream("ab<x>cd", stop=["<end>"])
    # "<" might begin "<end>": held back until "x" rules it out.
    assert pieces == ["a", "b", "", "<x", ">", "c", "d"]
    assert "".join(pieces) == stream.final_text() == "ab<x>cd" and not stopped


def test_a_stop_string_cuts_the_text_and_ends_the_stream():
    pieces, stream, stopped = _stream("one. two<end>three", stop=["<end>"])
    assert stopped and len(pieces) == len("one. two<end>")
    assert "".join(pieces) == stream.final_text() == "one. two"


def test_the_earliest_of_several_stop_strings_wins():
    pieces, stream, stopped = _stream("xyz\n\nabc", stop=["abc", "\n\n"])
    assert stopped and "".join(pieces) == stream.final_text() == "xyz"


def test_held_back_text_is_sent_with_the_last_token():
    pieces, stream, stopped = _stream("abc<en", stop=["<end>"])
    assert not stopped and pieces[-3:] == ["", "", "<en"]
    assert "".join(pieces) == stream.final_text() == "abc<en"


def test_an_incomplete_utf8_character_waits_for_its_last_byte():
    pieces, stream, _ = _stream("né€", decode=_utf8)  # é: 2 bytes, €: 3 bytes
    assert pieces == ["n", "", "é", "", "", "€"]
    assert "".join(pieces) == stream.final_text() == "né€"


def test_a_decoder_that_rewrites_sent_text_sends_no_more():
    """Cleanup of tokenization spaces: " ." becomes "." once the dot arrives."""
    stream = TextStream(lambda ids: _chars(ids).replace(" .", "."), ())
    pieces = []
    for token in map(ord, "a ."):
        stream.push(token)
        pieces.append(stream.piece(final=token == ord(".")))
    assert pieces == ["a", " ", ""]
    assert stream.final_text() == "a."  # the last event carries the text whole


def _reference(text: str, stop: list[str]) -> str:
    """QWTHNSession.generate's rule: stop at the first character that completes a stop string,
    then cut where a stop string begins."""
    for n in range(1, len(text) + 1):
        if any(s in text[:n] for s in stop):
            text = text[:n]
            break
    for s in stop:
        if s in text:
            text = text[: text.index(s)]
    return text


@pytest.mark.parametrize("seed", range(20))
def test_random_texts_and_stop_strings_add_up(seed):
    rng = random.Random(seed)
    alphabet = "ab<>\n é"
    text = "".join(rng.choice(alphabet) for _ in range(40))
    stop = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(2)]
    for decode in (_chars, _utf8):
        pieces, stream, stopped = _stream(text, stop, decode)
        assert "".join(pieces) == stream.final_text() == _reference(text, stop)
        assert stopped == any(s in text for s in stop)
