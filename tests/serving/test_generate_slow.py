"""Generation against a real server whose model this process can slow down or change: uvicorn
serving the app on loopback from a thread here. At a known time per token, the tests of
fairness, of clients that leave and of the time limit have wide margins on a busy machine."""

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from serving import ModelRepository, Settings, create_app
from serving.testing import free_port
from tests.serving.conftest import (
    MODEL_DIR_NAME,
    finishing_order,
    metric,
    parse_stream,
    wait_idle,
)

DELAY_S = 0.01  # per generated token, once slowed
PATH = f"/v2/models/{MODEL_DIR_NAME}"
LONG = {"prompt": "", "max_new_tokens": 100}  # about 1 s when slowed
LABELS = {"model": MODEL_DIR_NAME, "version": "1"}


@pytest.fixture
def slow(model, monkeypatch):
    """Every forward pass, so every round of generated tokens, takes DELAY_S longer (on the
    scheduler's thread, like real work). Apps created after this fixture decode with it."""
    run = model.session.run

    def slowed(feed):
        time.sleep(DELAY_S)
        return run(feed)

    monkeypatch.setattr(model.session, "run", slowed)


@contextmanager
def serve(repository: ModelRepository, **settings) -> Iterator[httpx.Client]:
    """A client of ``create_app(repository, Settings(**settings))`` served by uvicorn."""
    app = create_app(repository, Settings(**settings))
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{config.port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)


def _tokens_after_leaving(client: httpx.Client, leave) -> tuple[float, float]:
    """``leave()`` (a request its client gives up on), then: seconds until nothing is in flight,
    and the tokens generated in all."""
    before = metric(client, "qwthn_generated_tokens_total", **LABELS)
    leave()
    idle = wait_idle(client, **LABELS)
    time.sleep(10 * DELAY_S)  # were it still generating, tokens would keep coming
    return idle, metric(client, "qwthn_generated_tokens_total", **LABELS) - before


def _works(client: httpx.Client) -> None:
    r = client.post(PATH + "/generate", json={"prompt": "ab", "max_new_tokens": 3})
    assert r.status_code == 200 and r.json()["completion_tokens"] == 3, r.text


@pytest.mark.parametrize(("max_active", "first"), [(8, "short"), (1, "long 1")])
def test_the_short_one_goes_first_unless_it_must_queue(repository, slow, max_active, first):
    """Taking turns, a short request finishes while a long one generates; with one generation
    at a time (--max-concurrent-generations 1) it waits for the long one, in arrival order."""
    long, short = {"prompt": "", "max_new_tokens": 50}, {"prompt": "ab", "max_new_tokens": 3}
    with serve(repository, max_concurrent_generations=max_active) as client:
        url = str(client.base_url)
        finished = asyncio.run(finishing_order(url, MODEL_DIR_NAME, long, short, longs=1))
    assert finished[0][0] == first, [name for name, _ in finished]
    assert {name: a["completion_tokens"] for name, a in finished} == {"long 1": 50, "short": 3}


def test_a_client_that_leaves_mid_stream_stops_its_generation(repository, slow):
    def leave() -> None:
        with client.stream("POST", PATH + "/generate_stream", json=LONG) as r:
            lines = r.iter_lines()
            for _ in range(4):  # two token events and their blank lines
                next(lines)

    with serve(repository) as client:
        idle, tokens = _tokens_after_leaving(client, leave)
        assert idle < 0.5 and 2 <= tokens < 30  # of 100
        _works(client)


def test_a_client_that_gives_up_on_generate_stops_its_generation(repository, slow):
    def leave() -> None:
        with pytest.raises(httpx.ReadTimeout):
            client.post(PATH + "/generate", json=LONG, timeout=0.2)

    with serve(repository) as client:
        idle, tokens = _tokens_after_leaving(client, leave)
        assert idle < 0.5 and tokens < 50  # of 100
        _works(client)
        labels = {"method": "POST", "endpoint": "/v2/models/{model_name}/generate", "status": "499"}
        assert metric(client, "qwthn_requests_total", **labels) == 1


def test_the_time_limit_is_a_504_or_an_error_event(repository, slow):
    with serve(repository, timeout_s=0.3) as client:
        r = client.post(PATH + "/generate", json=LONG)
        assert r.status_code == 504
        expected = f"model '{MODEL_DIR_NAME}' version 1: generation did not finish within 0.3 s"
        assert expected in r.json()["error"] and "--timeout-s" in r.json()["error"]
        with client.stream("POST", PATH + "/generate_stream", json=LONG) as r:
            assert r.status_code == 200
            streamed = parse_stream(r.iter_lines())
        assert streamed.error is not None and expected in streamed.error
        assert 0 < len(streamed.tokens) < 100
        _works(client)
        assert metric(client, "qwthn_generation_requests_in_flight", **LABELS) == 0


def test_a_model_that_cannot_generate_is_a_400(repository, model, monkeypatch):
    with serve(repository) as client:
        monkeypatch.setattr(model.session.metadata, "tokenizer", None)
        r = client.post(PATH + "/generate", json={"prompt": "a"})
        assert r.status_code == 400 and "carries no tokenizer" in r.json()["error"]
        monkeypatch.delitem(model.outputs, "logits")
        r = client.post(PATH + "/generate_stream", json={"prompt": "a"})
        assert r.status_code == 400
        assert "is not a causal LM with a KV cache (it lacks 'logits')" in r.json()["error"]
