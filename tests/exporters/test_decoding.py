"""BatchDecoder: sequences decoded together get the tokens QWTHNSession gives each alone."""

from dataclasses import replace

import numpy as np
import pytest

from qwthn_onnx.runtime.decoding import BatchDecoder, DecodingSequence
from qwthn_onnx.runtime.generation import GenerationConfig, GenerationError
from qwthn_onnx.runtime.session import QWTHNSession

# Prompts of different lengths, as requests arrive at a server.
PROMPTS = ["12+5=", "7&80=", "3+3=", "99&1=", "40+41=", "2+0="]
STEPS = 10


@pytest.fixture(scope="module")
def session(exported):
    _, result, _ = exported("llama")
    return QWTHNSession(result.directory, threads=1)


def _decoder(session, max_batch, run=None, observe=None):
    return BatchDecoder(
        run or session.run,
        session.metadata.cache,
        session.cache_dtype,
        max_batch=max_batch,
        observe=observe,
    )


def _alone(session, prompt_ids, config, steps=STEPS):
    """Tokens of one prompt through QWTHNSession (which stops after eos; the decoder does not)."""
    return session.generate_ids([prompt_ids], replace(config, max_new_tokens=steps))[0]


def _decode(decoder, sequences, steps):
    tokens = [[] for _ in sequences]
    for _ in range(steps):
        for row, token in enumerate(decoder.step(sequences)):
            assert not isinstance(token, Exception), token
            tokens[row].append(token)
    return tokens


def _assert_agree(got, expected):
    """The same tokens up to where the session stopped (at eos) or the decoder did."""
    n = min(len(got), len(expected))
    assert n >= 1 and got[:n] == expected[:n]


@pytest.mark.parametrize(
    "config",
    [GenerationConfig(), GenerationConfig(do_sample=True, temperature=0.8, top_p=0.9, seed=7)],
    ids=["greedy", "seeded sampling"],
)
def test_batched_sequences_get_the_tokens_they_get_alone(session, config):
    sizes = []
    decoder = _decoder(session, max_batch=4, observe=sizes.append)
    prompts = [session.encode(p) for p in PROMPTS]
    sequences = [DecodingSequence(p, config) for p in prompts]
    tokens = _decode(decoder, sequences, STEPS)
    for prompt, got in zip(prompts, tokens, strict=True):
        _assert_agree(got, _alone(session, prompt, config))
    # Six sequences past their prefill, at most four per call: 4 + 2 per step after the first.
    assert sizes == [4, 2] * (STEPS - 1)
    # Each cache is the sequence's own, unpadded: prompt + tokens fed back so far.
    for prompt, sequence in zip(prompts, sequences, strict=True):
        for array in sequence.cache.values():
            assert array.shape[2] == sequence.length == len(prompt) + STEPS - 1
            assert array.base is None or array.shape[0] == 1


def test_sequences_joining_later_decode_with_the_others(session):
    config = GenerationConfig()
    decoder = _decoder(session, max_batch=8)
    first = DecodingSequence(session.encode(PROMPTS[0]), config)
    early = _decode(decoder, [first], 4)[0]
    late = DecodingSequence(session.encode(PROMPTS[5]), config)  # joins at the fifth step
    both = _decode(decoder, [first, late], 6)
    _assert_agree(early + both[0], _alone(session, first.prompt, config))
    _assert_agree(both[1], _alone(session, late.prompt, config))


def test_a_failing_sequence_fails_alone_and_is_left_as_it_was(session):
    config = GenerationConfig()
    prompts = [session.encode(p) for p in ("12+5=", "3+3=", "40+41=")]  # unequal lengths
    poisoned = len(prompts[1])

    def run(feed):
        # The poisoned sequence's first decode fails, in a batch and alone.
        if feed["input_ids"].shape[1] == 1 and poisoned + 1 in feed["attention_mask"].sum(1):
            raise RuntimeError("bad input")
        return session.run(feed)

    decoder = _decoder(session, max_batch=8, run=run)
    sequences = [DecodingSequence(p, config) for p in prompts]
    decoder.step(sequences)  # the prefills
    outcome = decoder.step(sequences)
    assert isinstance(outcome[1], RuntimeError)
    assert sequences[1].length == poisoned  # unchanged: no half-applied step
    healthy = [sequences[0], sequences[2]]
    later = _decode(decoder, healthy, 2)
    for i, tokens in zip((0, 2), later, strict=True):
        _assert_agree([outcome[i], *tokens], _alone(session, prompts[i], config)[1:])


def test_bad_arguments_are_refused(session):
    with pytest.raises(ValueError, match="at least one prompt token"):
        DecodingSequence([], GenerationConfig())
    with pytest.raises(GenerationError, match="temperature"):
        DecodingSequence([1], GenerationConfig(temperature=0))
    with pytest.raises(ValueError, match="max_batch"):
        _decoder(session, max_batch=0)
    assert np.dtype(session.cache_dtype) == np.float32
