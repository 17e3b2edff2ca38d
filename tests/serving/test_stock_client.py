"""A stock Open Inference Protocol v2 client against a real server process: NVIDIA's
``tritonclient.http``, as a Triton user would point it at us, JSON and binary tensors both."""

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serving.conftest import full_feed

ATOL = 1e-5


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield c
    c.close()


def test_health_metadata_and_repository_index(client, reference):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert client.get_server_metadata()["name"] == "qwthn-serve"
    meta = client.get_model_metadata("tiny", "1")
    assert meta["versions"] == ["1", "2"]
    assert {t["name"] for t in meta["inputs"]} == {i.name for i in reference.session.get_inputs()}
    index = client.get_model_repository_index()
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        ("tiny", "1", "READY"),
        ("tiny", "2", "READY"),
    ]


@pytest.mark.parametrize("binary_in", [False, True], ids=["json in", "binary in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json out", "binary out"])
def test_infer_equals_the_session(client, reference, binary_in, binary_out):
    ids = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], np.int64)
    tensor = httpclient.InferInput("input_ids", list(ids.shape), "INT64")
    tensor.set_data_from_numpy(ids, binary_data=binary_in)
    wanted = [
        httpclient.InferRequestedOutput("logits", binary_data=binary_out),
        httpclient.InferRequestedOutput("present.0.key", binary_data=binary_out),
    ]
    result = client.infer("tiny", [tensor], outputs=wanted, model_version="1", request_id="r7")
    assert result.get_response()["id"] == "r7"
    expected = reference.run(full_feed(reference, ids))
    for name in ("logits", "present.0.key"):
        got = result.as_numpy(name)
        assert got.dtype == np.float32 and got.shape == expected[name].shape
        np.testing.assert_allclose(got, expected[name], atol=ATOL)


def test_errors_reach_the_client_with_the_servers_message(client):
    tensor = httpclient.InferInput("input_ids", [1, 2], "INT32")
    tensor.set_data_from_numpy(np.array([[1, 2]], np.int32))
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [tensor])
    with pytest.raises(InferenceServerException, match="the model takes datatype INT64"):
        client.infer("tiny", [tensor])
