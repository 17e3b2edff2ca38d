"""The export directory's format: its file names, ``manifest.json`` and ``qasm/index.json``.

``qwthn-export`` writes it; the runtime, the server, ``qwthn-verify`` and the Triton repository
writer read it. Every one of them goes through this module, so the layout is defined once::

    model.onnx               the graph (ai.qwthn nodes, fallback functions, KV-cache I/O, metadata)
    model.onnx.data          its weights, when they are stored as external data
    config.json              the base model's transformers config
    generation_config.json   eos/bos/pad and default decoding, for transformers-style loaders
    genai_config.json        onnxruntime-genai's model description
    libqwthn_ops.so          a copy of the ai.qwthn op library (genai and Triton load it from here)
    tokenizer files          tokenizer.json, tokenizer_config.json, special_tokens_map.json
    qasm/<layer>.qasm        one OpenQASM 3 program per adapted layer, and qasm/index.json
    verify.json              onnxruntime (kernels, fallback) vs PyTorch errors per output
    manifest.json            what was exported, from what, with which versions and options, and
                             the size and SHA-256 of every other file
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qwthn_onnx._io import file_sha256

__all__ = [
    "CHAT_TEMPLATE",
    "CONFIG",
    "GENAI_CONFIG",
    "GENERATION_CONFIG",
    "MANIFEST",
    "MODEL",
    "MODEL_DATA",
    "QASM_DIR",
    "QASM_INDEX",
    "REQUIRED",
    "TOKENIZER",
    "TOKENIZER_CONFIG",
    "TRITON_CONFIG",
    "VERIFY",
    "ExportIntegrityError",
    "build_manifest",
    "check_integrity",
    "is_export_directory",
    "library_file_name",
    "missing_files",
    "model_path",
    "qasm_index",
    "read_manifest",
    "read_qasm_programs",
]

MODEL = "model.onnx"
MODEL_DATA = MODEL + ".data"
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
GENAI_CONFIG = "genai_config.json"
MANIFEST = "manifest.json"
VERIFY = "verify.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE = "chat_template.jinja"
QASM_DIR = "qasm"
QASM_INDEX = QASM_DIR + "/index.json"
# A Triton / KServe repository entry: <repo>/<name>/config.pbtxt beside <name>/<version>/, an
# export directory (qwthn-export --triton-repo writes it, qwthn-serve reads it).
TRITON_CONFIG = "config.pbtxt"
MANIFEST_FORMAT = "qwthn-onnx/export"
QASM_FORMAT = "qwthn-onnx/qasm"
FORMAT_VERSION = 1


def library_file_name() -> str:
    """The op library's file name on this platform (the same inside and outside exports)."""
    if sys.platform == "win32":
        return "qwthn_ops.dll"
    if sys.platform == "darwin":
        return "libqwthn_ops.dylib"
    return "libqwthn_ops.so"


class ExportIntegrityError(ValueError):
    """An export directory whose files no longer match its ``manifest.json``."""


# What makes a directory a qwthn-export output (both, as files).
REQUIRED = (MODEL, MANIFEST)


def is_export_directory(path: str | Path) -> bool:
    """Whether ``path`` looks like a qwthn-export output (its model or its manifest is there;
    :func:`missing_files` then says whether it is a complete one)."""
    path = Path(path)
    return (path / MODEL).exists() or (path / MANIFEST).exists()


def missing_files(path: str | Path) -> list[str]:
    """Which of :data:`REQUIRED` are not files in ``path``."""
    return [name for name in REQUIRED if not (Path(path) / name).is_file()]


def model_path(path: str | Path, check: bool | None = True) -> Path:
    """``model.onnx`` itself, or the one inside an export directory, whose files are first
    checked against its manifest (:func:`check_integrity`; ``check=None``: all but the weight
    data, which the caller checks while onnxruntime loads) unless ``check`` is False."""
    path = Path(path)
    if path.is_dir():
        if check is not False:
            check_integrity(path, weights=None if check else False)
        path = path / MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give model.onnx or a qwthn-export output")
    return path


def build_manifest(directory: Path, **sections: Any) -> dict[str, Any]:
    """The manifest of ``directory``: ``sections`` (source, model, options, versions,
    verification) plus the size and SHA-256 of every file in it but the manifest."""
    files = {
        path.relative_to(directory).as_posix(): {
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
        }
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.relative_to(directory).as_posix() != MANIFEST
    }
    return {"format": MANIFEST_FORMAT, "format_version": FORMAT_VERSION, **sections, "files": files}


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest of an export directory, or None when it has none (a bare model.onnx)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_bytes())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError("no 'files' mapping")
        return manifest
    except ValueError as e:
        raise ExportIntegrityError(
            f"{path} is damaged ({type(e).__name__}: {e}); export the model again with "
            "qwthn-export, or load its model.onnx directly to skip the check"
        ) from e


def check_integrity(directory: str | Path, weights: bool | None = None) -> None:
    """Compare every file ``manifest.json`` lists with its recorded size and sha256.

    A bit flip that still parses as ONNX would otherwise load and answer wrongly without a
    word; a directory without a manifest (a bare ``model.onnx``) has nothing to check.
    ``weights``: None checks every file; False all but the external weight data (raw bytes
    at offsets the checked ``model.onnx`` gives, which no parser reads); True only that data.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        return
    try:
        entries = [
            (str(name), int(e["bytes"]), str(e["sha256"]))
            for name, e in manifest["files"].items()
            if weights is None or (name == MODEL_DATA) == weights
        ]
    except (ValueError, KeyError, TypeError) as e:
        raise ExportIntegrityError(
            f"{directory / MANIFEST} is damaged ({type(e).__name__}: {e}); export the model "
            "again with qwthn-export, or load its model.onnx directly to skip the check"
        ) from e
    problems = []
    for name, size, sha256 in entries:
        path = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"{name}: not a path inside the export")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != size:
            problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {size}")
        elif file_sha256(path) != sha256:
            problems.append(f"{name}: contents differ (sha256)")
    if problems:
        raise ExportIntegrityError(
            f"{directory} does not match its {MANIFEST} ({'; '.join(problems[:5])}"
            f"{'; ...' if len(problems) > 5 else ''}): the export was damaged or changed after "
            "qwthn-export wrote it. Export it again, or load its model.onnx directly to skip "
            "this check."
        )


def qasm_index(layers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``qasm/index.json``'s content for per-layer entries (``file``, ``n_qubits``, ``inputs``,
    ``observables``, optionally ``weights``)."""
    return {
        "format": QASM_FORMAT,
        "format_version": FORMAT_VERSION,
        "reading": "<Z_i> = P(c[i] = 0) - P(c[i] = 1)",
        "layers": {name: dict(entry) for name, entry in layers.items()},
    }


def read_qasm_programs(directory: str | Path) -> dict[str, Any] | None:
    """``qasm/index.json`` with each layer's ``program`` text added, or None when the export
    has no OpenQASM programs. Raises ValueError (naming the file) when they cannot be read."""
    directory = Path(directory)
    index_path = directory / QASM_INDEX
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
        layers = {}
        for layer, entry in index["layers"].items():
            name = Path(entry["file"])
            if name.name != entry["file"]:
                raise ValueError(f"layer {layer}: file {entry['file']!r} is not a plain name")
            program = (directory / QASM_DIR / name).read_text()
            layers[layer] = {**entry, "program": program}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index_path}: cannot read the OpenQASM programs ({e!r})") from e
    return {**index, "layers": layers}
