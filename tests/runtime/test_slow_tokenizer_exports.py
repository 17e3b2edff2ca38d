"""An export whose tokenizer has no tokenizer.json (a slow, sentencepiece-only tokenizer) is
still served and run with token ids; text generation says what is missing."""

from __future__ import annotations

import json

import onnx
import pytest
from starlette.testclient import TestClient

from qwthn_onnx.cli.run import main as run_main
from qwthn_onnx.runtime.metadata import encode_files
from qwthn_onnx.runtime.session import QWTHNSession
from serving.app import Settings, create_app
from serving.model import ServedModel
from serving.repository import ModelRepository


@pytest.fixture(scope="module")
def slow_tokenizer_model(export, tmp_path_factory):
    proto = onnx.load(str(export / "model.onnx"))
    files = {"tokenizer_config.json": "{}", "spiece.model": b"\x00\x01"}
    for prop in proto.metadata_props:
        if prop.key == "qwthn.tokenizer":
            prop.value = json.dumps(encode_files(files))
    path = tmp_path_factory.mktemp("slow_tokenizer") / "model.onnx"
    onnx.save(proto, str(path))
    return path


def test_the_server_starts_and_generation_names_the_missing_file(slow_tokenizer_model):
    session = QWTHNSession(slow_tokenizer_model)
    model = ServedModel("slow", 1, slow_tokenizer_model.parent, session)
    with TestClient(create_app(ModelRepository([model]), Settings())) as client:
        assert client.get("/v2/health/ready").status_code == 200
        answer = client.post("/v2/models/slow/generate", json={"prompt": "1+1="})
        assert answer.status_code == 400
        assert "no tokenizer.json" in answer.json()["error"]
        ids = {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 5]}
        assert client.post("/v2/models/slow/infer", json={"inputs": [ids]}).status_code == 200


def test_qwthn_run_says_what_is_missing(slow_tokenizer_model, capsys):
    assert run_main([str(slow_tokenizer_model), "-p", "1+1="]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the export's tokenizer has no tokenizer.json")
    assert "Traceback" not in err
