"""How the adapter's two kernels become ``ai.qwthn`` nodes in the exported graph.

During export every adapter layer calls the PyTorch custom ops (``qwthn::quantum_layer``,
``qwthn::mpo_linear``), whose fake implementations let ``torch.export`` trace without running
them; the translation table maps each op to an onnxscript function that emits the ONNX node with
the same circuit encoding and modes as attributes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx_ir
import torch
from onnxscript import values
from torch import nn

from qwthn_onnx.adapter.layer import QuantumLayer
from qwthn_onnx.circuit.encoding import ENCODING_VERSION
from qwthn_onnx.mpo import MPOLinear
from qwthn_onnx.ops.schemas import DOMAIN, OPSET_VERSION, register_schemas
from qwthn_onnx.ops.torch_ops import mpo_linear

__all__ = ["kernel_ops_for_export", "translation_table"]

_QWTHN = values.Opset(DOMAIN, OPSET_VERSION)


def _quantum_layer(
    x: Any,
    weights: Any,
    n_qubits: int,
    n_inputs: int,
    n_weights: int,
    gates: list[int],
    params: list[int],
    constants: list[float],
    observables: list[int],
) -> Any:
    attributes: dict[str, Any] = {
        "encoding_version": ENCODING_VERSION,
        "n_qubits": n_qubits,
        "n_inputs": n_inputs,
        "n_weights": n_weights,
        "gates": list(gates),
        "params": list(params),
        "observables": list(observables),
    }
    if constants:
        attributes["constants"] = onnx_ir.tensor(np.asarray(constants, dtype=np.float64))
    return _QWTHN.QuantumLayer(x, weights, **attributes)


def _mpo_linear(x: Any, cores: list[Any], in_modes: list[int], out_modes: list[int]) -> Any:
    # Inputs by keyword: torch 2.13's op builder binds a positional variadic input after a
    # non-variadic one to *all* positional arguments, which would pass x twice.
    return _QWTHN.MPOLinear(
        x=x, cores=tuple(cores), in_modes=list(in_modes), out_modes=list(out_modes)
    )


def translation_table() -> dict[Any, Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export``; registers the OpSchemas first
    (the exporter validates custom nodes against them)."""
    register_schemas()
    return {
        torch.ops.qwthn.quantum_layer.default: _quantum_layer,
        torch.ops.qwthn.mpo_linear.default: _mpo_linear,
    }


def _mpo_as_custom_op(module: MPOLinear) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return mpo_linear(x, list(module.cores), list(module.in_modes), list(module.out_modes))

    return forward


@contextlib.contextmanager
def kernel_ops_for_export(model: nn.Module) -> Iterator[None]:
    """Within the block, the adapters in ``model`` call the custom ops (restored afterwards)."""
    quantum = [m for m in model.modules() if isinstance(m, QuantumLayer)]
    mpos = [m for m in model.modules() if isinstance(m, MPOLinear)]
    backends = [m.backend for m in quantum]
    try:
        for m in quantum:
            m.backend = "cpp"
        for m in mpos:
            m.forward = _mpo_as_custom_op(m)
        yield
    finally:
        for m, backend in zip(quantum, backends, strict=True):
            m.backend = backend
        for m in mpos:
            del m.forward
