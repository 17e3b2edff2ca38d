"""A QWTHN-adapted causal LM -> one ONNX graph with ``ai.qwthn`` nodes, fallbacks and metadata.

Export runs ``torch.onnx.export(dynamo=True)`` on :class:`CausalLMWithCache` with the adapters
switched to the PyTorch custom ops, translated to ``QuantumLayer`` / ``MPOLinear`` nodes. Then:
symbolic dims get the conventional names, the fallback functions are attached (standard-op
bodies, so plain onnxruntime runs the file), and ``metadata_props`` record what the way back
needs. Nothing here touches the filesystem; :mod:`exporters.export` writes the directory.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir
import onnx_ir.convenience
import torch
from torch import nn

from exporters.causal_lm import (
    SUPPORTED_ARCHITECTURES,
    CacheGeometry,
    CausalLMWithCache,
    sample_inputs,
)
from exporters.custom_ops import kernel_ops_for_export, translation_table
from qwthn_onnx.adapter import QWTHNModel
from qwthn_onnx.ops.fallback import attach_fallbacks
from qwthn_onnx.ops.schemas import DOMAIN, OPSET_VERSION
from qwthn_onnx.runtime.metadata import ExportMetadata
from qwthn_onnx.runtime.signature import ATTENTION_MASK, LOGITS

__all__ = [
    "DEFAULT_OPSET",
    "DTYPES",
    "MAX_OPSET",
    "MIN_OPSET",
    "ExportError",
    "ExportedGraph",
    "check_architecture",
    "export_causal_lm",
    "export_graph",
    "save_onnx",
]

MIN_OPSET = 18  # the dynamo exporter's lowest (torchlib is written against opset 18)
MAX_OPSET = 23  # the highest tested (tests/exporters): torchlib and onnxruntime 1.32 run it
DEFAULT_OPSET = 18
DTYPES = {"float32": torch.float32, "float16": torch.float16}

# Symbolic dims as the runtime conventions name them (see qwthn_onnx.runtime.signature).
_BATCH, _SEQUENCE, _PAST = "batch", "sequence_length", "past_sequence_length"
_TOTAL = "total_sequence_length"
# Where an exported graph's initializers point until save_onnx writes them (never a real file).
_PLACEHOLDER = "<weights held in memory: write with exporters.onnx_export.save_onnx>"


class ExportError(ValueError):
    """A model or option the exporter cannot handle; the message says what to change."""


@dataclass
class ExportedGraph:
    """The exported graph, its weights, and what verification needs to rerun PyTorch.

    ``model`` holds no weight data: its initializers are placeholders (external data at a
    location that does not exist), and ``weights`` maps each initializer name to the module's
    own tensor, which :func:`save_onnx` streams to disk. The weights are never copied into a
    protobuf in memory, so exporting a model costs about its own size, not three times it.
    """

    model: onnx.ModelProto
    weights: dict[str, onnx_ir.TensorProtocol]
    module: CausalLMWithCache
    geometry: CacheGeometry
    vocab_size: int


def check_architecture(architecture: str) -> None:
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ExportError(
            f"architecture {architecture} is not supported by qwthn-export; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"opset {opset!r} is out of range: qwthn-export writes opsets {MIN_OPSET}..{MAX_OPSET}"
        )


def _dynamic_shapes(geometry: CacheGeometry) -> tuple[Any, ...]:
    """Batch, new and past lengths are free; the mask's length is left to torch.export, which
    finds it equal to past + new."""
    dim = torch.export.Dim
    batch, sequence, past = dim(_BATCH), dim(_SEQUENCE), dim(_PAST, min=0)
    tokens = {0: batch, 1: sequence}
    mask = {0: batch, 1: dim.DYNAMIC}
    cache = {0: batch, 2: past}
    return (tokens, mask, tokens, tuple([cache] * (2 * geometry.num_layers)))


def _set_dims(value: onnx.ValueInfoProto, names: dict[int, str]) -> None:
    dims = value.type.tensor_type.shape.dim
    for axis, name in names.items():
        dims[axis].Clear()
        dims[axis].dim_param = name


def _name_dims(model: onnx.ModelProto) -> None:
    """Give inputs and outputs the conventional symbolic dims (torch.export writes a derived
    length as ``past_sequence_length + sequence_length``); drop intermediate shapes, which
    onnxruntime infers itself."""
    for value in model.graph.input:
        if value.name == ATTENTION_MASK:
            _set_dims(value, {0: _BATCH, 1: _TOTAL})
    for value in model.graph.output:
        if value.name == LOGITS:
            _set_dims(value, {0: _BATCH, 1: _SEQUENCE})
        else:
            _set_dims(value, {0: _BATCH, 2: _TOTAL})
    del model.graph.value_info[:]


def _weights_map(module: CausalLMWithCache, initializers: set[str]) -> dict[str, str]:
    """State-dict key of the adapted model -> initializer name, for every weight in the graph.

    A tensor shared by several keys (tied embeddings) is one initializer under one of its
    names. A parameter that is in no initializer would make the file impossible to import,
    so it is an error; an unused buffer is skipped (the importer rebuilds it from the config).
    """
    aliases: dict[int, set[str]] = {}
    for name, tensor in [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]:
        aliases.setdefault(id(tensor), set()).add(name)
    parameters = {id(p) for p in module.parameters()}
    out: dict[str, str] = {}
    for key, tensor in module.model.state_dict(keep_vars=True).items():
        found = sorted(aliases.get(id(tensor), set()) & initializers)
        if found:
            out[key] = found[0]
        elif id(tensor) in parameters:
            raise ExportError(
                f"weight {key} is not an initializer of the exported graph, so the file could "
                f"not be imported back; please report this with the model's architecture"
            )
    return out


@contextlib.contextmanager
def _quiet_torch_onnx_logs() -> Iterator[None]:
    """torch.onnx logs a warning per optional library it does not find (torchvision ops)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _strip_trace_info(model: onnx.ModelProto) -> None:
    """Drop what the exporter records per node (Python stack traces, FX nodes, module paths):
    it holds local file paths and is most of the file's size for small models. Our own nodes
    are first named after the module that ran them (``model.layers.0.self_attn.q_proj.qwthn.qnn``),
    which is how tools find the adapted layer of a QuantumLayer node."""
    for node in model.graph.node:
        if node.domain == DOMAIN:
            scopes = next(
                (ast.literal_eval(m.value) for m in node.metadata_props
                 if m.key == "pkg.torch.onnx.name_scopes"),
                [],
            )  # fmt: skip
            if len(scopes) >= 2:
                node.name = scopes[-2].removeprefix("model.")
        node.doc_string = ""
        del node.metadata_props[:]


def _detach_weights(
    program: Any,
) -> tuple[onnx.ModelProto, dict[str, onnx_ir.TensorProtocol]]:
    """The program's graph as a ``ModelProto`` whose initializers carry no data, and the
    initializer tensors by name (the module's own tensors, not copies)."""
    graph = program.model.graph
    weights: dict[str, onnx_ir.TensorProtocol] = {}
    for name, value in graph.initializers.items():
        tensor = value.const_value
        weights[name] = tensor
        value.const_value = onnx_ir.ExternalTensor(
            _PLACEHOLDER, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=name
        )
    try:
        return onnx_ir.serde.serialize_model(program.model), weights
    finally:
        for name, value in graph.initializers.items():
            value.const_value = weights[name]


def _fold_weight_transposes(graph: onnx_ir.Graph) -> list[str]:
    """``Transpose(W)`` of a 2-D initializer used by nothing else becomes the initializer
    ``W^T`` (computed while it is written, one tensor at a time), under W's name so the
    state-dict map still finds it; returns those names.

    With ``optimize=False`` every linear layer reads its weight through a Transpose, which
    onnxruntime would otherwise constant-fold at every session start (SmolLM2: 330 of them,
    a third of the load time) into a second copy of the weights.
    """
    folded = []
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
            continue
        value = node.inputs[0]
        if value is None or not value.is_initializer() or len(value.uses()) != 1:
            continue
        tensor = value.const_value
        perm = node.attributes.get("perm")
        if tensor is None or len(tensor.shape) != 2 or (perm and list(perm.as_ints()) != [1, 0]):
            continue

        def transposed(
            tensor: onnx_ir.TensorProtocol = tensor, name: str | None = value.name
        ) -> onnx_ir.TensorProtocol:
            return onnx_ir.tensor(np.ascontiguousarray(tensor.numpy().T), name=name)

        shape = onnx_ir.Shape([tensor.shape[1], tensor.shape[0]])
        value.const_value = onnx_ir.LazyTensor(transposed, tensor.dtype, shape, name=value.name)
        value.shape = shape
        onnx_ir.convenience.replace_all_uses_with(node.outputs[0], value)
        graph.remove(node, safe=True)
        folded.append(value.name)
    return folded


def export_causal_lm(
    base: nn.Module, opset: int = DEFAULT_OPSET
) -> tuple[onnx.ModelProto, dict[str, onnx_ir.TensorProtocol], CausalLMWithCache, list[str]]:
    """The KV-cache graph of a causal LM (adapted or not), before fallbacks and metadata.

    Returns the ``ModelProto`` (initializers without data, see :class:`ExportedGraph`), the
    initializer tensors by name, the :class:`CausalLMWithCache` it was traced from, and the
    initializers stored transposed (:func:`_fold_weight_transposes`).
    """
    check_opset(opset)
    base.eval()
    geometry = CacheGeometry.probe(base)
    module = CausalLMWithCache(base, geometry).eval()
    dtype = next(p.dtype for n, p in base.named_parameters() if ".qwthn." not in n)
    vocab = base.get_output_embeddings().weight.shape[0]
    # Distinct sizes, none 0 or 1: torch.export specialises those and merges equal ones.
    example = sample_inputs(geometry, batch=2, sequence=3, past=5, vocab_size=vocab, dtype=dtype)
    with (
        kernel_ops_for_export(base),
        torch.no_grad(),
        warnings.catch_warnings(),
        _quiet_torch_onnx_logs(),
    ):
        # torch.export's own chatter (dims it merged, get_attr nodes, pytree pickling) is not
        # the user's business; anything transformers warns about (a deprecated API) stays loud.
        warnings.filterwarnings("ignore", module=r"(torch|copyreg)(\.|$)")
        try:
            program = torch.onnx.export(
                module,
                tuple(example.values()),
                dynamo=True,
                input_names=geometry.input_names(),
                output_names=geometry.output_names(),
                dynamic_shapes=_dynamic_shapes(geometry),
                custom_translation_table=translation_table(),
                opset_version=opset,
                optimize=False,  # keeps weights under their names, untransposed
                verbose=False,
                report=False,
            )
        except Exception as e:  # torch.onnx raises its own error types, and others from export
            cause = e.__cause__ or e  # torch.onnx wraps the real error in a generic one
            summary = (str(cause).strip().splitlines() or [""])[0]
            raise ExportError(
                f"torch.onnx.export failed for {type(base).__name__}: "
                f"{type(cause).__name__}: {summary}"
            ) from e
    transposed = _fold_weight_transposes(program.model.graph)
    proto, weights = _detach_weights(program)
    _name_dims(proto)
    _strip_trace_info(proto)
    return proto, weights, module, transposed


def export_graph(
    model: QWTHNModel,
    metadata: ExportMetadata,
    opset: int = DEFAULT_OPSET,
    fallback: bool = True,
) -> ExportedGraph:
    """Export ``model`` (adapted, eval mode) to an ONNX ``ModelProto`` with KV-cache I/O.

    ``metadata`` is completed (cache geometry, weights map) and attached.
    """
    base: nn.Module = model.base_model
    check_architecture(type(base).__name__)
    proto, weights, module, transposed = export_causal_lm(base, opset)
    geometry, vocab = module.geometry, base.get_output_embeddings().weight.shape[0]
    if fallback:
        attach_fallbacks(proto)  # also imports the ai.qwthn opset
    elif not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.add(domain=DOMAIN, version=OPSET_VERSION)
    metadata.cache = {
        "num_layers": geometry.num_layers,
        "num_kv_heads": geometry.num_kv_heads,
        "head_dim": geometry.head_dim,
    }
    metadata.weights = _weights_map(module, set(weights))
    metadata.transposed_weights = transposed
    metadata.attach(proto)
    proto.producer_name = "qwthn-onnx"
    proto.producer_version = metadata.producer.get("version", "")
    return ExportedGraph(
        model=proto, weights=weights, module=module, geometry=geometry, vocab_size=vocab
    )


def save_onnx(exported: ExportedGraph, path: Path, external_data: str | None) -> None:
    """Write ``exported`` to ``path``, the weights streamed from the module's tensors.

    With ``external_data`` (a file name beside ``path``) every tensor of 1 KiB or more goes
    there, page-aligned, one tensor at a time; without it the file is self-contained (the
    whole protobuf is built in memory, so only for small models)."""
    model = onnx_ir.serde.deserialize_model(exported.model)
    for name, value in model.graph.initializers.items():
        value.const_value = exported.weights[name]
    if external_data is None:
        onnx_ir.save(model, path)
    else:
        onnx_ir.save(
            model,
            path,
            external_data=external_data,
            size_threshold_bytes=1024,
            max_in_flight_bytes=64 << 20,
            alignment=4096,
        )
