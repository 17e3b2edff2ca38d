"""The way back: an exported ``model.onnx`` -> the trainable PyTorch model, from the file alone.

The base model is rebuilt from the transformers config in the metadata, the adapters from the
adapter config, and every weight is copied bit for bit from the initializer the metadata names
for it. The circuits on the graph's ``QuantumLayer`` nodes must be the ones the adapter config
builds, so a file whose graph and metadata disagree is refused rather than half-imported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from qwthn_onnx.adapter import QWTHNConfig, QWTHNModel
from qwthn_onnx.checkpoint import LoadedModel, base_config, build_tokenizer, check_weights_fit
from qwthn_onnx.circuit import Circuit, CircuitError
from qwthn_onnx.ops.schemas import DOMAIN, circuit_from_node
from qwthn_onnx.runtime.export_dir import model_path
from qwthn_onnx.runtime.metadata import ExportMetadata, MetadataError

__all__ = ["ImportError_", "import_onnx"]


class ImportError_(ValueError):
    """An ONNX file whose weights or circuits do not fit its own metadata."""


def _load(path: Path) -> onnx.ModelProto:
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, OSError for missing external data, ...
        raise MetadataError(f"{path}: not a readable ONNX file (truncated or damaged?): {e}") from e
    for prop in proto.metadata_props:  # protobuf hands invalid UTF-8 back as bytes, not str
        if not isinstance(prop.key, str) or not isinstance(prop.value, str):
            raise MetadataError(
                f"{path}: metadata entry {prop.key!r} is not UTF-8 text; the file is damaged"
            )
    return proto


def _base_model(meta: ExportMetadata, graph: onnx.GraphProto) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    base = meta.base_model
    dtype = getattr(torch, base["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise MetadataError(f"base_model.dtype {base['dtype']!r} is not a torch dtype")
    config = base_config(base["config_json"], "qwthn.base_model")
    transposed = set(meta.transposed_weights)
    dims = {t.name: tuple(t.dims)[:: -1 if t.name in transposed else 1] for t in graph.initializer}
    shapes = {key: dims[name] for key, name in meta.weights.items() if name in dims}
    check_weights_fit(config, shapes, dtype, "qwthn.base_model")
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if type(model).__name__ != base["architecture"]:
        raise MetadataError(
            f"config builds {type(model).__name__}, metadata says {base['architecture']}"
        )
    return model


def _check_circuits(graph: onnx.GraphProto, model: QWTHNModel, meta: ExportMetadata) -> None:
    built = {name: layer.qwthn.qnn.circuit for name, layer in model.adapter_layers().items()}
    if set(meta.circuits) != set(built):
        raise ImportError_(
            f"metadata lists adapted layers {sorted(meta.circuits)}, the adapter config "
            f"adapts {sorted(built)}"
        )
    for name, circuit in built.items():
        try:
            stored = Circuit.from_dict(meta.circuits[name])
        except CircuitError as e:
            raise ImportError_(f"metadata circuit of {name}: {e}") from e
        if stored != circuit:
            raise ImportError_(f"metadata circuit of {name} differs from the adapter config's")
    in_graph = {
        circuit_from_node(n)
        for n in graph.node
        if n.domain == DOMAIN and n.op_type == "QuantumLayer"
    }
    if in_graph != set(built.values()):
        raise ImportError_("the graph's QuantumLayer circuits differ from the adapter config's")


def _state_dict(graph: onnx.GraphProto, model: QWTHNModel, meta: ExportMetadata):
    initializers = {t.name: t for t in graph.initializer}
    own = model.base_model.state_dict(keep_vars=True)
    parameters = {n for n, _ in model.base_model.named_parameters(remove_duplicate=False)}
    missing = sorted(parameters - set(meta.weights))
    unknown = sorted(set(meta.weights) - set(own))
    if missing or unknown:
        raise ImportError_(
            f"metadata weights do not fit the model: missing {missing[:5]}, unknown {unknown[:5]}"
        )
    state: dict[str, torch.Tensor] = {}
    transposed = set(meta.transposed_weights)
    for key, init_name in meta.weights.items():
        if init_name not in initializers:
            raise ImportError_(f"weight {key}: initializer {init_name!r} is not in the graph")
        initializer, expected = initializers[init_name], own[key]
        shape = list(expected.shape)[::-1] if init_name in transposed else list(expected.shape)
        if list(initializer.dims) != shape:  # checked before any allocation
            raise ImportError_(
                f"weight {key}: initializer {init_name!r} has shape {list(initializer.dims)}, "
                f"the model expects {shape}"
            )
        try:
            array = numpy_helper.to_array(initializer)
        except (ValueError, TypeError) as e:
            raise ImportError_(
                f"weight {key}: initializer {init_name!r} does not hold the data its shape and "
                f"type say ({e}); the file is damaged"
            ) from e
        if init_name in transposed:
            array = array.T
        tensor = torch.from_numpy(np.array(array, copy=True))
        if tensor.dtype != expected.dtype:
            raise ImportError_(f"weight {key}: dtype {tensor.dtype}, expected {expected.dtype}")
        state[key] = tensor
    return state


def import_onnx(path: str | Path) -> LoadedModel:
    """Rebuild the adapted model, its tokenizer and training metadata from an exported file."""
    path = model_path(path)
    proto = _load(path)
    meta = ExportMetadata.from_model(proto, where=str(path))
    model = QWTHNModel(_base_model(meta, proto.graph), QWTHNConfig.from_dict(meta.adapter_config))
    _check_circuits(proto.graph, model, meta)
    model.base_model.load_state_dict(_state_dict(proto.graph, model, meta), strict=False)
    files = meta.tokenizer_files()
    training = dict(meta.training)
    training["imported_from"] = str(path)
    return LoadedModel(
        model=model,
        tokenizer=None if files is None else build_tokenizer(files, str(path)),
        training=training,
        producer=meta.producer,
    )
