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
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from qwthn_onnx import __version__
from qwthn_onnx._io import (
    atomic_path,
    tokenizer_from_files,
    tokenizer_to_files,
    transformers_progress_bars_off,
)
from qwthn_onnx.adapter import AdapterError, ConfigError, QWTHNConfig, QWTHNModel
from qwthn_onnx.circuit import CircuitError
from qwthn_onnx.mpo import MPOError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LoadedModel",
    "ModelFileError",
    "base_config",
    "build_tokenizer",
    "check_output_file",
    "check_weights_fit",
    "load_model_pt",
    "model_from_payload",
    "model_from_state_dict",
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


def _check_archive(path: Path) -> None:
    """Check every member of the zip archive torch.save writes against its CRC-32: torch.load
    does not, so a flipped bit in a weight would load as another model without a word."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except Exception as e:  # zipfile raises BadZipFile, NotImplementedError, RuntimeError, ...
        raise ModelFileError(f"{path}: not a readable model.pt (truncated or damaged?): {e}") from e
    if damaged is not None:
        raise ModelFileError(
            f"{path}: {damaged} inside fails its CRC-32 check: the file is damaged (truncated or "
            "changed after it was written); write it again with qwthn-train or save_model_pt"
        )


def read_model_pt(path: str | Path) -> dict[str, Any]:
    """Load and validate the raw payload (no model is built). Raises ModelFileError.

    ``model_from_payload`` adopts the payload's tensors, so the weights exist once in memory.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    _check_archive(path)
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
    _check_plain_parts(payload, str(path))
    return payload


def _check_tensors(state: Any, where: str) -> None:
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelFileError(f"{where} must map names to tensors; the file is damaged")


def _check_plain_parts(payload: dict[str, Any], path: str) -> None:
    """The parts a model is built from have the types save_model_pt writes, so that building
    fails with a ModelFileError naming the part rather than deep inside torch or transformers."""
    base = payload["base_model"]
    if base.get("state_dict") is not None:
        _check_tensors(base["state_dict"], f"{path}: base_model.state_dict")
    reference = base.get("reference")
    if reference is not None and not (
        isinstance(reference, dict)
        and isinstance(reference.get("path"), str)
        and isinstance(reference.get("files"), dict)
    ):
        raise ModelFileError(f"{path}: base_model.reference must be {{path: str, files: dict}}")
    _check_tensors(payload["adapter"]["state_dict"], f"{path}: adapter.state_dict")
    tokenizer = payload.get("tokenizer")
    if tokenizer is not None:
        files = tokenizer.get("files") if isinstance(tokenizer, dict) else None
        if not isinstance(files, dict) or not all(
            isinstance(k, str)
            and (isinstance(v, str) or (isinstance(v, torch.Tensor) and v.dtype == torch.uint8))
            for k, v in files.items()
        ):
            raise ModelFileError(
                f"{path}: tokenizer.files must map file names to text or uint8 tensors"
            )
    for key in ("training", "producer"):
        if not isinstance(payload.get(key) or {}, dict):
            raise ModelFileError(f"{path}: '{key}' must be a dict of metadata")


def _build_base(base: dict[str, Any]) -> nn.Module:
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, base["dtype"])  # read_model_pt checked that it names a torch dtype
    config = base_config(base["config_json"], "model.pt")
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
        state = base["state_dict"]
        check_weights_fit(config, {k: v.shape for k, v in state.items()}, dtype, "model.pt")
        model = model_from_state_dict(config, state, dtype)
    if type(model).__name__ != base["architecture"]:
        raise ModelFileError(
            f"config builds {type(model).__name__}, model.pt says {base['architecture']}"
        )
    return model


def model_from_state_dict(config: Any, state: dict[str, torch.Tensor], dtype: torch.dtype):
    """The model of ``config`` holding the tensors of ``state`` themselves (no random init, no
    copy: transformers builds on the meta device and assigns them), every key accounted for."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    try:
        with transformers_progress_bars_off():
            model, info = model_class.from_pretrained(
                None, config=config, state_dict=state, dtype=dtype, output_loading_info=True
            )
    except RuntimeError as e:  # a shape mismatch check_weights_fit did not catch
        raise ModelFileError(f"base weights do not fit the stored config: {e}") from e
    missing = sorted(set(info["missing_keys"]) - set(model.all_tied_weights_keys))
    wrong = sorted({*info["unexpected_keys"], *info["mismatched_keys"]})
    if missing or wrong:
        raise ModelFileError(
            f"base weights do not fit the stored config: missing {missing[:5]}, unexpected or "
            f"mismatched {wrong[:5]}; the file is damaged"
        )
    return model


def base_config(config_json: str, where: str) -> Any:
    """The transformers config stored as JSON in a model file; ModelFileError when unusable.
    transformers validates a config's values with whatever fails first (ValueError, TypeError,
    ZeroDivisionError, AttributeError for an unknown dtype name, ...), so every error of the
    construction is a refusal here."""
    from transformers import AutoConfig

    try:
        config_dict = json.loads(config_json)
        if not isinstance(config_dict, dict):
            raise ValueError("it is not a JSON object")
        return AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    except Exception as e:
        raise ModelFileError(f"{where}: the base model config is not usable: {e!r}") from e


def check_weights_fit(
    config: Any, shapes: Mapping[str, Sequence[int]], dtype: torch.dtype, where: str
) -> None:
    """Refuse stored weights (name -> shape) that do not fit ``config`` before the model is
    allocated: a damaged or hostile config could otherwise ask for any memory and time."""
    from transformers import AutoModelForCausalLM

    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and not 0 <= layers <= len(shapes):
        raise ModelFileError(
            f"{where}: the base model config asks for {layers} layers but the file holds only "
            f"{len(shapes)} base weights; the file is damaged"
        )
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype).state_dict()
    except Exception as e:  # as in base_config: the model's constructor fails in any way
        raise ModelFileError(f"{where}: the base model config does not build: {e!r}") from e
    for key, shape in shapes.items():
        if key in skeleton and tuple(shape) != tuple(skeleton[key].shape):
            raise ModelFileError(
                f"{where}: base weight {key} has shape {list(shape)}, the stored config builds "
                f"{list(skeleton[key].shape)}; the file is damaged"
            )


def build_tokenizer(files: Mapping[str, str | bytes], where: str) -> Any:
    """The tokenizer stored in a model file (``where`` names it); ModelFileError when its files
    do not load. transformers and the Rust tokenizers raise any type on damaged files (a bare
    ``Exception`` from tokenizers), so every error of the load is a refusal here."""
    try:
        return tokenizer_from_files(files)
    except Exception as e:
        raise ModelFileError(
            f"{where}: the stored tokenizer files do not load ({type(e).__name__}: {e}); the "
            f"file is damaged"
        ) from e


def load_model_pt(path: str | Path) -> LoadedModel:
    """Rebuild the adapted model (and tokenizer) from ``model.pt``."""
    return model_from_payload(read_model_pt(path))


def model_from_payload(payload: dict[str, Any]) -> LoadedModel:
    """Rebuild the model from a payload :func:`read_model_pt` returned (read the file once)."""
    base = _build_base(payload["base_model"])
    adapter = payload["adapter"]
    try:
        model = QWTHNModel(base, QWTHNConfig.from_dict(adapter["config"]))
        model.load_adapter_state_dict(adapter["state_dict"])
    except (AdapterError, ConfigError, CircuitError, MPOError) as e:
        raise ModelFileError(
            f"the adapter in model.pt does not fit its own config: {e}; the file is damaged or "
            f"was edited, write it again with qwthn-train or save_model_pt"
        ) from e
    tok = payload.get("tokenizer")
    return LoadedModel(
        model=model,
        tokenizer=build_tokenizer(
            {k: v if isinstance(v, str) else v.numpy().tobytes() for k, v in tok["files"].items()},
            "model.pt",
        )
        if tok
        else None,
        training=payload.get("training") or {},
        producer=payload.get("producer") or {},
    )
