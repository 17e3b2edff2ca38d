"""Which models a server holds: one export directory, or a Triton-like model repository.

Two layouts are accepted::

    PATH/model.onnx, PATH/manifest.json, ...     one model named after PATH, version 1
    PATH/<model>/<version>/model.onnx, ...       each version directory an export directory

Versions are integers and the highest is a model's default, as in Triton. A model directory
may hold Triton's ``config.pbtxt`` (``qwthn-export --triton-repo`` writes one): its ``name``
must be the directory's, as Triton requires, and its platform or backend onnxruntime; its
``max_batch_size`` is read (the server batches by its own ``--max-batch-size``) and the rest is
Triton's business. Layout problems are found before any model is loaded and reported with the
path and what was expected there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwthn_onnx.runtime import export_dir
from serving import pbtxt
from serving.errors import NotFoundError

if TYPE_CHECKING:
    from serving.model import ServedModel

__all__ = [
    "CONFIG_FILE",
    "EXPORT_FILES",
    "ModelRepository",
    "ModelSource",
    "RepositoryError",
    "TritonConfig",
    "discover",
    "read_config",
]

log = logging.getLogger(__name__)

EXPORT_FILES = export_dir.REQUIRED  # what makes a qwthn-export output
CONFIG_FILE = export_dir.TRITON_CONFIG  # Triton's model configuration, beside the versions
_PLATFORM, _BACKEND = "onnxruntime_onnx", "onnxruntime"
_LAYOUTS = (
    "an export directory (model.onnx + manifest.json, from qwthn-export) or a model repository "
    "<repo>/<model>/<version>/ whose version directories are export directories"
)


class RepositoryError(ValueError):
    """The path given to the server is not a usable export directory or model repository."""


@dataclass(frozen=True)
class TritonConfig:
    """What the server reads of a model's ``config.pbtxt`` (None: not given there)."""

    name: str | None
    max_batch_size: int | None


@dataclass(frozen=True)
class ModelSource:
    """Where one version of one model lives, and its model's ``config.pbtxt`` if it has one."""

    name: str
    version: int
    directory: Path
    config: TritonConfig | None = None


def _single(path: Path, fields: pbtxt.Message, field: str, kind: type) -> Any:
    """The one value of a singular field, or None; RepositoryError when repeated or mistyped."""
    values = fields.get(field, [])
    if len(values) > 1:
        raise RepositoryError(f"{path}: '{field}' is given {len(values)} times; give it once")
    if values and (not isinstance(values[0], kind) or isinstance(values[0], pbtxt.Identifier)):
        what = "a quoted string" if kind is str else "an integer"
        raise RepositoryError(f"{path}: '{field}' must be {what}, not {values[0]!r}")
    return values[0] if values else None


def read_config(model_dir: Path) -> TritonConfig | None:
    """The fields of ``model_dir/config.pbtxt`` the server uses, None without that file.

    Raises RepositoryError when it cannot be read, is not protobuf text format, names another
    model, or asks for a platform other than onnxruntime (qwthn-serve runs nothing else).
    """
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        fields = pbtxt.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise RepositoryError(f"{path}: cannot be read ({e})") from e
    except pbtxt.PbtxtError as e:
        raise RepositoryError(f"{path} is not protobuf text format: {e}") from e
    name = _single(path, fields, "name", str)
    if name is not None and name != model_dir.name:
        raise RepositoryError(
            f"{path} names the model {name!r} but its directory is {model_dir.name!r}; Triton "
            "requires them to match: rename the directory or fix 'name'"
        )
    for field, expected in (("platform", _PLATFORM), ("backend", _BACKEND)):
        value = _single(path, fields, field, str)
        if value is not None and value != expected:
            raise RepositoryError(
                f"{path} asks for {field} {value!r}; qwthn-serve runs qwthn-export outputs in "
                f"onnxruntime only ({field} {expected!r}, or leave it out)"
            )
    batch = _single(path, fields, "max_batch_size", int)
    if isinstance(batch, int) and batch < 0:
        raise RepositoryError(f"{path}: max_batch_size {batch} is negative; give 0 or more")
    return TritonConfig(name, batch)


def _check_export(path: Path) -> None:
    missing = export_dir.missing_files(path)
    if missing:
        raise RepositoryError(
            f"{path} is not an export directory: {' and '.join(missing)} missing (expected the "
            f"output of qwthn-export: {', '.join(EXPORT_FILES)}, tokenizer files, ...)"
        )


def _subdirectories(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def discover(path: str | Path) -> list[ModelSource]:
    """The model versions under ``path``, without loading them.

    Raises RepositoryError naming the path and what was expected there.
    """
    path = Path(path)
    if not path.exists():
        raise RepositoryError(f"{path}: no such directory; give {_LAYOUTS}")
    if not path.is_dir():
        raise RepositoryError(f"{path} is not a directory; give {_LAYOUTS}")
    if export_dir.is_export_directory(path):
        _check_export(path)
        return [ModelSource(path.resolve().name, 1, path)]
    sources = []
    for model_dir in _subdirectories(path):
        if export_dir.is_export_directory(model_dir):
            raise RepositoryError(
                f"{model_dir} is an export directory directly under the repository; put it in "
                f"a version directory: {model_dir}/1/"
            )
        config = read_config(model_dir)
        versions = _subdirectories(model_dir)
        if not versions:
            raise RepositoryError(
                f"{model_dir}: no version directories; expected {model_dir}/<version>/ with an "
                f"integer version holding an export directory"
            )
        for version_dir in versions:
            if not version_dir.name.isdigit():
                raise RepositoryError(
                    f"{version_dir}: version directories must be named by a non-negative integer"
                )
            _check_export(version_dir)
            sources.append(ModelSource(model_dir.name, int(version_dir.name), version_dir, config))
    if not sources:
        raise RepositoryError(f"no models found in {path}; expected {_LAYOUTS}")
    seen: dict[tuple[str, int], Path] = {}
    for source in sources:
        other = seen.setdefault((source.name, source.version), source.directory)
        if other != source.directory:
            raise RepositoryError(
                f"{other} and {source.directory} are the same version {source.version}"
            )
    return sources


class ModelRepository:
    """Loaded model versions by name and version."""

    def __init__(self, models: list[ServedModel]) -> None:
        self._models: dict[str, dict[int, ServedModel]] = {}
        for model in models:
            self._models.setdefault(model.name, {})[model.version] = model

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> ModelRepository:
        """Discover and load every model version under ``path`` (``threads``: onnxruntime
        intra-op threads per session, None for its default)."""
        return cls([load_model(source, threads) for source in discover(path)])

    def __iter__(self) -> Iterator[ServedModel]:
        for versions in self._models.values():
            yield from versions.values()

    def __len__(self) -> int:
        return sum(len(v) for v in self._models.values())

    def versions(self, name: str) -> list[int]:
        """The versions of model ``name``, ascending; NotFoundError for an unknown model."""
        if name not in self._models:
            known = ", ".join(sorted(self._models)) or "none"
            raise NotFoundError(f"unknown model '{name}' (models: {known})")
        return sorted(self._models[name])

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """Version ``version`` of model ``name``, or its highest when None.

        Raises NotFoundError naming the available models or versions.
        """
        versions = self.versions(name)
        if version is None:
            return self._models[name][versions[-1]]
        if not version.isdigit() or int(version) not in self._models[name]:
            known = ", ".join(map(str, versions))
            raise NotFoundError(f"model '{name}' has no version '{version}' (versions: {known})")
        return self._models[name][int(version)]


def load_model(source: ModelSource, threads: int | None = None) -> ServedModel:
    """An onnxruntime session for one version; RepositoryError when it cannot be loaded."""
    # Imported here: onnxruntime and the runtime's dependencies take seconds to import, and
    # discover() answers a bad path before that.
    from qwthn_onnx.runtime.session import QWTHNSession
    from serving.model import ServedModel

    log.info("loading model '%s' version %d from %s", source.name, source.version, source.directory)
    try:
        session = QWTHNSession(source.directory, threads=threads)
    except (OSError, RuntimeError, ValueError) as e:  # MetadataError is a ValueError
        raise RepositoryError(f"{source.directory}: cannot load the model: {e}") from e
    return ServedModel(source.name, source.version, source.directory, session)
