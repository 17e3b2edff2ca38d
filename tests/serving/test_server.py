"""The Open Inference Protocol v2 REST API of a real server process, over loopback.

No stock OIP client (tritonclient) is installed here, so requests are written exactly as the
KServe v2 specification shows them: these tests are the contract.
"""

import asyncio
import json
import socket
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qwthn_onnx.runtime.signature import past_names, present_names
from tests.serving.conftest import MODEL_DIR_NAME, full_feed, ids_input, metric, output_array

ATOL = 1e-5
INFER = "/v2/models/tiny/infer"


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _good_request(client, reference, path=INFER):
    """A valid inference that must still work: the server survived what came before."""
    ids = np.array([[5, 6, 7]])
    r = client.post(path, json={"inputs": [ids_input(ids)], "outputs": [{"name": "logits"}]})
    assert r.status_code == 200, r.text
    expected = reference.run(full_feed(reference, ids))["logits"]
    np.testing.assert_allclose(output_array(r.json(), "logits"), expected, atol=ATOL)


# Health and metadata.


def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    r = client.get("/v2/models/tiny/versions/1/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    meta = client.get("/v2").json()
    assert meta["name"] == "qwthn-serve" and meta["version"]
    assert {"qwthn_qasm", "model_repository"} <= set(meta["extensions"])


def test_repository_index_lists_every_version(client):
    r = client.post("/v2/repository/index")
    assert r.status_code == 200, r.text
    assert r.json() == [
        {"name": "tiny", "version": "1", "state": "READY", "generation": True},
        {"name": "tiny", "version": "2", "state": "READY", "generation": True},
    ]


def test_model_metadata_shapes_datatypes_and_adapters(client, reference):
    meta = client.get("/v2/models/tiny").json()
    assert meta["name"] == "tiny"
    assert meta["versions"] == ["1", "2"]
    assert meta["platform"] == "onnxruntime_onnx"
    cache = reference.metadata.cache
    heads, head_dim = cache["num_kv_heads"], cache["head_dim"]
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]}
    assert inputs["input_ids"] == ("INT64", [-1, -1])
    assert inputs["attention_mask"] == ("INT64", [-1, -1])
    assert inputs["position_ids"] == ("INT64", [-1, -1])
    for layer in range(cache["num_layers"]):
        for name in past_names(layer):
            assert inputs[name] == ("FP32", [-1, heads, -1, head_dim])
    outputs = {t["name"]: (t["datatype"], t["shape"]) for t in meta["outputs"]}
    vocab = reference.session.get_outputs()[0].shape[-1]
    assert outputs["logits"] == ("FP32", [-1, -1, vocab])
    assert outputs[present_names(0)[0]] == ("FP32", [-1, heads, -1, head_dim])
    # Spec-conformant flat parameters, and the adapters in full under "qwthn".
    params = meta["parameters"]
    assert params["architecture"] == "LlamaForCausalLM"
    assert params["kernels"] is reference.kernels
    assert params["adapted_layers"] == len(reference.metadata.circuits)
    assert params["dynamic_batching"] is True and params["max_batch_size"] == 8
    assert all(isinstance(v, str | int | float | bool) for v in params.values())
    qwthn = meta["qwthn"]
    assert qwthn["adapter_config"] == reference.metadata.adapter_config
    assert qwthn["adapted_layers"] == list(reference.metadata.circuits)
    assert qwthn["circuits"] == reference.metadata.circuits
    assert qwthn["kernels"] is reference.kernels
    # The versioned path gives the same for that version.
    assert client.get("/v2/models/tiny/versions/1").json()["inputs"] == meta["inputs"]


def test_unbatched_single_export_is_named_after_its_directory(unbatched):
    with httpx.Client(base_url=unbatched.url, timeout=30) as c:
        meta = c.get(f"/v2/models/{MODEL_DIR_NAME}").json()
        assert meta["versions"] == ["1"]
        assert meta["parameters"]["dynamic_batching"] is False
        assert c.get(f"/v2/models/{MODEL_DIR_NAME}/versions/1/ready").status_code == 200


# Inference.


def test_infer_input_ids_only_equals_the_session(client, reference):
    ids = np.array([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]])
    request = {"id": "42", "inputs": [ids_input(ids)]}
    r = client.post(INFER, json=request)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "42"
    assert body["model_name"] == "tiny" and body["model_version"] == "2"  # the highest version
    expected = reference.run(full_feed(reference, ids))
    # No "outputs" in the request: every output, flat row-major data with its shape.
    assert [o["name"] for o in body["outputs"]] == list(expected)
    for output in body["outputs"]:
        assert output["datatype"] == "FP32"
        assert output["shape"] == list(expected[output["name"]].shape)
        assert len(output["data"]) == expected[output["name"]].size
        np.testing.assert_allclose(
            output_array(body, output["name"]), expected[output["name"]], atol=ATOL
        )


def test_infer_with_explicit_cache_equals_the_session(client, reference):
    """A decode-style chunk after a prefill: every input given, the cache as FP32 tensors."""
    prefix, chunk = np.array([[3, 1, 4, 1, 5]]), np.array([[9, 2]])
    present = reference.run(full_feed(reference, prefix))
    past = prefix.shape[1]
    feed = {
        "input_ids": chunk,
        "attention_mask": np.ones((1, past + chunk.shape[1]), np.int64),
        "position_ids": np.arange(past, past + chunk.shape[1])[None],
    }
    for layer in range(reference.metadata.cache["num_layers"]):
        for past_name, present_name in zip(past_names(layer), present_names(layer), strict=True):
            feed[past_name] = present[present_name]
    inputs = [
        {
            "name": name,
            "shape": list(value.shape),
            "datatype": "FP32" if value.dtype == np.float32 else "INT64",
            "data": value.ravel().tolist(),
        }
        for name, value in feed.items()
    ]
    expected = reference.run(feed)
    r = client.post("/v2/models/tiny/versions/1/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "1"
    for name in ("logits", present_names(0)[0], present_names(1)[1]):
        np.testing.assert_allclose(output_array(r.json(), name), expected[name], atol=ATOL)
    # The cache given but no mask or positions: the server fills them from the past length.
    cache_only = [i for i in inputs if i["name"] not in ("attention_mask", "position_ids")]
    r = client.post(INFER, json={"inputs": cache_only, "outputs": [{"name": "logits"}]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(output_array(r.json(), "logits"), expected["logits"], atol=ATOL)


def test_infer_left_padded_batch_positions_follow_the_mask(client, reference):
    """A mask without positions: they count attended tokens, as generation computes them."""
    ids = np.array([[0, 0, 5, 6], [1, 2, 3, 4]])
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    feed = full_feed(reference, ids)
    feed["attention_mask"] = mask
    feed["position_ids"] = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)
    mask_input = {**ids_input(mask), "name": "attention_mask"}
    request = {"inputs": [ids_input(ids), mask_input], "outputs": [{"name": "logits"}]}
    r = client.post(INFER, json=request)
    assert r.status_code == 200, r.text
    expected = reference.run(feed)["logits"]
    np.testing.assert_allclose(output_array(r.json(), "logits"), expected, atol=ATOL)


def test_infer_nested_data_requested_outputs_and_generated_id(client, reference):
    ids = np.array([[11, 12, 13]])
    nested = {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [[11, 12, 13]]}
    request = {"inputs": [nested], "outputs": [{"name": "logits"}, {"name": "present.0.key"}]}
    body = client.post(INFER, json=request).json()
    assert [o["name"] for o in body["outputs"]] == ["logits", "present.0.key"]
    assert isinstance(body["id"], str) and body["id"]  # none given: the server makes one
    expected = reference.run(full_feed(reference, ids))["logits"]
    np.testing.assert_allclose(output_array(body, "logits"), expected, atol=ATOL)


def test_infer_accepts_a_body_without_json_content_type(client, reference):
    """``curl -d`` sends application/x-www-form-urlencoded; the body is JSON all the same."""
    ids = np.array([[5, 6, 7]])
    body = json.dumps({"inputs": [ids_input(ids)], "outputs": [{"name": "logits"}]})
    r = client.post(
        INFER, content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 200, r.text


# Errors: status, {"error": message naming the problem}, and the server goes on serving.

IDS = {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}
CACHE_KEY = {"name": "past_key_values.0.key", "shape": [1, 3, 0, 8], "datatype": "FP32", "data": []}
BAD_REQUESTS = {
    "bad json": (INFER, b'{"inputs": [', 400, "not valid JSON"),
    "not an object": (INFER, b"[1, 2]", 400, "request body"),
    "no inputs": (INFER, {"id": "1"}, 400, "inputs: Field required"),
    "input without shape": (INFER, {"inputs": [{**IDS, "shape": None}]}, 400, "inputs[0].shape"),
    "shape vs data": (INFER, {"inputs": [{**IDS, "shape": [1, 4]}]}, 400, "holds 4 elements"),
    "negative dim": (INFER, {"inputs": [{**IDS, "shape": [-1, 3]}]}, 400, "inputs[0].shape[0]"),
    "wrong rank": (INFER, {"inputs": [{**IDS, "shape": [3]}]}, 400, "does not fit"),
    "fixed dim": (INFER, {"inputs": [IDS, CACHE_KEY]}, 400, "past_key_values.0.key"),
    "wrong datatype": (INFER, {"inputs": [{**IDS, "datatype": "INT32"}]}, 400, "INT64"),
    "unknown datatype": (INFER, {"inputs": [{**IDS, "datatype": "LONG"}]}, 400, "LONG"),
    "floats for INT64": (INFER, {"inputs": [{**IDS, "data": [1.5, 2, 3]}]}, 400, "integers"),
    "ragged data": (INFER, {"inputs": [{**IDS, "data": [[1, 2], [3]]}]}, 400, "input_ids"),
    "unknown input": (INFER, {"inputs": [IDS, {**IDS, "name": "pixels"}]}, 400, "'pixels'"),
    "twice": (INFER, {"inputs": [IDS, IDS]}, 400, "twice"),
    "missing input_ids": (
        INFER,
        {"inputs": [{**IDS, "name": "attention_mask"}]},
        400,
        "missing required input 'input_ids'",
    ),
    "unknown output": (
        INFER,
        {"inputs": [IDS], "outputs": [{"name": "hidden"}]},
        400,
        "no output 'hidden'",
    ),
    "batch mismatch": (
        INFER,
        {"inputs": [IDS, {**IDS, "name": "attention_mask", "shape": [3, 1]}]},
        400,
        "dimension 'batch'",
    ),
    "token out of vocabulary": (
        INFER,
        {"inputs": [{**IDS, "data": [1, 2, 100000]}]},
        400,
        "token ids must be in",
    ),
    "unknown model": ("/v2/models/nope/infer", {"inputs": [IDS]}, 404, "unknown model 'nope'"),
    "unknown version": (
        "/v2/models/tiny/versions/3/infer",
        {"inputs": [IDS]},
        404,
        "no version '3'",
    ),
    "version not a number": (
        "/v2/models/tiny/versions/latest/infer",
        {"inputs": [IDS]},
        404,
        "no version 'latest'",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_answers_an_error_and_the_server_goes_on(client, reference, case):
    path, payload, status, fragment = BAD_REQUESTS[case]
    if isinstance(payload, bytes):
        r = client.post(path, content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=payload)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"]
    assert fragment in r.json()["error"]
    _good_request(client, reference)


@pytest.mark.parametrize(
    ("length", "payload", "fragment"),
    [
        ("abc", b"", "Inference-Header-Content-Length must be the byte length"),
        ("99999", b"", "Inference-Header-Content-Length must be the byte length"),
        (None, b"\0" * 16, "goes past the end of the 16 bytes"),
        (None, b"\0" * 40, "16 bytes after the JSON belong to no input"),
    ],
)
def test_bad_binary_tensor_data_is_a_400(client, reference, length, payload, fragment):
    header = json.dumps(
        {"inputs": [{**IDS, "data": None, "parameters": {"binary_data_size": 24}}]}
    ).encode()
    r = client.post(
        INFER,
        content=header + payload,
        headers={"Inference-Header-Content-Length": length or str(len(header))},
    )
    assert r.status_code == 400 and fragment in r.json()["error"], r.text
    _good_request(client, reference)


@pytest.mark.parametrize("path", ["/v2/models/nope", "/v2/models/tiny/versions/9/ready"])
def test_unknown_model_or_version_is_404_everywhere(client, path):
    r = client.get(path)
    assert r.status_code == 404 and "error" in r.json()


def test_oversize_body_is_413_declared_or_chunked(client, reference):
    big = b'{"inputs": [' + b" " * (2 * 2**20) + b"]}"  # the server allows 1 MiB
    r = client.post(INFER, content=big)
    assert r.status_code == 413
    assert "too large" in r.json()["error"] and "1 MiB" in r.json()["error"]
    _good_request(client, reference)

    def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(3):
            yield b" " * 2**19

    r = client.post(INFER, content=chunks())
    assert r.status_code == 413 and "too large" in r.json()["error"]
    _good_request(client, reference)
    metrics = client.get("/metrics").text  # refused before routing, counted under its route
    assert 'endpoint="/v2/models/{model_name}/infer",method="POST",status="413"} 2.0' in metrics


def test_a_body_cut_off_by_the_client_counts_as_499_not_500(client, server, reference):
    """A client that closes mid-body gets no answer; /metrics counted it as a server error
    (500) until the metrics middleware learnt that an app returning without answering means
    the client went away (found by the soak)."""
    labels = {"endpoint": "/v2/models/{model_name}/infer", "method": "POST"}
    before = {s: metric(client, "qwthn_requests_total", **labels, status=s) for s in ("499", "500")}
    head = f"POST {INFER} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(head + b'{"inputs": [')
        raw.shutdown(socket.SHUT_WR)
        assert raw.recv(1024) == b""  # closed without an answer
    deadline = time.monotonic() + 10  # the server counts it once it has seen the disconnect
    while metric(client, "qwthn_requests_total", **labels, status="499") == before["499"]:
        assert time.monotonic() < deadline, "the cut-off request was never counted"
        time.sleep(0.05)
    assert metric(client, "qwthn_requests_total", **labels, status="499") == before["499"] + 1
    assert metric(client, "qwthn_requests_total", **labels, status="500") == before["500"]
    _good_request(client, reference)


def test_unknown_route_and_method_answer_errors(client):
    r = client.get("/v2/nothing/here")
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]
    r = client.get(INFER)
    assert r.status_code == 405 and "not allowed" in r.json()["error"]


# OpenQASM programs.


def test_qasm_programs_of_an_export(client, export_dir, reference):
    r = client.get("/v2/models/tiny/versions/1/qasm")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "tiny" and body["model_version"] == "1"
    assert set(body["layers"]) == set(reference.metadata.circuits)
    index = json.loads((export_dir / "qasm" / "index.json").read_text())
    for layer, entry in body["layers"].items():
        assert entry["program"] == (export_dir / "qasm" / entry["file"]).read_text()
        assert f"// layer: '{layer}'" in entry["program"] and "OPENQASM 3.0;" in entry["program"]
        assert entry["inputs"] == index["layers"][layer]["inputs"]
        assert entry["observables"] == index["layers"][layer]["observables"]


def test_qasm_of_an_export_without_programs_is_404(client):
    r = client.get("/v2/models/tiny/qasm")  # the default, version 2, has no qasm/
    assert r.status_code == 404
    assert "no OpenQASM programs" in r.json()["error"]


# Batching, metrics, load.


def _histogram(client: httpx.Client, name: str) -> dict[str, float]:
    """``{le: cumulative count, "count": n, "sum": s}`` of one histogram, summed over labels."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name != name:
            continue
        for sample in family.samples:
            key = sample.labels.get("le") or sample.name.rsplit("_", 1)[-1]
            values[key] = values.get(key, 0.0) + sample.value
    return values


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


async def _concurrent(url: str, path: str, requests: list[np.ndarray], clients: int):
    """Send ``requests`` (token id arrays) from ``clients`` concurrent workers; responses in
    request order (status, body)."""
    results: list = [None] * len(requests)
    todo = iter(range(len(requests)))
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker():
            for i in todo:
                payload = {"inputs": [ids_input(requests[i])], "outputs": [{"name": "logits"}]}
                r = await client.post(path, json=payload)
                results[i] = (r.status_code, r.json())

        await asyncio.gather(*(worker() for _ in range(clients)))
    return results


def _check_all(results, requests, reference):
    for (status, body), ids in zip(results, requests, strict=True):
        assert status == 200, body
        expected = reference.run(full_feed(reference, ids))["logits"]
        np.testing.assert_allclose(output_array(body, "logits"), expected, atol=ATOL)


def _distinct_requests(n: int, seq: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 80, size=(1, seq)) for _ in range(n)]


def test_concurrent_requests_are_batched_and_split_back_correctly(client, server, reference):
    requests = _distinct_requests(16, 6)  # same shape, different tokens: a mis-split would show
    before = _histogram(client, "qwthn_batch_requests")
    results = asyncio.run(_concurrent(server.url, INFER, requests, clients=16))
    _check_all(results, requests, reference)
    delta = _delta(_histogram(client, "qwthn_batch_requests"), before)
    assert delta["sum"] == 16  # every request ran exactly once
    assert delta["count"] < 16  # fewer runs than requests ...
    assert delta["1.0"] < delta["count"]  # ... because some runs merged several
    assert delta["8.0"] == delta["count"]  # and none above --max-batch-size 8 rows
    rows = _delta(_histogram(client, "qwthn_batch_size"), {})
    assert rows["+Inf"] == rows["8.0"]


def test_no_batching_runs_every_request_alone(unbatched, reference):
    path = f"/v2/models/{MODEL_DIR_NAME}/infer"
    requests = _distinct_requests(16, 6, seed=1)
    with httpx.Client(base_url=unbatched.url) as c:
        before = _histogram(c, "qwthn_batch_requests")
        results = asyncio.run(_concurrent(unbatched.url, path, requests, clients=16))
        delta = _delta(_histogram(c, "qwthn_batch_requests"), before)
    _check_all(results, requests, reference)
    assert delta["count"] == 16 and delta["1.0"] == 16


def test_load_32_clients_mixed_shapes_no_errors(client, server, reference):
    """A bounded load test: 320 requests from 32 concurrent clients, three sequence lengths
    (never merged with each other), every answer checked."""
    rng = np.random.default_rng(7)
    requests = [rng.integers(0, 80, size=(1 + i % 2, (2, 5, 9)[i % 3])) for i in range(320)]
    before = _histogram(client, "qwthn_batch_requests")
    results = asyncio.run(_concurrent(server.url, INFER, requests, clients=32))
    _check_all(results, requests, reference)
    delta = _delta(_histogram(client, "qwthn_batch_requests"), before)
    assert delta["sum"] == 320


def test_metrics_count_requests_by_route_template_and_status(client):
    client.get("/v2/models/nope")
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    counts = {
        (s.labels["endpoint"], s.labels["status"]): s.value
        for s in families["qwthn_requests"].samples
        if s.name == "qwthn_requests_total"
    }
    assert counts[("/v2/models/{model_name}/infer", "200")] >= 1
    assert counts[("/v2/models/{model_name}", "404")] >= 1
    assert ("/v2/models/nope", "404") not in counts  # templates, not raw paths
    assert families["qwthn_models_loaded"].samples[0].value == 2
    for name in ("qwthn_request_duration_seconds", "qwthn_queue_duration_seconds"):
        assert any(s.name == f"{name}_count" and s.value > 0 for s in families[name].samples)


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "InferenceRequest" in schema["components"]["schemas"]
    body = schema["paths"]["/v2/models/{model_name}/infer"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/InferenceRequest")


def test_access_log_has_timestamps(server):
    lines = [line for line in server.log().splitlines() if "uvicorn.access" in line]
    assert lines and all(line[:4].isdigit() and line[10] == " " for line in lines)
    assert any('"GET /v2/health/ready HTTP/1.1" 200' in line for line in lines)
