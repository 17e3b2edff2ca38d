"""The OpenAI-compatible API (``/v1``) of a real server process, driven by the stock ``openai``
client: answers equal ``QWTHNSession.generate`` on the same prompt and settings, chat prompts
are laid out as training lays them out, streams add up to the answers, and every error is one
of the client's exception classes."""

import asyncio
import json

import httpx
import openai
import pytest

from qwthn_onnx.chat import Message, chat_prompt_ids
from serving.openai import MAX_CHOICES
from tests.serving.conftest import MAX_TOKENS, metric, wait_idle

TINY = {"model": "tiny", "version": "2"}  # the metric labels of the default version
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 1+2?"},
]
# How training lays MESSAGES out for a tokenizer without a chat template (the tiny model's).
PLAIN = "System: Be brief.\nUser: What is 1+2?\nAssistant: "
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def client(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _turns(messages: list[dict]) -> list[Message]:
    return [Message(m["role"], m["content"]) for m in messages]


def _usage(usage) -> tuple[int, int, int]:
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def _expected_usage(prompt_tokens: int, *generations) -> tuple[int, int, int]:
    completion = sum(len(g.token_ids) for g in generations)
    return prompt_tokens, completion, prompt_tokens + completion


# Models.


def test_models_are_listed_by_name_and_by_version(client):
    assert [m.id for m in client.models.list()] == ["tiny", "tiny/1", "tiny/2"]
    card = client.models.retrieve("tiny/1")
    assert (card.id, card.object, card.owned_by) == ("tiny/1", "model", "qwthn-serve")
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert e.value.code == "model_not_found" and "unknown model 'nope'" in e.value.message


# Completions.


@pytest.mark.parametrize("prompt", ["hello", "1+2=", ""])
def test_a_greedy_completion_equals_the_session(client, reference, prompt):
    answer = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, **GREEDY)
    expected = reference.generate(prompt, 24)
    (choice,) = answer.choices
    assert (choice.index, choice.text, choice.finish_reason) == (
        0,
        expected.text,
        expected.finish_reason,
    )
    assert choice.logprobs is None
    assert _usage(answer.usage) == _expected_usage(expected.prompt_tokens, expected)
    assert answer.id.startswith("cmpl-") and answer.object == "text_completion"
    assert answer.model == "tiny" and isinstance(answer.created, int)


def test_prompt_lists_token_ids_and_versions(client, reference):
    answer = client.completions.create(
        model="tiny/1", prompt=["hello", "1+2="], max_tokens=10, n=2, **GREEDY
    )
    expected = [reference.generate(p, 10) for p in ("hello", "1+2=")]
    # OpenAI's order: prompt by prompt, n choices each; greedy choices are equal.
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    texts = [c.text for c in answer.choices]
    assert texts == [expected[0].text] * 2 + [expected[1].text] * 2
    prompt_tokens = sum(g.prompt_tokens for g in expected)  # each prompt once
    assert _usage(answer.usage) == _expected_usage(prompt_tokens, *expected, *expected)
    ids = [reference.encode("abc"), reference.encode("hello")]
    answer = client.completions.create(model="tiny", prompt=ids, max_tokens=10, **GREEDY)
    assert [c.text for c in answer.choices] == [
        reference.generate(p, 10).text for p in ("abc", "hello")
    ]
    answer = client.completions.create(model="tiny", prompt=ids[0], max_tokens=10, **GREEDY)
    assert answer.choices[0].text == reference.generate("abc", 10).text


def test_seeded_choices_are_reproducible_and_equal_the_session(client, reference):
    sampling = {"temperature": 0.8, "top_p": 0.9}
    request = {"model": "tiny", "prompt": "hello", "max_tokens": 30, "seed": 7, "n": 3}
    first = client.completions.create(**request, **sampling)
    second = client.completions.create(**request, **sampling)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in second.choices]
    # choice i samples with seed + i
    expected = [
        reference.generate("hello", 30, do_sample=True, seed=7 + i, **sampling).text
        for i in range(3)
    ]
    assert texts == expected and len(set(texts)) == 3
    # top_k, vLLM's extension, through the client's extra_body
    topk = client.completions.create(**request, **sampling, extra_body={"top_k": 5})
    assert (
        topk.choices[0].text
        == reference.generate("hello", 30, do_sample=True, seed=7, top_k=5, **sampling).text
    )


def test_stop_strings_cut_the_text_and_max_tokens_ends_it(client, reference):
    full = reference.generate("hello", 40)
    assert full.finish_reason == "length"
    text = full.text
    # A two-character stop string first seen inside the text: a cut with text before it.
    at = next(k for k in range(1, len(text) - 1) if text.index(text[k : k + 2]) == k)
    stop = text[at : at + 2]
    expected = reference.generate("hello", 40, stop=[stop])
    assert expected.text == text[:at] and expected.finish_reason == "stop"
    for given in (stop, [stop, "never seen"]):
        answer = client.completions.create(
            model="tiny", prompt="hello", max_tokens=40, stop=given, **GREEDY
        )
        (choice,) = answer.choices
        assert (choice.text, choice.finish_reason) == (text[:at], "stop")
        assert answer.usage.completion_tokens == len(expected.token_ids) < 40
    answer = client.completions.create(model="tiny", prompt="hello", max_tokens=5, **GREEDY)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 5
    assert answer.choices[0].text == reference.generate("hello", 5).text


def test_a_streamed_completion_adds_up_to_the_answer(client):
    request = {"model": "tiny", "prompt": ["hello", "abc"], "max_tokens": 20, "n": 2, **GREEDY}
    whole = client.completions.create(**request)
    chunks = list(
        client.completions.create(**request, stream=True, stream_options={"include_usage": True})
    )
    *parts, last = chunks
    assert last.choices == [] and _usage(last.usage) == _usage(whole.usage)
    texts, finished = ["", "", "", ""], {}
    for chunk in parts:
        assert (chunk.id, chunk.object, chunk.usage) == (parts[0].id, "text_completion", None)
        (choice,) = chunk.choices
        assert choice.index not in finished  # nothing after a choice's finish_reason
        texts[choice.index] += choice.text
        if choice.finish_reason is not None:
            finished[choice.index] = choice.finish_reason
    assert texts == [c.text for c in whole.choices]
    assert finished == {c.index: c.finish_reason for c in whole.choices}
    plain = list(client.completions.create(**{**request, "prompt": "hello", "n": 1}, stream=True))
    assert all(c.usage is None and len(c.choices) == 1 for c in plain)  # no usage unless asked
    assert "".join(c.choices[0].text for c in plain) == whole.choices[0].text


# Chat completions.


def test_a_chat_prompt_is_laid_out_as_in_training_and_answered_as_the_session(client, reference):
    ids = chat_prompt_ids(_turns(MESSAGES), reference.tokenizer)
    assert ids == reference.encode(PLAIN)  # the plain layout: the tokenizer has no template
    (expected,) = reference.chat([_turns(MESSAGES)], 20)
    assert expected == reference.generate(PLAIN, 20)
    answer = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=20, **GREEDY
    )
    (choice,) = answer.choices
    assert (choice.message.role, choice.message.content) == ("assistant", expected.text)
    assert choice.finish_reason == expected.finish_reason and choice.logprobs is None
    assert _usage(answer.usage) == _expected_usage(len(ids), expected)
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    # The newer max_completion_tokens, OpenAI's developer role and text content parts.
    parts = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        MESSAGES[1],
    ]
    again = client.chat.completions.create(
        model="tiny", messages=parts, max_completion_tokens=20, **GREEDY
    )
    assert again.choices[0].message.content == expected.text


def test_a_chat_without_max_tokens_runs_to_the_context(client, reference):
    answer = client.chat.completions.create(model="tiny", messages=MESSAGES, **GREEDY)
    # The server's --max-tokens (200), which the context (128) ends first.
    (expected,) = reference.chat([_turns(MESSAGES)], MAX_TOKENS)
    assert expected.finish_reason == "length" and reference.max_length < MAX_TOKENS
    assert answer.choices[0].message.content == expected.text
    assert answer.usage.completion_tokens == len(expected.token_ids)
    assert answer.usage.total_tokens == reference.max_length


def test_seeded_chat_choices_are_reproducible(client, reference):
    request = {"model": "tiny", "messages": MESSAGES, "max_tokens": 15, "seed": 3, "n": 2}
    first = client.chat.completions.create(**request, temperature=0.7)
    second = client.chat.completions.create(**request, temperature=0.7)
    contents = [c.message.content for c in first.choices]
    assert contents == [c.message.content for c in second.choices]
    expected = [
        reference.chat([_turns(MESSAGES)], 15, do_sample=True, temperature=0.7, seed=3 + i)[0].text
        for i in range(2)
    ]
    assert contents == expected


def test_a_streamed_chat_adds_up_to_the_answer(client):
    request = {"model": "tiny", "messages": MESSAGES, "max_tokens": 20, "n": 2, **GREEDY}
    whole = client.chat.completions.create(**request)
    chunks = list(
        client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
    )
    # Each choice says its role first, as OpenAI's first chunks do.
    for index, chunk in enumerate(chunks[:2]):
        (choice,) = chunk.choices
        assert (choice.index, choice.delta.role, choice.delta.content) == (index, "assistant", "")
    *parts, last = chunks[2:]
    assert last.choices == [] and _usage(last.usage) == _usage(whole.usage)
    contents, finished = ["", ""], {}
    for chunk in parts:
        assert chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id
        (choice,) = chunk.choices
        assert choice.index not in finished and choice.delta.role is None
        contents[choice.index] += choice.delta.content or ""
        if choice.finish_reason is not None:
            finished[choice.index] = choice.finish_reason
    assert contents == [c.message.content for c in whole.choices]
    assert finished == {c.index: c.finish_reason for c in whole.choices}


# Errors.

# (endpoint, request fields, exception class, status, error.param, fragment of the message)
ERRORS = {
    "unknown model": (
        "completions",
        {"model": "nope"},
        openai.NotFoundError,
        404,
        "model",
        "unknown model 'nope' (models: tiny)",
    ),
    "unknown version": (
        "chat",
        {"model": "tiny/9"},
        openai.NotFoundError,
        404,
        "model",
        "has no version '9'",
    ),
    "logprobs": (
        "completions",
        {"logprobs": 2},
        openai.BadRequestError,
        400,
        "logprobs",
        "not supported",
    ),
    "chat logprobs": (
        "chat",
        {"logprobs": True},
        openai.BadRequestError,
        400,
        "logprobs",
        "not supported",
    ),
    "echo": ("completions", {"echo": True}, openai.BadRequestError, 400, "echo", "not supported"),
    "penalty": (
        "chat",
        {"presence_penalty": 0.5},
        openai.BadRequestError,
        400,
        "presence_penalty",
        "not supported",
    ),
    "tools": (
        "chat",
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        openai.BadRequestError,
        400,
        "tools",
        "not supported",
    ),
    "negative temperature": (
        "completions",
        {"temperature": -1},
        openai.BadRequestError,
        400,
        "temperature",
        "temperature must be >= 0",
    ),
    "top_p": (
        "chat",
        {"top_p": 1.5},
        openai.BadRequestError,
        400,
        "top_p",
        "top_p must be in (0, 1]",
    ),
    "negative seed": ("completions", {"seed": -1}, openai.BadRequestError, 400, "seed", ">= 0"),
    "max_tokens over --max-tokens": (
        "completions",
        {"max_tokens": MAX_TOKENS + 1},
        openai.BadRequestError,
        400,
        "max_tokens",
        f"max_tokens {MAX_TOKENS + 1} is over this server's limit of {MAX_TOKENS}",
    ),
    "max_completion_tokens over --max-tokens": (
        "chat",
        {"max_completion_tokens": MAX_TOKENS + 1},
        openai.BadRequestError,
        400,
        "max_completion_tokens",
        "over this server's limit",
    ),
    "too many choices": (
        "completions",
        {"n": MAX_CHOICES + 1},
        openai.BadRequestError,
        400,
        "n",
        f"at most {MAX_CHOICES}",
    ),
    "prompt too long": (
        "completions",
        {"prompt": "a" * 200},
        openai.BadRequestError,
        400,
        "prompt",
        "the prompt has 201 tokens but the context of model 'tiny' version 2 is 128",
    ),
    "token id outside the vocabulary": (
        "completions",
        {"prompt": [1, 10**6]},
        openai.BadRequestError,
        400,
        "prompt",
        "token ids must be in [0,",
    ),
    "empty prompt list": (
        "completions",
        {"prompt": []},
        openai.BadRequestError,
        400,
        "prompt",
        "empty",
    ),
    "unknown field": (
        "completions",
        {"extra_body": {"best_of_all": 2}},
        openai.BadRequestError,
        400,
        "best_of_all",
        "Extra inputs are not permitted",
    ),
    "too many stop strings": (
        "chat",
        {"stop": ["x"] * 17},
        openai.BadRequestError,
        400,
        "stop",
        "at most 16 items",
    ),
    "unknown role": (
        "chat",
        {"messages": [{"role": "wizard", "content": "hi"}]},
        openai.BadRequestError,
        400,
        "messages",
        "unknown role 'wizard'",
    ),
    "image content": (
        "chat",
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        },
        openai.BadRequestError,
        400,
        "messages",
        "messages[0].content",
    ),
    "no messages": (
        "chat",
        {"messages": []},
        openai.BadRequestError,
        400,
        "messages",
        "at least 1 item",
    ),
    "body too large": (
        "completions",
        {"prompt": "a" * 2**20},
        openai.APIStatusError,
        413,
        None,
        "request body too large",
    ),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_raise_the_clients_exception_classes(client, reference, case):
    endpoint, fields, exception, status, param, fragment = ERRORS[case]
    fields = dict(fields)
    extra = fields.pop("extra_body", None)
    request = {"model": "tiny", "max_tokens": 3, **fields}
    if endpoint == "chat":
        request.setdefault("messages", MESSAGES)
        create = client.chat.completions.create
    else:
        request.setdefault("prompt", "hello")
        create = client.completions.create
    with pytest.raises(exception) as raised:
        create(**request, extra_body=extra)
    error = raised.value
    assert error.status_code == status
    # OpenAI's error object, as the client parsed it
    assert set(error.body) == {"message", "type", "param", "code"}, error.body
    assert fragment in error.message and error.body["param"] == param
    assert error.body["type"] == "invalid_request_error"
    # the server goes on
    answer = client.completions.create(model="tiny", prompt="hello", max_tokens=5, **GREEDY)
    assert answer.choices[0].text == reference.generate("hello", 5).text


def test_v1_errors_are_openai_shaped_and_v2_errors_are_not(http):
    for method, path, body, status in [
        ("POST", "/v1/completions", b'{"model": ', 400),
        ("POST", "/v1/nothing", b"{}", 404),
        ("GET", "/v1/completions", None, 405),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400),
    ]:
        r = http.request(method, path, content=body)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    r = http.post("/v2/models/nope/generate", json={"prompt": "a"})
    assert r.status_code == 404 and isinstance(r.json()["error"], str)


# Batching, fairness, metrics, disconnects.


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, http, reference):
    batches = ("qwthn_generation_batch_size_count", "qwthn_generation_batch_size_sum")
    wait_idle(http, **TINY)
    before = [metric(http, name, **TINY) for name in batches]
    requests = [("hello", 12 + i, i % 2 == 0, i % 3 == 0) for i in range(12)]

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60
        ) as aclient:

            async def one(prompt: str, tokens: int, chat: bool, stream: bool) -> str:
                common = {"model": "tiny", "max_tokens": tokens, "seed": tokens, "stream": stream}
                if chat:
                    messages = [{"role": "user", "content": prompt}]
                    answer = await aclient.chat.completions.create(messages=messages, **common)
                    if not stream:
                        return answer.choices[0].message.content
                    return "".join([c.choices[0].delta.content or "" async for c in answer])
                answer = await aclient.completions.create(prompt=prompt, **common)
                if not stream:
                    return answer.choices[0].text
                return "".join([c.choices[0].text async for c in answer])

            return await asyncio.gather(*(one(*r) for r in requests))

    texts = asyncio.run(run())
    for (prompt, tokens, chat, _), text in zip(requests, texts, strict=True):
        sampled = {"do_sample": True, "seed": tokens}
        if chat:
            (expected,) = reference.chat([[Message("user", prompt)]], tokens, **sampled)
        else:
            expected = reference.generate(prompt, tokens, **sampled)
        assert text == expected.text
    calls, sequences = (metric(http, n, **TINY) - b for n, b in zip(batches, before, strict=True))
    assert calls > 0 and sequences / calls > 1.5  # decoded together: 4 at a time mostly


def test_v1_requests_are_counted_by_route_and_their_tokens_by_model(client, http):
    wait_idle(http, **TINY)
    labels = {"method": "POST", "status": "200"}
    routes = ["/v1/completions", "/v1/chat/completions"]
    before = [metric(http, "qwthn_requests_total", endpoint=r, **labels) for r in routes]
    tokens = metric(http, "qwthn_generated_tokens_total", **TINY)
    a = client.completions.create(model="tiny", prompt="hello", max_tokens=7, **GREEDY)
    b = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=9, **GREEDY)
    wait_idle(http, **TINY)
    after = [metric(http, "qwthn_requests_total", endpoint=r, **labels) for r in routes]
    assert [x - y for x, y in zip(after, before, strict=True)] == [1, 1]
    generated = metric(http, "qwthn_generated_tokens_total", **TINY) - tokens
    assert generated == a.usage.completion_tokens + b.usage.completion_tokens


def test_a_client_that_leaves_mid_stream_stops_its_generation(client, http, reference):
    stream = client.completions.create(
        model="tiny", prompt="", max_tokens=127, stream=True, **GREEDY
    )
    first = next(iter(stream))
    assert first.choices[0].text
    stream.close()
    wait_idle(http, **TINY)
    answer = client.completions.create(model="tiny", prompt="hello", max_tokens=5, **GREEDY)
    assert answer.choices[0].text == reference.generate("hello", 5).text


def test_the_openapi_schema_documents_the_v1_bodies(http):
    schema = http.get("/openapi.json").json()
    assert {"CompletionRequest", "ChatCompletionRequest", "OpenAIError"} <= set(
        schema["components"]["schemas"]
    )
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert json.dumps(body).count("ChatCompletionRequest") == 1
