"""``model.pt``: one self-describing file holding a QWTHN-adapted model, read by qwthn-export.

The file is a ``torch.save`` of plain data (dicts, lists, strings, numbers, tensors) and is only
ever read with ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is
refused, never executed. Layout (format ``qwthn-onnx/model``, version 1)::

    format, format_version, producer{name, version, torch, transformers}
    base_model{architecture, config_json, dtype, state_dict | None, reference | None}
    adapter{config, state_dict}                  (keys as in adapter_model.safetensors)
    tokenizer{files{name: str | uint8 tensor}} | None
    training{...}                                 (free-form metadata: steps, losses, seed, data)

``reference`` replaces the base weights for big bases: ``{path, files{name: size}}`` of a local
Hugging Face directory, checked again on load.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from qwthn_onnx import __version__
from qwthn_onnx._io import atomic_path, tokenizer_from_files, tokenizer_to_files
from qwthn_onnx.adapter import QWTHNConfig, QWTHNModel

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LoadedModel",
    "ModelFileError",
    "check_output_file",
    "load_model_pt",
    "model_from_payload",
    "read_model_pt",
    "save_model_pt",
]

FORMAT_NAME = "qwthn-onnx/model"
FORMAT_VERSION = 1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class ModelFileError(ValueError):
    """A model.pt that is not ours, is damaged, or does not match what it references."""


@dataclass
class LoadedModel:
    model: QWTHNModel
    tokenizer: Any | None
    training: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, str] = field(default_factory=dict)


def _reference_files(directory: Path) -> dict[str, int]:
    return {
        p.name: p.stat().st_size
        for p in sorted(directory.iterdir())
        if p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json"
    }


def _tokenizer_files(tokenizer: Any) -> dict[str, Any]:
    """Tokenizer files as plain data: text as str, binary as a uint8 tensor (weights_only-safe)."""
    return {
        name: content
        if isinstance(content, str)
        else torch.frombuffer(bytearray(content), dtype=torch.uint8)
        for name, content in tokenizer_to_files(tokenizer).items()
    }


def _plain(value: Any, what: str) -> Any:
    """Round-trip free-form metadata through JSON so the file holds plain data only."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{what} metadata must be JSON-serialisable: {e}") from e


def save_model_pt(
    path: str | Path,
    model: QWTHNModel,
    tokenizer: Any | None = None,
    training: dict[str, Any] | None = None,
    base_reference: str | Path | None = None,
) -> Path:
    """Write ``model.pt`` atomically. With ``base_reference`` (a local HF directory holding the
    same base weights) the base weights are referenced instead of copied."""
    base = model.base_model
    state = model.base_state_dict()
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    reference = None
    if base_reference is not None:
        ref = Path(base_reference).resolve()
        if not (ref / "config.json").is_file():
            raise ModelFileError(f"base_reference {ref} is not a Hugging Face model directory")
        reference = {"path": str(ref), "files": _reference_files(ref)}
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "producer": {
            "name": "qwthn-onnx",
            "version": __version__,
            "torch": str(torch.__version__),  # TorchVersion is not plain data
            "transformers": str(transformers.__version__),
        },
        "base_model": {
            "architecture": type(base).__name__,
            "config_json": base.config.to_json_string(use_diff=False),
            "dtype": str(dtypes.pop() if len(dtypes) == 1 else torch.float32).removeprefix(
                "torch."
            ),
            "state_dict": None if reference else {k: v.detach().cpu() for k, v in state.items()},
            "reference": reference,
        },
        "adapter": {
            "config": model.qwthn_config.to_dict(),
            "state_dict": {k: v.cpu() for k, v in model.adapter_state_dict().items()},
        },
        "tokenizer": {"files": _tokenizer_files(tokenizer)} if tokenizer is not None else None,
        "training": _plain(training or {}, "training"),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def check_output_file(path: str | Path) -> None:
    """Fail before any work if ``path`` cannot be written (a directory, or no permission)."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"output {path} is a directory; give a file path like model.pt")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise ModelFileError(f"output {path} is not writable: {e.strerror}") from e


def _require(mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ModelFileError(f"{where}: missing '{key}'; the file is not a complete model.pt")
    value = mapping[key]
    if not isinstance(value, kind):
        raise ModelFileError(f"{where}: '{key}' has type {type(value).__name__}")
    return value


def read_model_pt(path: str | Path) -> dict[str, Any]:
    """Load and validate the raw payload (no model is built). Raises ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelFileError(
            f"{path}: refused, the file needs arbitrary unpickling to load (it may run code); "
            f"model.pt files are written by qwthn-train / save_model_pt and hold plain data only"
        ) from e
    except Exception as e:  # torch raises many types on damaged input (KeyError, EOFError, ...)
        raise ModelFileError(f"{path}: not a readable model.pt (truncated or damaged?): {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path}: not a qwthn-onnx model file (expected format '{FORMAT_NAME}'); "
            f"create one with qwthn-train or qwthn_onnx.save_model_pt"
        )
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format_version {version!r} is not supported (this qwthn-onnx "
            f"{__version__} reads version {FORMAT_VERSION}); upgrade qwthn-onnx"
        )
    base = _require(payload, "base_model", dict, str(path))
    _require(base, "architecture", str, "base_model")
    _require(base, "config_json", str, "base_model")
    dtype = _require(base, "dtype", str, "base_model")
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ModelFileError(f"{path}: base_model.dtype {dtype!r} is not a torch dtype")
    if base.get("state_dict") is None and base.get("reference") is None:
        raise ModelFileError(f"{path}: base_model has neither weights nor a reference")
    adapter = _require(payload, "adapter", dict, str(path))
    _require(adapter, "config", dict, "adapter")
    _require(adapter, "state_dict", dict, "adapter")
    return payload


def _build_base(base: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(torch, base["dtype"])  # read_model_pt checked that it names a torch dtype
    try:
        config_dict = json.loads(base["config_json"])
        config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    except (json.JSONDecodeError, KeyError, ValueError) as e:
        raise ModelFileError(
            f"base_model.config_json is not a usable transformers config: {e}"
        ) from e
    reference = base.get("reference")
    if reference is not None:
        ref = Path(reference["path"])
        if not ref.is_dir():
            raise ModelFileError(f"the base model directory {ref} referenced by model.pt is gone")
        if _reference_files(ref) != reference["files"]:
            raise ModelFileError(
                f"the base model files in {ref} changed since model.pt was written "
                f"(expected {reference['files']}); restore them or re-train"
            )
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        try:
            model.load_state_dict(base["state_dict"], strict=True)
        except RuntimeError as e:
            raise ModelFileError(f"base weights do not fit the stored config: {e}") from e
    if type(model).__name__ != base["architecture"]:
        raise ModelFileError(
            f"config builds {type(model).__name__}, model.pt says {base['architecture']}"
        )
    return model


def _build_tokenizer(files: dict[str, Any]) -> Any:
    try:
        return tokenizer_from_files(
            {k: v if isinstance(v, str) else v.numpy().tobytes() for k, v in files.items()}
        )
    except ValueError as e:
        raise ModelFileError(str(e)) from e


def load_model_pt(path: str | Path) -> LoadedModel:
    """Rebuild the adapted model (and tokenizer) from ``model.pt``."""
    return model_from_payload(read_model_pt(path))


def model_from_payload(payload: dict[str, Any]) -> LoadedModel:
    """Rebuild the model from a payload :func:`read_model_pt` returned (read the file once)."""
    base = _build_base(payload["base_model"])
    model = QWTHNModel(base, QWTHNConfig.from_dict(payload["adapter"]["config"]))
    model.load_adapter_state_dict(payload["adapter"]["state_dict"])
    tok = payload.get("tokenizer")
    return LoadedModel(
        model=model,
        tokenizer=_build_tokenizer(tok["files"]) if tok else None,
        training=payload.get("training") or {},
        producer=payload.get("producer") or {},
    )
