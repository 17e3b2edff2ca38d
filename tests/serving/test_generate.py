"""Text generation of a real server process, over loopback: ``generate`` answers what
``QWTHNSession.generate`` gives, ``generate_stream`` sends the same as server-sent events,
requests take turns, and Triton's own generate body is answered in Triton's shape."""

import asyncio
import json

import httpx
import pytest

from serving.testing import parse_sse
from tests.serving.conftest import MAX_TOKENS, finishing_order, metric, parse_stream, wait_idle

GENERATE = "/v2/models/tiny/generate"
STREAM = "/v2/models/tiny/generate_stream"
LONG = {"prompt": "", "max_new_tokens": 127}  # bos + 127 tokens: the whole context of 128
TINY = {"model": "tiny", "version": "2"}  # the metric labels of the default version


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _generate(client, body, path=GENERATE) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _stream(client, body, path=STREAM):
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        # Not kept alive: a browser that aborts the stream then closes the connection rather
        # than read the stream to its end, which would keep the generation going.
        assert r.headers["connection"] == "close" and r.headers["cache-control"] == "no-cache"
        return parse_stream(r.iter_lines())


def _expected(reference, prompt: str, max_new_tokens: int, **kwargs) -> dict:
    g = reference.generate(prompt, max_new_tokens, **kwargs)
    return {
        "text": g.text,
        "token_ids": g.token_ids,
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": len(g.token_ids),
        "finish_reason": g.finish_reason,
    }


RESULT = ("text", "token_ids", "prompt_tokens", "completion_tokens", "finish_reason")


def _result(answer: dict) -> dict:
    """What the session would give too (an answer less its model, version and id)."""
    return {k: answer[k] for k in RESULT}


# Results.


@pytest.mark.parametrize("prompt", ["hello", "1+2=", "", "The quick brown fox"])
def test_greedy_generation_equals_the_session(client, reference, prompt):
    answer = _generate(client, {"prompt": prompt, "max_new_tokens": 24, "id": "g1"})
    assert _result(answer) == _expected(reference, prompt, 24)
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("tiny", "2", "g1")


def test_defaults_version_path_and_generated_id(client, reference):
    answer = _generate(client, {"prompt": "abc"}, "/v2/models/tiny/versions/1/generate")
    assert _result(answer) == _expected(reference, "abc", 32)  # max_new_tokens 32 by default
    assert answer["model_version"] == "1"
    assert isinstance(answer["id"], str) and answer["id"]


def test_seeded_sampling_is_reproducible_and_equals_the_session(client, reference):
    sampling = {"do_sample": True, "temperature": 0.8, "top_k": 20, "top_p": 0.9}
    body = {"prompt": "hello", "max_new_tokens": 30, "seed": 7, **sampling}
    first, second = _generate(client, body), _generate(client, body)
    assert (
        _result(first) == _result(second) == _expected(reference, "hello", 30, seed=7, **sampling)
    )
    other = _generate(client, {**body, "seed": 8})
    assert other["token_ids"] != first["token_ids"]


def test_the_stream_adds_up_to_the_generate_answer(client):
    body = {"prompt": "hello", "max_new_tokens": 40, "id": "s1"}
    answer = _generate(client, body)
    streamed = _stream(client, body)
    assert streamed.error is None and streamed.final == answer
    assert [t["token_id"] for t in streamed.tokens] == answer["token_ids"]
    assert streamed.text == answer["text"]
    assert all(t["text"] for t in streamed.tokens)  # no stop strings: a character each


def test_stop_strings_cut_the_text_and_end_the_stream(client, reference):
    prompt = "hello"
    full = reference.generate(prompt, 40).text
    # A two-character stop string first seen inside the text: a cut with text before it.
    at = next(k for k in range(1, len(full) - 1) if full.index(full[k : k + 2]) == k)
    stop = [full[at : at + 2], "never seen"]
    expected = _expected(reference, prompt, 40, stop=stop)
    assert expected["finish_reason"] == "stop" and expected["text"] == full[:at]
    body = {"prompt": prompt, "max_new_tokens": 40, "stop": stop}
    assert _result(_generate(client, body)) == expected
    streamed = _stream(client, body)
    assert _result(streamed.final) == expected
    assert streamed.text == expected["text"]
    assert len(streamed.tokens) == expected["completion_tokens"] < 40  # no token after the stop


def test_zero_new_tokens_and_a_prompt_that_fills_the_context(client, reference):
    answer = _generate(client, {"prompt": "abc", "max_new_tokens": 0})
    assert (answer["text"], answer["token_ids"], answer["finish_reason"]) == ("", [], "length")
    # bos + 126 characters leave room for one token, whatever max_new_tokens says.
    answer = _generate(client, {"prompt": "a" * 126, "max_new_tokens": 50})
    assert _result(answer) == _expected(reference, "a" * 126, 50)
    assert answer["completion_tokens"] == 1 and answer["prompt_tokens"] == 127
    streamed = _stream(client, {"prompt": "a" * 127, "max_new_tokens": 50})
    assert streamed.tokens == [] and _result(streamed.final) == _expected(reference, "a" * 127, 50)


# Fair scheduling.


def test_a_short_request_finishes_while_long_ones_generate(server):
    short = {"prompt": "ab", "max_new_tokens": 3}
    finished = asyncio.run(finishing_order(server.url, "tiny", LONG, short, longs=3))
    assert finished[0][0] == "short", [name for name, _ in finished]
    assert finished[0][1]["completion_tokens"] == 3
    assert all(answer["completion_tokens"] == 127 for _, answer in finished[1:])


async def _many(url: str, bodies: list[dict]) -> list[dict]:
    """Every body at once, streamed (odd ones) or not; the answers in order."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(i: int, body: dict) -> dict:
            if i % 2 == 0:
                r = await client.post(GENERATE, json=body)
                return r.json()
            async with client.stream("POST", STREAM, json=body) as r:
                streamed = parse_stream([line async for line in r.aiter_lines()])
            assert streamed.text == streamed.final["text"]
            return streamed.final

        return await asyncio.gather(*(one(i, body) for i, body in enumerate(bodies)))


def test_concurrent_generations_each_get_their_own_answer(server, reference):
    """24 requests, 4 generating at a time, decoded together as one batch per token: no request
    sees another one's tokens or cache."""
    batches = ("qwthn_generation_batch_size_count", "qwthn_generation_batch_size_sum")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        wait_idle(client, **TINY)
        before = [metric(client, name, **TINY) for name in batches]
    prompts = ["hello", "1+2=", "abc", "The quick brown fox", "", "zz"]
    bodies = [
        {"prompt": prompts[i % 6], "max_new_tokens": 10 + 3 * i, "seed": i, "do_sample": i % 3 == 0}
        for i in range(24)
    ]
    answers = asyncio.run(_many(server.url, bodies))
    for body, answer in zip(bodies, answers, strict=True):
        prompt, max_new_tokens = body.pop("prompt"), body.pop("max_new_tokens")
        assert _result(answer) == _expected(reference, prompt, max_new_tokens, **body)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        calls, sequences = (
            metric(client, n, **TINY) - b for n, b in zip(batches, before, strict=True)
        )
    assert calls > 0 and sequences / calls > 1.5  # batched: mostly 3-4 per decode call


# Disconnects and errors.


def test_a_client_that_leaves_mid_stream_stops_its_generation(client, reference):
    with client.stream("POST", STREAM, json=LONG) as r:
        assert next(r.iter_lines()).startswith('data: {"token_id"')
    wait_idle(client, **TINY)
    _good_request(client, reference)


def _good_request(client, reference):
    answer = _generate(client, {"prompt": "hello", "max_new_tokens": 5})
    assert _result(answer) == _expected(reference, "hello", 5)


BAD = {
    "temperature 0": ({"prompt": "a", "temperature": 0}, 400, "temperature must be > 0, got 0"),
    "top_p": ({"prompt": "a", "top_p": 1.5}, 400, "top_p must be in (0, 1], got 1.5"),
    "top_k": ({"prompt": "a", "top_k": -1}, 400, "top_k must be an int >= 0"),
    "negative max_new_tokens": ({"prompt": "a", "max_new_tokens": -1}, 400, ">= 0"),
    "over --max-tokens": (
        {"prompt": "a", "max_new_tokens": MAX_TOKENS + 1},
        400,
        f"max_new_tokens {MAX_TOKENS + 1} is over this server's limit of {MAX_TOKENS} "
        f"(--max-tokens)",
    ),
    "prompt too long": (
        {"prompt": "a" * 200},
        400,
        "the prompt has 201 tokens but the context of model 'tiny' version 2 is 128",
    ),
    "no prompt": ({"max_new_tokens": 3}, 400, "prompt: Field required"),
    "string for a number": ({"prompt": "a", "temperature": "hot"}, 400, "temperature:"),
    "misspelt field": ({"prompt": "a", "max_tokens": 3}, 400, "max_tokens: Extra inputs"),
    "negative seed": ({"prompt": "a", "seed": -1}, 400, "seed:"),
    "stop not a list": ({"prompt": "a", "stop": "x"}, 400, "stop:"),
    "too many stop strings": ({"prompt": "a", "stop": ["x"] * 17}, 400, "at most 16 items"),
    "stop string too long": ({"prompt": "a", "stop": ["x" * 257]}, 400, "stop[0]: String should"),
    "bad json": (b'{"prompt": ', 400, "not valid JSON"),
}


@pytest.mark.parametrize("path", [GENERATE, STREAM])
@pytest.mark.parametrize("case", BAD)
def test_a_bad_request_is_an_error_and_the_server_goes_on(client, reference, path, case):
    body, status, fragment = BAD[case]
    r = client.post(path, content=body if isinstance(body, bytes) else json.dumps(body))
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and fragment in r.json()["error"]
    _good_request(client, reference)


@pytest.mark.parametrize(
    "path", ["/v2/models/nope/generate", "/v2/models/tiny/versions/7/generate_stream"]
)
def test_an_unknown_model_or_version_is_404(client, path):
    r = client.post(path, json={"prompt": "a"})
    assert r.status_code == 404 and "error" in r.json()


# Triton's generate body: {"text_input", "parameters"} -> {"model_name", "model_version",
# "text_output"}, sampling read as Triton's vLLM backend reads it (temperature 0: greedy).


def _triton(client, body: dict, path: str = GENERATE) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["model_name", "model_version", "text_output"]
    return r.json()


def test_tritons_body_is_answered_in_tritons_shape(client, reference):
    greedy = {"max_tokens": 20, "temperature": 0}
    answer = _triton(client, {"text_input": "hello", "parameters": greedy})
    expected = reference.generate("hello", 20).text
    # text_output starts with the prompt, as Triton's vLLM backend answers by default
    assert answer == {"model_name": "tiny", "model_version": "2", "text_output": "hello" + expected}
    # The parameters at the top level too (as TensorRT-LLM models take them); a version path.
    body = {"text_input": "hello", "exclude_input_in_output": True, **greedy}
    answer = _triton(client, body, "/v2/models/tiny/versions/1/generate")
    assert (answer["model_version"], answer["text_output"]) == ("1", expected)
    # Defaults: 16 tokens, sampled at temperature 1; stop as one string; top_k.
    answer = _triton(client, {"text_input": "abc", "parameters": {"seed": 5}})
    assert (
        answer["text_output"] == "abc" + reference.generate("abc", 16, do_sample=True, seed=5).text
    )
    sampled = {"seed": 3, "temperature": 0.7, "top_p": 0.9, "top_k": 10}
    stop = expected[3:5]
    parameters = {"max_tokens": 20, "stop": stop, "exclude_input_in_output": True, **sampled}
    answer = _triton(client, {"text_input": "hello", "parameters": parameters})
    sampled["do_sample"] = True
    assert answer["text_output"] == reference.generate("hello", 20, stop=[stop], **sampled).text


def test_tritons_stream_sends_pieces_that_add_up_to_the_text(client, reference):
    parameters = {"max_tokens": 20, "temperature": 0, "stream": True}
    with client.stream("POST", STREAM, json={"text_input": "hi", "parameters": parameters}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events, complete = parse_sse(r.iter_lines())
    assert complete and all(kind == "message" for kind, _ in events)  # no [DONE]: Triton's
    answers = [json.loads(data) for _, data in events]
    assert all(a["model_name"] == "tiny" and a["model_version"] == "2" for a in answers)
    expected = reference.generate("hi", 20).text
    assert answers[0]["text_output"].startswith("hi")
    assert "".join(a["text_output"] for a in answers) == "hi" + expected
    assert len(answers) == len(reference.generate("hi", 20).token_ids) + 1  # the last: the end


TRITON_BAD = {
    "over --max-tokens": (
        {"text_input": "a", "parameters": {"max_tokens": MAX_TOKENS + 1}},
        f"max_tokens {MAX_TOKENS + 1} is over this server's limit of {MAX_TOKENS}",
    ),
    "negative temperature": (
        {"text_input": "a", "parameters": {"temperature": -1}},
        "temperature must be >= 0 (0: greedy)",
    ),
    "top_p": ({"text_input": "a", "parameters": {"top_p": 0}}, "top_p must be in (0, 1]"),
    "unknown parameter": (
        {"text_input": "a", "parameters": {"beam_width": 2}},
        "parameters.beam_width: Extra inputs are not permitted",
    ),
    "text_input not a string": ({"text_input": 5}, "text_input: Input should be a valid string"),
    "both places": (
        {"text_input": "a", "max_tokens": 3, "parameters": {"temperature": 0}},
        "in 'parameters' or at the top level, not both (top level: max_tokens)",
    ),
}


@pytest.mark.parametrize("path", [GENERATE, STREAM])
@pytest.mark.parametrize("case", TRITON_BAD)
def test_a_bad_triton_body_is_a_400(client, reference, path, case):
    body, fragment = TRITON_BAD[case]
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["error"] and fragment in r.json()["error"]
    _good_request(client, reference)


# Metadata and metrics.


def test_generate_is_an_extension_with_documented_bodies(client):
    assert "generate" in client.get("/v2").json()["extensions"]
    schema = client.get("/openapi.json").json()
    assert "GenerateRequest" in schema["components"]["schemas"]
    stream = schema["paths"]["/v2/models/{model_name}/generate_stream"]["post"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]


def test_metrics_count_generated_tokens_and_time_generations(client):
    counts = (
        "qwthn_generated_tokens_total",
        "qwthn_time_to_first_token_seconds_count",
        "qwthn_generation_duration_seconds_count",
    )
    wait_idle(client, **TINY)
    before = [metric(client, name, **TINY) for name in counts]
    answers = [
        _generate(client, {"prompt": "hello", "max_new_tokens": 17}),
        _stream(client, {"prompt": "abc", "max_new_tokens": 9, "stop": ["zz"]}).final,
    ]
    wait_idle(client, **TINY)
    after = [metric(client, name, **TINY) for name in counts]
    tokens, first_tokens, durations = (a - b for a, b in zip(after, before, strict=True))
    assert tokens == sum(a["completion_tokens"] for a in answers)
    assert first_tokens == durations == 2
