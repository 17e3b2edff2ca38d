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
