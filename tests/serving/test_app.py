"""The app in this process, for what a healthy server process cannot show: a model that fails
(500) or hangs (504), readiness before the batchers run (503), and a tokenizer with a chat
template."""

import threading
import time

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from qwthn_onnx.chat import Message, chat_prompt_ids
from serving import Settings, create_app
from tests.serving.conftest import MODEL_DIR_NAME, ids_input

INFER = f"/v2/models/{MODEL_DIR_NAME}/infer"
REQUEST = {"inputs": [ids_input(np.array([[1, 2, 3]]))], "outputs": [{"name": "logits"}]}


def test_an_exception_in_a_request_is_500_and_the_server_goes_on(repository, model, monkeypatch):
    calls = []
    real_run = model.run

    def fails_once(feed, outputs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("onnxruntime exploded")
        return real_run(feed, outputs)

    monkeypatch.setattr(model, "run", fails_once)
    with TestClient(create_app(repository, Settings(max_batch_size=1))) as client:
        r = client.post(INFER, json=REQUEST)
        assert r.status_code == 500
        assert "onnxruntime exploded" in r.json()["error"]
        assert client.post(INFER, json=REQUEST).status_code == 200
        metrics = client.get("/metrics").text
    assert 'endpoint="/v2/models/{model_name}/infer",method="POST",status="500"} 1.0' in metrics


def test_a_request_over_the_timeout_is_504_and_the_server_goes_on(repository, model, monkeypatch):
    release = threading.Event()
    real_run = model.run

    def hangs_until_released(feed, outputs):
        release.wait(10)
        return real_run(feed, outputs)

    monkeypatch.setattr(model, "run", hangs_until_released)
    settings = Settings(max_batch_size=1, timeout_s=0.5)
    with TestClient(create_app(repository, settings)) as client:
        r = client.post(INFER, json=REQUEST)
        assert r.status_code == 504
        assert "did not finish within 0.5 s" in r.json()["error"]
        release.set()
        assert client.post(INFER, json=REQUEST).status_code == 200


def test_not_ready_until_the_lifespan_starts(repository):
    client = TestClient(create_app(repository))  # no `with`: the lifespan never runs
    assert client.get("/v2/health/live").status_code == 200
    r = client.get("/v2/health/ready")
    assert r.status_code == 503 and "not running" in r.json()["error"]
    assert client.get(f"/v2/models/{MODEL_DIR_NAME}/ready").status_code == 503
    r = client.post(INFER, json=REQUEST)
    assert r.status_code == 503 and "not accepting requests" in r.json()["error"]
    r = client.post(f"/v2/models/{MODEL_DIR_NAME}/generate", json={"prompt": "a"})
    assert r.status_code == 503 and "not accepting requests" in r.json()["error"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_queue_delay_ms": -1},
        {"max_body_bytes": 0},
        {"timeout_s": 0},
        {"max_tokens": 0},
        {"max_concurrent_generations": 0},
    ],
)
def test_settings_are_checked(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Settings(**kwargs)


# The OpenAI-compatible API in this process: the stock client over the app's TestClient.


def _openai(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="unused", max_retries=0, http_client=client
    )


COMPLETION = {"model": MODEL_DIR_NAME, "prompt": "", "max_tokens": 100, "temperature": 0}


def test_a_v1_generation_over_the_timeout_is_an_openai_error(repository, model, monkeypatch):
    real_run = model.session.run

    def slow(feed):
        time.sleep(0.02)
        return real_run(feed)

    monkeypatch.setattr(model.session, "run", slow)  # before the app: its decoder takes it
    with TestClient(create_app(repository, Settings(timeout_s=0.5))) as client:
        oa = _openai(client)
        with pytest.raises(openai.InternalServerError) as raised:
            oa.completions.create(**COMPLETION)
        assert raised.value.status_code == 504
        assert "did not finish within 0.5 s" in raised.value.message
        assert raised.value.body["type"] == "server_error"
        # Streamed: the chunks so far, then the error, which the client raises.
        stream = oa.completions.create(**COMPLETION, stream=True)
        texts = []
        with pytest.raises(openai.APIError, match=r"did not finish within 0\.5 s"):
            for chunk in stream:
                texts.append(chunk.choices[0].text)
        assert texts and all(texts)


def test_a_failing_v1_generation_is_a_500_and_the_server_goes_on(repository, model, monkeypatch):
    real_run = model.session.run
    calls = []

    def fails_once(feed):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("onnxruntime exploded")
        return real_run(feed)

    monkeypatch.setattr(model.session, "run", fails_once)
    with TestClient(create_app(repository)) as client:
        oa = _openai(client)
        with pytest.raises(openai.InternalServerError, match="onnxruntime exploded"):
            oa.chat.completions.create(
                model=MODEL_DIR_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
        assert oa.completions.create(**{**COMPLETION, "max_tokens": 3}).choices[0].text


def test_v1_is_unavailable_until_the_lifespan_starts(repository):
    oa = _openai(TestClient(create_app(repository)))  # no `with`: the lifespan never runs
    with pytest.raises(openai.InternalServerError) as raised:
        oa.completions.create(**COMPLETION)
    assert raised.value.status_code == 503
    assert "not accepting requests" in raised.value.message


def test_a_chat_uses_the_models_chat_template_when_it_has_one(repository, model, monkeypatch):
    tokenizer = model.session.tokenizer
    template = (
        "{% for m in messages %}{{ m['role'] }}={{ m['content'] }}.{% endfor %}"
        "{% if add_generation_prompt %}assistant={% endif %}"
    )
    monkeypatch.setattr(tokenizer, "chat_template", template, raising=False)
    messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "hi"}]
    templated = tokenizer.encode("system=Be brief.user=hi.assistant=", add_special_tokens=False)
    assert chat_prompt_ids([Message(**m) for m in messages], tokenizer) == templated
    with TestClient(create_app(repository)) as client:
        answer = _openai(client).chat.completions.create(
            model=MODEL_DIR_NAME, messages=messages, max_tokens=4, temperature=0
        )
    (expected,) = model.session.chat([[Message(**m) for m in messages]], 4)
    assert answer.usage.prompt_tokens == expected.prompt_tokens == len(templated)
    assert answer.usage.completion_tokens == len(expected.token_ids)
    assert answer.choices[0].message.content == expected.text
