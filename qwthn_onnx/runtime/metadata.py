"""What an exported ``model.onnx`` says about itself, in its ``metadata_props``.

Everything a round trip needs travels inside the ONNX file, so the file alone is enough to run
it (tokenizer, cache geometry) and to rebuild the trainable PyTorch model (base config, adapter
config, which initializer holds which weight, training metadata). Values are JSON strings under
``qwthn.*`` keys; ``qwthn.format`` / ``qwthn.format_version`` identify the layout.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # onnx is needed only to write or read a ModelProto, not by sessions
    import onnx

__all__ = [
    "METADATA_FORMAT",
    "METADATA_VERSION",
    "ExportMetadata",
    "MetadataError",
    "decode_files",
    "encode_files",
]

METADATA_FORMAT = "qwthn-onnx/onnx"
# 2: some initializers hold their weight transposed (``transposed_weights``); a file without
# any is still written as 1, which every reader reads.
METADATA_VERSION = 2
_READABLE_VERSIONS = ("1", "2")
_PREFIX = "qwthn."
_JSON_FIELDS = (
    "producer",
    "base_model",
    "adapter_config",
    "circuits",
    "cache",
    "weights",
    "tokenizer",
    "training",
)
_OPTIONAL_JSON_FIELDS = {"transposed_weights": list}  # absent from older files


class MetadataError(ValueError):
    """An ONNX file without (complete, readable) qwthn-onnx metadata."""


def encode_files(files: dict[str, str | bytes]) -> dict[str, dict[str, str]]:
    """Text files as text, binary ones as base64, in a JSON-safe mapping."""
    out = {}
    for name, content in files.items():
        if isinstance(content, str):
            out[name] = {"text": content}
        else:
            out[name] = {"base64": base64.b64encode(bytes(content)).decode("ascii")}
    return out


def decode_files(encoded: dict[str, Any]) -> dict[str, str | bytes]:
    """Inverse of :func:`encode_files`; rejects names that are not plain file names."""
    files: dict[str, str | bytes] = {}
    for name, entry in encoded.items():
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name[0] == ".":
            raise MetadataError(f"tokenizer file name {name!r} is not a plain file name")
        if isinstance(entry, dict) and isinstance(entry.get("text"), str):
            files[name] = entry["text"]
        elif isinstance(entry, dict) and isinstance(entry.get("base64"), str):
            try:
                files[name] = base64.b64decode(entry["base64"], validate=True)
            except ValueError as e:
                raise MetadataError(f"tokenizer file {name!r}: bad base64: {e}") from e
        else:
            raise MetadataError(f"tokenizer file {name!r}: expected {{'text'|'base64': str}}")
    return files


@dataclass
class ExportMetadata:
    """The ``qwthn.*`` metadata of an exported model.

    - ``base_model``: ``{architecture, config_json, dtype}`` (transformers config, full JSON).
    - ``adapter_config``: ``QWTHNConfig.to_dict()``.
    - ``circuits``: adapted module name -> circuit IR (``Circuit.to_dict()``).
    - ``cache``: ``{num_layers, num_kv_heads, head_dim}`` of the KV-cache inputs/outputs.
    - ``weights``: state-dict key of the adapted model -> ONNX initializer holding it.
    - ``transposed_weights``: initializers that hold their state-dict tensor transposed (the
      linear layers' weights, stored as the graph multiplies by them). Optional on reading:
      files written before it hold none.
    - ``tokenizer``: :func:`encode_files` of the tokenizer's files, or None.
    """

    producer: dict[str, str]
    base_model: dict[str, Any]
    adapter_config: dict[str, Any]
    circuits: dict[str, Any]
    cache: dict[str, int]
    weights: dict[str, str]
    tokenizer: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    transposed_weights: list[str] = field(default_factory=list)

    def to_props(self) -> dict[str, str]:
        props = {
            _PREFIX + "format": METADATA_FORMAT,
            _PREFIX + "format_version": str(METADATA_VERSION if self.transposed_weights else 1),
        }
        data = asdict(self)
        for name in (*_JSON_FIELDS, *_OPTIONAL_JSON_FIELDS):
            props[_PREFIX + name] = json.dumps(data[name], sort_keys=True)
        return props

    def attach(self, model: onnx.ModelProto) -> None:
        """Set the ``qwthn.*`` entries of ``model.metadata_props`` (others are kept)."""
        props = self.to_props()
        kept = [p for p in model.metadata_props if p.key not in props]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)

    @classmethod
    def from_model(cls, model: onnx.ModelProto, where: str = "model") -> ExportMetadata:
        """Read and check the metadata; raises MetadataError naming what is missing."""
        return cls.from_props({p.key: p.value for p in model.metadata_props}, where)

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> ExportMetadata:
        """The same from a key -> value mapping (e.g. onnxruntime's custom_metadata_map)."""
        fmt = props.get(_PREFIX + "format")
        if fmt != METADATA_FORMAT:
            raise MetadataError(
                f"{where} was not written by qwthn-export (no '{_PREFIX}format' = "
                f"'{METADATA_FORMAT}' in its metadata_props)"
            )
        version = props.get(_PREFIX + "format_version")
        if version not in _READABLE_VERSIONS:
            raise MetadataError(
                f"{where}: metadata format_version {version!r} is not supported (this version "
                f"reads {' and '.join(_READABLE_VERSIONS)}); upgrade qwthn-onnx"
            )
        values: dict[str, Any] = {}
        for name in (*_JSON_FIELDS, *_OPTIONAL_JSON_FIELDS):
            key = _PREFIX + name
            if key not in props:
                if name in _OPTIONAL_JSON_FIELDS:
                    continue
                raise MetadataError(f"{where}: metadata entry '{key}' is missing")
            try:
                values[name] = json.loads(props[key])
            except (ValueError, TypeError) as e:  # also bytes that are not UTF-8, or not text
                raise MetadataError(f"{where}: metadata entry '{key}' is not JSON: {e}") from e
        expected = {
            "producer": dict,
            "base_model": dict,
            "adapter_config": dict,
            "circuits": dict,
            "cache": dict,
            "weights": dict,
            "tokenizer": (dict, type(None)),
            "training": dict,
            **_OPTIONAL_JSON_FIELDS,
        }
        for name, kind in expected.items():
            if name in values and not isinstance(values[name], kind):
                raise MetadataError(f"{where}: metadata entry '{_PREFIX}{name}' has the wrong type")
        if not all(isinstance(n, str) for n in values.get("transposed_weights", [])):
            raise MetadataError(f"{where}: '{_PREFIX}transposed_weights' must list names")
        for key in ("architecture", "config_json", "dtype"):
            if not isinstance(values["base_model"].get(key), str):
                raise MetadataError(f"{where}: '{_PREFIX}base_model' lacks '{key}'")
        for key in ("num_layers", "num_kv_heads", "head_dim"):
            value = values["cache"].get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MetadataError(f"{where}: '{_PREFIX}cache.{key}' must be a positive int")
        return cls(**values)

    def tokenizer_files(self) -> dict[str, str | bytes] | None:
        return None if self.tokenizer is None else decode_files(self.tokenizer)
