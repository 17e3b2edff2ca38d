"""The app in this process, for what a healthy server process cannot show: a model that fails
(500) or hangs (504), and readiness before the batchers run (503)."""

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

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
