"""An export directory as a Triton (or KServe) model repository entry.

``write_model_entry(export, TritonOptions(repository=REPO))`` writes::

    REPO/<model>/config.pbtxt        platform onnxruntime_onnx, tensors from the ONNX graph,
                                     dynamic batching, model_operations (the op library)
    REPO/<model>/<version>/          a copy of the export directory (model.onnx, model.onnx.data,
                                     tokenizer, manifest, ...) and of the ai.qwthn op library

Triton hands ``op_library_filename`` unchanged to onnxruntime's ``RegisterCustomOpsLibrary``
(dlopen), so it is an absolute path inside the server's container: ``--model-repository``'s
mount point (``/models`` by convention; KServe mounts a storage URI at ``/mnt/models``) plus
``<model>/<version>/<library>``. The entry is written beside its final place and renamed into
it in one step; an existing model is replaced only when asked, other models are never touched.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import onnx
from google.protobuf.message import DecodeError

from qwthn_onnx._io import atomic_directory
from qwthn_onnx.runtime import export_dir
from qwthn_onnx.runtime.library import LibraryNotFoundError, get_library_path

__all__ = [
    "CONFIG_FILE",
    "KSERVE_MODEL_ROOT",
    "TRITON_MODEL_ROOT",
    "TritonEntry",
    "TritonOptions",
    "TritonRepoError",
    "check_model_name",
    "check_target",
    "config_pbtxt",
    "write_model_entry",
]

CONFIG_FILE = export_dir.TRITON_CONFIG
TRITON_MODEL_ROOT = "/models"  # the mount point of Triton's documented `docker run` examples
KSERVE_MODEL_ROOT = "/mnt/models"  # where KServe's storage initializer puts storageUri

# ONNX element types Triton's onnxruntime backend maps (its ModelConfigDataTypeToOnnxDataType).
_TRITON_TYPES = {
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.STRING: "TYPE_STRING",
}


class TritonRepoError(ValueError):
    """The repository entry cannot be written as asked (name, version, target, graph)."""


@dataclass(frozen=True)
class TritonOptions:
    """Where and how to write the entry (the ``--triton-*`` options of ``qwthn-export``)."""

    repository: Path
    model_name: str | None = None  # None: the export directory's name
    version: int = 1
    max_batch_size: int = 8  # 0: no batch dimension, no dynamic batching
    max_queue_delay_us: int = 0
    instances: int = 1
    model_root: str = TRITON_MODEL_ROOT  # the repository's path inside the server's container
    replace: bool = False

    def validate(self) -> None:
        """Raise TritonRepoError naming the first bad option and its fix."""
        if self.model_name is not None:
            check_model_name(self.model_name)
        if self.version < 1:
            raise TritonRepoError(
                f"model version {self.version}: Triton ignores version directories named 0 or "
                "starting with 0; give --triton-model-version 1 or more"
            )
        if self.max_batch_size < 0:
            raise TritonRepoError(
                f"max_batch_size {self.max_batch_size}: give 0 (no batching) or more"
            )
        if self.max_queue_delay_us < 0:
            raise TritonRepoError(f"max queue delay {self.max_queue_delay_us} us: give 0 or more")
        if self.instances < 1:
            raise TritonRepoError(f"{self.instances} instances: give 1 or more")
        root = PurePosixPath(self.model_root)
        if not root.is_absolute() or ".." in root.parts:
            raise TritonRepoError(
                f"model root {self.model_root!r} is not an absolute path without '..': "
                "onnxruntime dlopens op_library_filename as given, so give the repository's "
                f"mount point inside the server's container ({TRITON_MODEL_ROOT} for Triton, "
                f"{KSERVE_MODEL_ROOT} for KServe)"
            )


@dataclass(frozen=True)
class TritonEntry:
    """What ``write_model_entry`` wrote."""

    name: str
    version: int
    model_dir: Path  # REPO/<model>
    version_dir: Path  # REPO/<model>/<version>
    config: str  # the text of config.pbtxt
    op_library_filename: str  # the library's path in the container, as config.pbtxt gives it


def check_model_name(name: str) -> None:
    """Raise TritonRepoError for a model name that Triton refuses or that cannot be a directory.

    Triton (core ``ValidateModelName``) refuses empty and whitespace-only names and any name
    holding ``..`` or ``/``; a name starting with ``.`` would be a hidden directory, which
    qwthn-serve skips and this writer uses for its temporary copies.
    """
    problem = None
    if not name or not name.strip():
        problem = "it is empty or only whitespace"
    elif "/" in name or "\\" in name or ".." in name:
        problem = "Triton refuses names holding '/' or '..' (and '\\' would not be portable)"
    elif name.startswith("."):
        problem = "a leading '.' makes a hidden directory (qwthn-serve skips those)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "it holds control characters"
    elif len(name.encode()) > 255:
        problem = "it is longer than a directory name may be (255 bytes)"
    if problem:
        raise TritonRepoError(
            f"model name {name!r} cannot be used: {problem}; choose another with "
            "--triton-model-name (letters, digits, '-', '_' and single '.' are safe)"
        )


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\{ord(m.group()):03o}", escaped) + '"'


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """The declared shape: fixed sizes as ints, symbolic or unknown ones as None."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _tensors(
    model: onnx.ModelProto, max_batch_size: int
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The config's ``input`` and ``output`` entries, from the graph's declarations.

    With ``max_batch_size`` > 0 Triton requires every tensor's first dimension to be a variable
    batch dimension and leaves it out of ``dims``; variable dimensions are -1; a tensor with no
    dimension left is written as Triton documents it: ``dims: [ 1 ]``, ``reshape: []``.
    """
    graph = model.graph
    defaults = {init.name for init in graph.initializer}
    # An input with an initializer of its name has a default, so onnxruntime runs without it;
    # every other one is required. Triton's onnxruntime backend refuses optional inputs on
    # models that batch: there such inputs are left out (the backend counts only required ones).
    inputs = [v for v in graph.input if max_batch_size == 0 or v.name not in defaults]
    entries: dict[str, list[dict[str, object]]] = {"input": [], "output": []}
    for kind, values in (("input", inputs), ("output", list(graph.output))):
        for value in values:
            if not value.type.HasField("tensor_type"):
                raise TritonRepoError(f"{kind} {value.name!r} is not a tensor; Triton needs one")
            elem = value.type.tensor_type.elem_type
            if elem not in _TRITON_TYPES:
                raise TritonRepoError(
                    f"{kind} {value.name!r} has ONNX type "
                    f"{onnx.TensorProto.DataType.Name(elem)}, which Triton's onnxruntime "
                    "backend does not map; export with another --dtype"
                )
            dims = _dims(value)
            if max_batch_size > 0:
                if not dims or dims[0] is not None:
                    raise TritonRepoError(
                        f"{kind} {value.name!r} has shape {dims or '[]'}, without a variable "
                        "first (batch) dimension, which max_batch_size > 0 requires; pass "
                        "--triton-max-batch-size 0"
                    )
                dims = dims[1:]
            entry: dict[str, object] = {
                "name": value.name,
                "data_type": _TRITON_TYPES[elem],
                "dims": [-1 if d is None else d for d in dims] or [1],
            }
            if not dims:
                entry["reshape"] = []
            if kind == "input" and value.name in defaults:
                entry["optional"] = True
            entries[kind].append(entry)
    return entries["input"], entries["output"]


def _block(key: str, entries: list[dict[str, object]]) -> list[str]:
    lines = [f"{key} ["]
    for i, entry in enumerate(entries):
        lines.append("  {")
        for field, value in entry.items():
            if field == "name":
                lines.append(f"    name: {_quote(str(value))}")
            elif field == "dims":
                lines.append(f"    dims: [ {', '.join(map(str, value))} ]")  # type: ignore[call-overload]
            elif field == "reshape":
                lines.append("    reshape { shape: [ ] }")
            elif isinstance(value, bool):
                lines.append(f"    {field}: {str(value).lower()}")
            else:
                lines.append(f"    {field}: {value}")
        lines.append("  }," if i < len(entries) - 1 else "  }")
    lines.append("]")
    return lines


def config_pbtxt(
    model: onnx.ModelProto, name: str, options: TritonOptions, source: str = ""
) -> tuple[str, str]:
    """``config.pbtxt``'s text for ``model`` served as ``name``, and the op library's path in
    the container that it names. ``source`` goes into the header comment."""
    inputs, outputs = _tensors(model, options.max_batch_size)
    root = PurePosixPath(options.model_root)
    library = str(root / name / str(options.version) / export_dir.library_file_name())
    lines = [
        f"# Written by qwthn-export{f' from {_quote(source)}' if source else ''}.",
        f"# Triton's onnxruntime backend runs {options.version}/{export_dir.MODEL} with the "
        "ai.qwthn kernels of the op library beside it;",
        "# requests batch together only when their shapes match beyond the batch dimension",
        "# (see qwthn-onnx's docs/triton-kserve.md).",
        f"name: {_quote(name)}",
        'platform: "onnxruntime_onnx"',
        'backend: "onnxruntime"',
        f"max_batch_size: {options.max_batch_size}",
        f"default_model_filename: {_quote(export_dir.MODEL)}",
        *_block("input", inputs),
        *_block("output", outputs),
    ]
    if options.max_batch_size > 0:
        lines += [
            "dynamic_batching {",
            f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
            "}",
        ]
    lines += [
        "instance_group [",
        "  {",
        f"    count: {options.instances}",
        "    kind: KIND_CPU",
        "  }",
        "]",
        "model_operations {",
        f"  op_library_filename: {_quote(library)}",
        "}",
    ]
    return "\n".join(lines) + "\n", library


def check_target(options: TritonOptions, name: str) -> None:
    """Fail before any work (an export takes minutes) when model ``name`` cannot be written
    into ``options.repository`` as asked: bad options or name, the repository not a writable
    directory, or the model already there without ``replace``."""
    options.validate()
    check_model_name(name)
    repository, replace = Path(options.repository), options.replace
    if repository.exists() and not repository.is_dir():
        raise TritonRepoError(
            f"{repository} is a file, not a directory; give a model repository directory "
            "(created if missing) to --triton-repo"
        )
    target = repository / name
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise TritonRepoError(
                f"{target} exists and is not a model directory; remove it or choose another "
                "--triton-model-name"
            )
        if not replace:
            versions = sorted(p.name for p in target.iterdir() if p.is_dir()) or ["none"]
            raise TritonRepoError(
                f"model {name!r} already exists in {repository} (version directories: "
                f"{', '.join(versions)}); pass --triton-replace to replace it with all its "
                "versions, or choose another --triton-model-name"
            )
    try:
        repository.mkdir(parents=True, exist_ok=True)
        # O_TMPFILE where supported: nothing appears in the directory Triton may be polling.
        with tempfile.TemporaryFile(dir=repository):
            pass
    except OSError as e:
        raise TritonRepoError(
            f"cannot write to the model repository {repository} ({e.strerror or e}); give "
            "--triton-repo a directory you can write to"
        ) from e


def write_model_entry(export: str | Path, options: TritonOptions) -> TritonEntry:
    """Copy the export directory ``export`` into ``options.repository`` as one model version
    with its ``config.pbtxt`` and the op library.

    The export is checked against its manifest before it is copied. Raises
    TritonRepoError (or ExportIntegrityError, LibraryNotFoundError) naming the problem.
    """
    options.validate()
    export = Path(export)
    missing = export_dir.missing_files(export)
    if missing:
        raise TritonRepoError(
            f"{export} is not an export directory ({' and '.join(missing)} missing); give a "
            "qwthn-export output"
        )
    name = options.model_name or export.resolve().name
    check_target(options, name)
    export_dir.check_integrity(export)  # before copying what may be gigabytes
    try:
        model = onnx.load(export / export_dir.MODEL, load_external_data=False)
    except DecodeError as e:  # a model.onnx the manifest does not list (checked above)
        raise TritonRepoError(f"{export / export_dir.MODEL} is not an ONNX model ({e})") from e
    config, library = config_pbtxt(model, name, options, source=export.resolve().name)
    library_name = export_dir.library_file_name()
    model_dir = Path(options.repository) / name
    try:
        with atomic_directory(model_dir) as staged:
            version_dir = staged / str(options.version)
            shutil.copytree(export, version_dir)
            if not (version_dir / library_name).is_file():  # an export without its own copy
                shutil.copyfile(get_library_path(), version_dir / library_name)
            (staged / CONFIG_FILE).write_text(config)
    except LibraryNotFoundError:
        raise
    except OSError as e:
        raise TritonRepoError(
            f"cannot write {model_dir} ({e}); nothing in the repository was changed"
        ) from e
    return TritonEntry(
        name, options.version, model_dir, model_dir / str(options.version), config, library
    )
