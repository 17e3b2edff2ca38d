"""Finding models: one export directory, or ``<repo>/<model>/<version>/``; and clear errors."""

import pytest

from serving.errors import NotFoundError
from serving.repository import ModelRepository, RepositoryError, discover


def _fake_export(path):
    """Enough of an export directory for discovery (which loads nothing)."""
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(b"")
    (path / "manifest.json").write_text("{}")
    return path


def test_single_export_is_one_model_named_after_the_directory(tmp_path):
    export = _fake_export(tmp_path / "my-model")
    (source,) = discover(export)
    assert (source.name, source.version, source.directory) == ("my-model", 1, export)


def test_repository_layout_versions_and_models(tmp_path):
    _fake_export(tmp_path / "a" / "1")
    _fake_export(tmp_path / "a" / "10")
    _fake_export(tmp_path / "b" / "3")
    (tmp_path / "a" / "notes.txt").write_text("ignored: files next to versions")
    (tmp_path / ".cache").mkdir()  # hidden directories are not models
    found = {(s.name, s.version) for s in discover(tmp_path)}
    assert found == {("a", 1), ("a", 10), ("b", 3)}


@pytest.mark.parametrize(
    ("layout", "fragment"),
    [
        ("missing", "no such directory"),
        ("file", "is not a directory"),
        ("empty", "no models found"),
        ("no versions", "no version directories"),
        ("version not a number", "must be named by a non-negative integer"),
        ("version not an export", "model.onnx and manifest.json missing"),
        ("half an export", "manifest.json missing"),
        ("export directly under the repository", "put it in a version directory"),
        ("same version twice", "are the same version 1"),
    ],
)
def test_layout_errors_name_the_path_and_what_is_expected(tmp_path, layout, fragment):
    target = tmp_path / "repo"
    if layout == "file":
        target.write_text("")
    elif layout == "empty":
        target.mkdir()
    elif layout == "no versions":
        (target / "m").mkdir(parents=True)
    elif layout == "version not a number":
        _fake_export(target / "m" / "latest")
    elif layout == "version not an export":
        (target / "m" / "1").mkdir(parents=True)
    elif layout == "half an export":
        target.mkdir()
        (target / "model.onnx").write_bytes(b"")
    elif layout == "export directly under the repository":
        _fake_export(target / "m")
    elif layout == "same version twice":
        _fake_export(target / "m" / "1")
        _fake_export(target / "m" / "01")
    with pytest.raises(RepositoryError, match=fragment) as info:
        discover(target)
    assert str(tmp_path) in str(info.value)


def test_a_broken_model_file_is_a_repository_error(tmp_path):
    export = _fake_export(tmp_path / "broken")
    with pytest.raises(RepositoryError, match="cannot load the model"):
        ModelRepository.load(export)


def test_lookup_by_name_and_version():
    class Stub:
        def __init__(self, name, version):
            self.name, self.version = name, version

    repo = ModelRepository([Stub("m", 1), Stub("m", 3), Stub("n", 2)])
    assert len(repo) == 3
    assert repo.get("m").version == 3  # the highest is the default
    assert repo.get("m", "1").version == 1
    assert repo.versions("m") == [1, 3]
    with pytest.raises(NotFoundError, match="unknown model 'x' \\(models: m, n\\)"):
        repo.get("x")
    with pytest.raises(NotFoundError, match="no version '2' \\(versions: 1, 3\\)"):
        repo.get("m", "2")
    with pytest.raises(NotFoundError, match="no version 'v1'"):
        repo.get("m", "v1")


# A Triton model repository: <repo>/<model>/config.pbtxt beside the version directories.

TRITON_STYLE = [
    # what qwthn-export --triton-repo writes is checked in test_triton_repo_is_served below;
    # these are the other shapes of the text format a hand-written config.pbtxt may take
    'name: "m"  # a comment\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n',
    'name: \'m\'; max_batch_size: 0x10, backend: "onnx" "runtime"',
    'input [ { name: "a\\tb\\"c\\101\\x42" data_type: TYPE_FP32 dims: [ -1, 010 ] } ]',
    "input { name: 'x' dims: 1 dims: 2 } input < name: 'y' reshape { shape: [] } >",
    "dynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: [ 2, 4 ] }",
    'parameters { key: "a" value { string_value: "v" } }',
    'parameters [{key: "b" value: <string_value: "w">}, {key: "c", value: {string_value: "x"}}]',
    "instance_group [ { count: 2 kind: KIND_CPU }, { kind: KIND_GPU gpus: [0] } ]",
    'input [ { name: "s" optional: true } ] model_warmup [ ]',
    'name: "\\303\\274 \\u00fc"',  # octal escapes are UTF-8 bytes
]
MALFORMED = [
    'name: "unterminated',
    "input { name: 'x' ",
    "max_batch_size 8",
    "input [ { name: 'x' } { name: 'y' } ]",
    "dims: [ 1, 2",
    "= 3",
    "max_batch_size: 08",  # a leading 0 is octal, and 8 is no octal digit
]


def _as_parsed(message) -> dict:
    """A protobuf message in serving.pbtxt's form: field -> list of values, enums by name."""
    out: dict = {}
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            values = [{"key": [k], "value": [_as_parsed(value[k])]} for k in sorted(value)]
        elif field.message_type is not None:
            values = [_as_parsed(v) for v in values]
        elif field.enum_type is not None:
            values = [field.enum_type.values_by_number[v].name for v in values]
        elif field.type == field.TYPE_BOOL:
            values = [str(v).lower() for v in values]
        out[field.name] = list(values)
    return out


@pytest.mark.parametrize("text", TRITON_STYLE)
def test_pbtxt_reads_what_tritons_schema_reads(text):
    from google.protobuf import text_format
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    from serving import pbtxt

    expected = _as_parsed(text_format.Parse(text, ModelConfig()))
    assert _without_empty(pbtxt.parse(text)) == expected


def _without_empty(message: dict) -> dict:
    """protobuf does not list a repeated field given as an empty list; pbtxt keeps it."""
    return {
        k: [_without_empty(v) if isinstance(v, dict) else v for v in values]
        for k, values in message.items()
        if values
    }


@pytest.mark.parametrize("text", MALFORMED)
def test_pbtxt_refuses_what_protobuf_refuses_with_the_place(text):
    from google.protobuf import text_format
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    from serving import pbtxt

    with pytest.raises(text_format.ParseError):
        text_format.Parse(text, ModelConfig())
    with pytest.raises(pbtxt.PbtxtError, match=r"^line 1, column \d+: "):
        pbtxt.parse(text)


def _triton_model(repo, config: str | None, name="m"):
    _fake_export(repo / name / "1")
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)


def test_config_pbtxt_is_read_beside_the_versions(tmp_path):
    _triton_model(tmp_path, 'name: "m" platform: "onnxruntime_onnx" max_batch_size: 4')
    _triton_model(tmp_path, "backend: 'onnxruntime'", name="n")
    _triton_model(tmp_path, None, name="o")
    configs = {s.name: s.config for s in discover(tmp_path)}
    assert configs["m"].name == "m" and configs["m"].max_batch_size == 4
    assert configs["n"].name is None and configs["n"].max_batch_size is None
    assert configs["o"] is None


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ('name: "other"', "names the model 'other' but its directory is 'm'"),
        ('platform: "tensorrt_plan"', "platform 'tensorrt_plan'; qwthn-serve runs"),
        ('backend: "python"', "backend 'python'"),
        ('name: "m" name: "m"', "'name' is given 2 times"),
        ("name: m", "'name' must be a quoted string"),
        ('max_batch_size: "8"', "'max_batch_size' must be an integer"),
        ("max_batch_size: -1", "is negative"),
        ("input [ { name: 'x' ", r"not protobuf text format: line 1, column 21"),
    ],
)
def test_a_bad_config_pbtxt_is_a_repository_error(tmp_path, config, fragment):
    _triton_model(tmp_path, config)
    with pytest.raises(RepositoryError, match=fragment) as info:
        discover(tmp_path)
    assert str(tmp_path / "m" / "config.pbtxt") in str(info.value)


def test_qwthn_serve_refuses_a_misnamed_config_before_loading(tmp_path, capsys):
    from serving.cli import main

    _triton_model(tmp_path, 'name: "tiny"', name="renamed")
    assert main([str(tmp_path)]) == 2
    assert "names the model 'tiny' but its directory is 'renamed'" in capsys.readouterr().err


def test_an_unapplied_max_batch_size_is_logged(tmp_path, caplog):
    from serving.cli import _warn_unapplied_batch_size

    _triton_model(tmp_path, "max_batch_size: 16")
    (source,) = discover(tmp_path)
    with caplog.at_level("WARNING"):
        _warn_unapplied_batch_size(source, 16)
        assert not caplog.records
        _warn_unapplied_batch_size(source, 4)
    assert "config.pbtxt has max_batch_size 16" in caplog.text
    assert "--max-batch-size 4" in caplog.text


def test_a_triton_repository_from_qwthn_export_is_served(export_dir, reference, tmp_path):
    """qwthn-export --triton-repo's output, through the HTTP app: the model under its config
    name, version 1, answering as the export itself does."""
    import numpy as np
    from fastapi.testclient import TestClient

    from exporters.triton import TritonOptions, write_model_entry
    from serving import Settings, create_app
    from tests.serving.conftest import full_feed, ids_input, output_array

    repo = tmp_path / "repo"
    write_model_entry(export_dir, TritonOptions(repo, model_name="tiny-triton", max_batch_size=4))
    (source,) = discover(repo)
    assert (source.name, source.version, source.config.max_batch_size) == ("tiny-triton", 1, 4)
    repository = ModelRepository.load(repo, threads=1)
    ids = np.array([[3, 1, 4, 1, 5]], np.int64)
    request = {"inputs": [ids_input(ids)], "outputs": [{"name": "logits"}]}
    with TestClient(create_app(repository, Settings(max_batch_size=4))) as client:
        metadata = client.get("/v2/models/tiny-triton").json()
        assert metadata["name"] == "tiny-triton" and metadata["versions"] == ["1"]
        index = client.post("/v2/repository/index").json()
        assert [(m["name"], m["version"], m["state"]) for m in index] == [
            ("tiny-triton", "1", "READY")
        ]
        r = client.post("/v2/models/tiny-triton/versions/1/infer", json=request)
        assert r.status_code == 200, r.text
    expected = reference.run(full_feed(reference, ids))["logits"]
    np.testing.assert_allclose(output_array(r.json(), "logits"), expected, rtol=0, atol=1e-6)


def test_the_docs_client_snippet_runs_against_the_server(server, reference):
    """docs/triton-kserve.md's tritonclient code, as written there, against qwthn-serve (which
    speaks the same protocol and configuration extension): it sends every input itself."""
    import re
    from pathlib import Path

    import numpy as np

    from tests.serving.conftest import full_feed

    docs = (Path(__file__).parents[2] / "docs" / "triton-kserve.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", docs, re.S) if "infer(" in b]
    assert 'url, model = "localhost:8000", "tiny-llama"' in snippet
    address = server.url.removeprefix("http://")
    namespace: dict = {}
    exec(snippet.replace('"localhost:8000", "tiny-llama"', f'"{address}", "tiny"'), namespace)
    expected = reference.run(full_feed(reference, np.array([[1, 2, 3]])))["logits"]
    np.testing.assert_allclose(namespace["logits"], expected, rtol=0, atol=1e-5)
    assert namespace["next_token"] == int(expected[0, -1].argmax())
