"""qwthn-export --triton-repo: a Triton / KServe model repository entry, checked against Triton's
own config schema (tritonclient's model_config_pb2) and the ONNX graph it describes, loaded by
plain onnxruntime from the repository with the library it names, written atomically."""

import hashlib
import os
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import np_to_triton_dtype

from exporters import ExportOptions, export_model
from exporters.cli import export_main
from exporters.triton import (
    CONFIG_FILE,
    TritonOptions,
    TritonRepoError,
    check_model_name,
    config_pbtxt,
    write_model_entry,
)
from qwthn_onnx.runtime import export_dir
from qwthn_onnx.runtime.library import get_library_path
from qwthn_onnx.runtime.session import QWTHNSession
from qwthn_onnx.runtime.signature import empty_cache
from tests.exporters.conftest import make_model_pt

LIBRARY = export_dir.library_file_name()


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """An export that runs only with the op library (no fallback functions) and keeps its
    weights in model.onnx.data, so both must travel into the repository."""
    root = tmp_path_factory.mktemp("triton_export")
    path, _ = make_model_pt(root / "model.pt", "llama")
    options = ExportOptions(verify=False, fallback=False, external_data=True)
    return export_model(path, root / "tiny-llama", options).directory


def _parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _triton_type(elem_type: int) -> str:
    """Triton's name of an ONNX element type, by way of tritonclient's own numpy mapping."""
    name = np_to_triton_dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    return "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}"


def _expected_dims(value: onnx.ValueInfoProto, batched: bool) -> list[int]:
    dims = [
        d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
    ]
    return dims[1:] if batched else dims


def _library_in_repo(repo: Path, root: str, op_library_filename: str) -> Path:
    return repo.joinpath(*PurePosixPath(op_library_filename).relative_to(root).parts)


def _feed(session: QWTHNSession, ids: np.ndarray) -> dict[str, np.ndarray]:
    batch, seq = ids.shape
    return {
        "input_ids": ids,
        "attention_mask": np.ones((batch, seq), np.int64),
        "position_ids": np.tile(np.arange(seq, dtype=np.int64), (batch, 1)),
        **empty_cache(session.metadata.cache, batch, np.float32),
    }


@pytest.mark.parametrize("max_batch_size", [8, 0])
def test_config_matches_the_graph_under_tritons_schema(export, tmp_path, max_batch_size):
    repo = tmp_path / "repo"
    options = TritonOptions(repo, model_name="tiny", max_batch_size=max_batch_size, instances=2)
    entry = write_model_entry(export, options)
    text = (repo / "tiny" / CONFIG_FILE).read_text()
    assert text == entry.config
    config = _parse(text)
    assert config.name == "tiny"
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == max_batch_size
    assert config.HasField("dynamic_batching") == (max_batch_size > 0)
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)
    ]
    graph = onnx.load(repo / "tiny" / "1" / export_dir.MODEL, load_external_data=False).graph
    batched = max_batch_size > 0
    for declared, values in ((config.input, graph.input), (config.output, graph.output)):
        assert [t.name for t in declared] == [v.name for v in values]
        for tensor, value in zip(declared, values, strict=True):
            data_type = model_config_pb2.DataType.Name(tensor.data_type)
            assert data_type == _triton_type(value.type.tensor_type.elem_type), tensor.name
            assert list(tensor.dims) == _expected_dims(value, batched), tensor.name
    # onnxruntime requires every input of these graphs: none may be left out of a request
    assert not any(t.optional or t.allow_ragged_batch for t in config.input)
    # every file of the export is in the version directory, the external weights included
    version_dir = repo / "tiny" / "1"
    assert (version_dir / export_dir.MODEL_DATA).is_file()
    for path in export.rglob("*"):
        if path.is_file():
            copy = version_dir / path.relative_to(export)
            assert copy.read_bytes() == path.read_bytes(), path.name
    # the library the config names, mapped from the container's /models to the repository
    (library,) = config.model_operations.op_library_filename
    assert library == f"/models/tiny/1/{LIBRARY}" == entry.op_library_filename
    in_repo = _library_in_repo(repo, "/models", library)
    assert in_repo == version_dir / LIBRARY
    source = export / LIBRARY if (export / LIBRARY).is_file() else Path(get_library_path())
    assert hashlib.sha256(in_repo.read_bytes()).digest() == (
        hashlib.sha256(source.read_bytes()).digest()
    )
    export_dir.check_integrity(version_dir)


def test_the_model_runs_in_plain_onnxruntime_from_the_repository_with_its_library(export, tmp_path):
    repo = tmp_path / "kserve"
    options = TritonOptions(repo, model_name="m", version=3, model_root="/mnt/models")
    entry = write_model_entry(export, options)
    (library,) = _parse(entry.config).model_operations.op_library_filename
    assert library == f"/mnt/models/m/3/{LIBRARY}"
    model_file = repo / "m" / "3" / export_dir.MODEL
    with pytest.raises(Exception, match=r"ai\.qwthn"):  # no fallback functions: needs the kernels
        ort.InferenceSession(str(model_file))
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(_library_in_repo(repo, "/mnt/models", library)))
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_file), so)
    reference = QWTHNSession(export, threads=1)
    feed = _feed(reference, np.array([[5, 6, 7, 8], [9, 10, 11, 12]], np.int64))
    (logits,) = session.run(["logits"], feed)
    np.testing.assert_array_equal(logits, reference.run(feed)["logits"])
    # the config declares every input required: onnxruntime refuses a run without any one
    for name in feed:
        partial = {k: v for k, v in feed.items() if k != name}
        with pytest.raises(ValueError, match=f"Required inputs.*{name}"):
            session.run(["logits"], partial)


def _graph_model(first_dim: str | int, with_default: bool) -> onnx.ModelProto:
    """y = x + b, where b may have a default (an initializer of the same name)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [first_dim, 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT16, [first_dim, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [first_dim, 3])
    initializers = [helper.make_tensor("b", TensorProto.FLOAT16, [1, 3], [1, 2, 3])]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        "g",
        [x, b],
        [y],
        initializers if with_default else [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_an_input_with_a_default_is_optional_without_batching_and_left_out_with_it(tmp_path):
    model = _graph_model(1, with_default=True)
    session = ort.InferenceSession(model.SerializeToString())
    session.run(None, {"x": np.zeros((1, 3), np.float16)})  # b really is optional here
    text, _ = config_pbtxt(model, "m", TritonOptions(tmp_path, max_batch_size=0))
    config = _parse(text)
    assert [(t.name, t.optional, list(t.dims)) for t in config.input] == [
        ("x", False, [1, 3]),
        ("b", True, [1, 3]),
    ]
    assert model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_FP16"
    # Triton's onnxruntime backend refuses optional inputs on a batching model
    batched = _graph_model("batch", with_default=True)
    config = _parse(config_pbtxt(batched, "m", TritonOptions(tmp_path))[0])
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [3])]


def test_a_graph_without_a_batch_dimension_needs_max_batch_size_0(tmp_path):
    model = _graph_model(1, with_default=False)
    with pytest.raises(TritonRepoError, match="--triton-max-batch-size 0"):
        config_pbtxt(model, "m", TritonOptions(tmp_path))


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty or only whitespace"),
        ("a/b", "'/' or '..'"),
        ("..", "'/' or '..'"),
        ("v1..2", "'/' or '..'"),
        (".hidden", "hidden directory"),
        ("tab\tname", "control characters"),
        ("x" * 256, "255 bytes"),
    ],
)
def test_names_triton_refuses_are_clear_errors(export, tmp_path, name, fragment):
    with pytest.raises(TritonRepoError, match=fragment) as info:
        write_model_entry(export, TritonOptions(tmp_path / "repo", model_name=name))
    assert "--triton-model-name" in str(info.value)
    assert not (tmp_path / "repo").exists()  # refused before anything was written


def test_a_safe_name_with_quotes_and_unicode_round_trips(tmp_path):
    check_model_name("tiny-llama_v1.0")
    name = 'quo"te\\ünï'
    text, library = config_pbtxt(_graph_model("batch", False), name, TritonOptions(tmp_path))
    config = _parse(text)
    assert config.name == name
    assert list(config.model_operations.op_library_filename) == [library]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"version": 0}, "version directories named 0"),
        ({"max_batch_size": -1}, "give 0 \\(no batching\\) or more"),
        ({"instances": 0}, "1 or more"),
        ({"model_root": "models"}, "absolute path"),
        ({"model_root": "/models/../etc"}, "without '..'"),
    ],
)
def test_bad_options_are_refused_before_writing(export, tmp_path, options, fragment):
    with pytest.raises(TritonRepoError, match=fragment):
        write_model_entry(export, TritonOptions(tmp_path / "repo", **options))
    assert not (tmp_path / "repo").exists()


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_an_existing_model_is_replaced_only_when_asked_and_other_models_never(export, tmp_path):
    repo = tmp_path / "repo"
    write_model_entry(export, TritonOptions(repo, model_name="a"))
    write_model_entry(export, TritonOptions(repo, model_name="b", max_batch_size=2))
    (repo / "notes.txt").write_text("not a model")
    before_a, before_b = _tree(repo / "a"), _tree(repo / "b")
    with pytest.raises(TritonRepoError, match=r"exists.*directories: 1\).*--triton-replace"):
        write_model_entry(export, TritonOptions(repo, model_name="a", max_batch_size=4))
    assert _tree(repo / "a") == before_a
    entry = write_model_entry(
        export, TritonOptions(repo, model_name="a", version=2, max_batch_size=4, replace=True)
    )
    assert sorted(p.name for p in (repo / "a").iterdir()) == ["2", CONFIG_FILE]  # replaced whole
    assert (
        _parse((repo / "a" / CONFIG_FILE).read_text()).max_batch_size
        == 4
        == (_parse(entry.config).max_batch_size)
    )
    assert _tree(repo / "b") == before_b
    assert (repo / "notes.txt").read_text() == "not a model"
    assert sorted(p.name for p in repo.iterdir()) == ["a", "b", "notes.txt"]  # no leftovers


def test_a_damaged_export_changes_nothing_in_the_repository(export, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(export, damaged)
    (damaged / "tokenizer.json").write_text("{}")
    repo = tmp_path / "repo"
    write_model_entry(export, TritonOptions(repo, model_name="m"))
    before = _tree(repo)
    for name, replace in ((None, False), (None, True), ("m", True)):
        with pytest.raises(export_dir.ExportIntegrityError, match=r"tokenizer\.json") as info:
            write_model_entry(damaged, TritonOptions(repo, model_name=name, replace=replace))
        assert str(info.value).startswith(f"{damaged} does not match")  # the user's path
    assert _tree(repo) == before
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # the temporary copies are gone


@pytest.mark.parametrize("layout", ["repo is a file", "parent is a file", "not an export"])
def test_unusable_targets_and_sources_are_clear_errors(export, tmp_path, layout):
    source, repo = export, tmp_path / "repo"
    if layout == "repo is a file":
        repo.write_text("")
        fragment = "is a file, not a directory"
    elif layout == "parent is a file":
        (tmp_path / "file").write_text("")
        repo = tmp_path / "file" / "repo"
        fragment = "cannot write to the model repository"
    else:
        source = tmp_path
        fragment = "is not an export directory"
    with pytest.raises(TritonRepoError, match=fragment) as info:
        write_model_entry(source, TritonOptions(repo))
    assert str(repo if layout != "not an export" else source) in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_repository_is_a_clear_error(export, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir(mode=0o555)
    with pytest.raises(TritonRepoError, match="cannot write to the model repository"):
        write_model_entry(export, TritonOptions(repo))


def test_cli_from_export_and_its_misuse(export, tmp_path, capsys):
    repo = tmp_path / "repo"
    args = ["--from-export", str(export), "--triton-repo", str(repo)]
    assert (
        export_main([*args, "--triton-max-batch-size", "4", "--triton-model-root", "/mnt/m"]) == 0
    )
    out = capsys.readouterr().out
    assert f"wrote Triton model '{export.name}' version 1" in out
    config = _parse((repo / export.name / CONFIG_FILE).read_text())
    assert config.max_batch_size == 4
    assert list(config.model_operations.op_library_filename) == [
        f"/mnt/m/{export.name}/1/{LIBRARY}"
    ]
    assert export_main(args) == 2
    assert "--triton-replace" in capsys.readouterr().err
    assert export_main([*args, "--triton-replace", "--triton-model-version", "2"]) == 0
    assert sorted(p.name for p in (repo / export.name).iterdir()) == ["2", CONFIG_FILE]
    for misuse, message in [
        (["--from-export", str(export)], "--from-export needs --triton-repo"),
        ([*args, "--opset", "19"], "--opset is an export option"),
        ([*args, "-o", str(tmp_path / "o")], "-o is an export option"),
        (["model.pt", *args], "not both"),
        (["model.pt", "--triton-replace"], "--triton-replace needs --triton-repo"),
        ([], "give model.pt to export"),
    ]:
        with pytest.raises(SystemExit) as info:
            export_main(misuse)
        assert info.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow  # a whole export (~20 s)
def test_cli_exports_and_writes_the_entry_checking_the_target_first(tmp_path, capsys):
    path, _ = make_model_pt(tmp_path / "model.pt", "llama")
    repo = tmp_path / "repo"
    (repo / "taken").mkdir(parents=True)
    out = tmp_path / "out"
    base = [str(path), "-o", str(out), "--no-verify", "--no-qasm", "--triton-repo", str(repo)]
    assert export_main([*base, "--triton-model-name", "taken"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not out.exists()  # refused before exporting
    assert export_main(base) == 0
    assert "wrote Triton model 'out' version 1" in capsys.readouterr().out
    library = Path(get_library_path()).read_bytes()
    assert _tree(repo / "out" / "1") == {LIBRARY: library, **_tree(out)}
    assert _parse((repo / "out" / CONFIG_FILE).read_text()).name == "out"


def test_a_directory_without_a_manifest_is_not_taken_for_an_export(tmp_path):
    """qwthn-serve would refuse such a repository entry, so it is not written (and a damaged
    model.onnx there is an error, not a protobuf traceback)."""
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / export_dir.MODEL).write_bytes(b"not a protobuf")
    with pytest.raises(TritonRepoError, match=r"manifest\.json missing"):
        write_model_entry(bare, TritonOptions(tmp_path / "repo"))
    assert not (tmp_path / "repo" / "bare").exists()
