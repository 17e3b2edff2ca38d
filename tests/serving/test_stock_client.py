"""A stock Open Inference Protocol v2 client against a real server process: NVIDIA's
``tritonclient.http``, as a Triton user would point it at us, JSON and binary tensors both, and
Triton's model-configuration and statistics extensions."""

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
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


def test_model_config_is_a_triton_model_configuration(client, reference):
    config = client.get_model_config("tiny")
    # Every field is one of Triton's ModelConfig, its enums spelt as Triton spells them.
    json_format.ParseDict(config, model_config_pb2.ModelConfig())
    assert (config["name"], config["platform"], config["backend"]) == (
        "tiny",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config["max_batch_size"] == 8 and "dynamic_batching" in config
    cache = reference.metadata.cache
    heads, head_dim = cache["num_kv_heads"], cache["head_dim"]
    inputs = {t["name"]: (t["data_type"], t["dims"], t["optional"]) for t in config["input"]}
    # max_batch_size > 0: dims leave the batch dimension out, as in a config.pbtxt
    assert inputs["input_ids"] == ("TYPE_INT64", [-1], False)
    assert inputs["attention_mask"] == ("TYPE_INT64", [-1], True)
    assert inputs["past_key_values.0.key"] == ("TYPE_FP32", [heads, -1, head_dim], True)
    assert set(inputs) == {i.name for i in reference.session.get_inputs()}
    outputs = {t["name"]: (t["data_type"], t["dims"]) for t in config["output"]}
    vocab = reference.session.get_outputs()[0].shape[-1]
    assert outputs["logits"] == ("TYPE_FP32", [-1, vocab])
    assert set(outputs) == {o.name for o in reference.session.get_outputs()}
    assert client.get_model_config("tiny", "1")["input"] == config["input"]
    with pytest.raises(InferenceServerException, match="has no version '9'"):
        client.get_model_config("tiny", "9")


def _stats(client, version: str) -> dict:
    (stats,) = client.get_inference_statistics("tiny", version)["model_stats"]
    assert (stats["name"], stats["version"]) == ("tiny", version)
    return stats


def _counts(stats: dict) -> dict[str, int]:
    flat = {k: stats[k] for k in ("inference_count", "execution_count")}
    return flat | {k: v["count"] for k, v in stats["inference_stats"].items()}


def test_statistics_count_inferences_generations_and_failures(client, server):
    before = _counts(_stats(client, "1"))
    ids = np.array([[3, 1, 4], [1, 5, 9]], np.int64)
    tensor = httpclient.InferInput("input_ids", list(ids.shape), "INT64")
    tensor.set_data_from_numpy(ids)
    client.infer("tiny", [tensor], model_version="1")
    with pytest.raises(InferenceServerException):
        client.infer(
            "tiny", [httpclient.InferInput("input_ids", [1, 1], "INT32")], model_version="1"
        )
    r = httpx.post(
        f"{server.url}/v2/models/tiny/versions/1/generate",
        json={"prompt": "a", "max_new_tokens": 4},
    )
    assert r.json()["completion_tokens"] == 4
    after = _stats(client, "1")
    delta = {k: v - before[k] for k, v in _counts(after).items()}
    assert delta["success"] == 2 and delta["fail"] == 1
    assert delta["inference_count"] == 2 + 1  # the infer request's two rows, one generation
    # one infer run; the generation's prefill and three decode calls
    assert delta["execution_count"] == 1 + 4
    assert delta["queue"] == delta["compute_infer"] == 2  # the two that ran
    assert delta["compute_input"] == 2 and delta["compute_output"] == 2
    assert after["last_inference"] > 0
    assert any(b["batch_size"] == 2 for b in after["batch_stats"])
    for name, duration in after["inference_stats"].items():
        assert (duration["ns"] > 0) == (duration["count"] > 0), name
    # every model version, for an empty model name (/v2/models/stats)
    everything = client.get_inference_statistics()["model_stats"]
    assert [(s["name"], s["version"]) for s in everything] == [("tiny", "1"), ("tiny", "2")]
    assert [s["version"] for s in client.get_inference_statistics("tiny")["model_stats"]] == [
        "1",
        "2",
    ]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_inference_statistics("nope")
