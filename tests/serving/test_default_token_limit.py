"""A request that leaves its token limit out gets the default, capped by the server's
--max-tokens, instead of a 400 about a limit the client never set."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from serving.app import Settings, create_app
from serving.repository import ModelRepository


@pytest.fixture(scope="module")
def client(export_dir):
    app = create_app(ModelRepository.load(export_dir), Settings(max_tokens=4))
    with TestClient(app) as client:
        yield client


MODEL = "tiny-llama"


@pytest.mark.parametrize(
    "path, body, count",
    [
        ("/v1/completions", {"model": MODEL, "prompt": "12+", "temperature": 0}, "completion"),
        ("/v2/models/tiny-llama/generate", {"text_input": "12+"}, None),
        ("/v2/models/tiny-llama/generate", {"prompt": "12+"}, "ours"),
    ],
)
def test_an_unset_limit_is_capped_by_the_server(client, path, body, count):
    answer = client.post(path, json=body)
    assert answer.status_code == 200, answer.text
    if count == "completion":
        assert answer.json()["usage"]["completion_tokens"] <= 4
    elif count == "ours":
        assert len(answer.json()["token_ids"]) <= 4


def test_a_limit_the_client_sets_over_the_server_limit_is_refused(client):
    answer = client.post("/v1/completions", json={"model": MODEL, "prompt": "1", "max_tokens": 9})
    assert answer.status_code == 400
    assert "max_tokens 9 is over this server's limit of 4" in answer.json()["error"]["message"]
