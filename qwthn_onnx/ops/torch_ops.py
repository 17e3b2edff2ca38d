"""The C++ circuit kernel as PyTorch custom ops: ``qwthn::quantum_layer`` and its backward.

The circuit travels as the op's arguments, in the flat encoding of
:mod:`qwthn_onnx.circuit.encoding` (ints and float64 constants), so an exporter sees the whole
circuit on the node and can emit the ONNX ``QuantumLayer`` with the same attributes. A fake
(meta) implementation gives shapes without computing; autograd runs the C++ adjoint backward.
The kernel runs on CPU tensors (float32 or float64) with ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import numpy as np
import torch

from qwthn_onnx import native
from qwthn_onnx.circuit import Circuit, CircuitError
from qwthn_onnx.circuit.encoding import EncodedCircuit, encode

__all__ = ["circuit_arguments", "quantum_layer"]


def circuit_arguments(circuit: Circuit) -> tuple:
    """The encoding of ``circuit`` as the trailing arguments of :func:`quantum_layer`."""
    e = encode(circuit)
    return (
        e.n_qubits,
        e.n_inputs,
        e.n_weights,
        e.gates.reshape(-1).tolist(),
        e.params.reshape(-1).tolist(),
        e.constants.tolist(),
        e.observables.reshape(-1).tolist(),
    )


def _encoded(n_qubits, n_inputs, n_weights, gates, params, constants, observables):
    return EncodedCircuit(
        n_qubits=n_qubits,
        n_inputs=n_inputs,
        n_weights=n_weights,
        gates=np.asarray(gates, dtype=np.int64).reshape(-1, 3),
        params=np.asarray(params, dtype=np.int64).reshape(-1, 2),
        constants=np.asarray(constants, dtype=np.float64),
        observables=np.asarray(observables, dtype=np.int64).reshape(-1, n_qubits),
    )


def _threads() -> int:
    """The kernel follows PyTorch's intra-op thread setting (torch.set_num_threads)."""
    return torch.get_num_threads()


def _check(x: torch.Tensor, weights: torch.Tensor) -> None:
    if x.device.type != "cpu" or weights.device.type != "cpu":
        raise CircuitError(
            f"the C++ quantum kernel runs on CPU tensors, got {x.device}; use "
            "quantum_backend='torch' for other devices"
        )
    if not native.available():
        raise CircuitError(
            "the C++ kernel (qwthn_onnx._native) is not built; reinstall with a compiler"
        )


@torch.library.custom_op("qwthn::quantum_layer", mutates_args=())
def quantum_layer(
    x: torch.Tensor,
    weights: torch.Tensor,
    n_qubits: int,
    n_inputs: int,
    n_weights: int,
    gates: list[int],
    params: list[int],
    constants: list[float],
    observables: list[int],
) -> torch.Tensor:
    """Expectation values ``x[..., n_inputs], weights[n_weights] -> [..., n_observables]``."""
    _check(x, weights)
    encoded = _encoded(n_qubits, n_inputs, n_weights, gates, params, constants, observables)
    w = weights.detach().to(x.dtype).contiguous().numpy()
    y = native.quantum_forward(encoded, x.detach().contiguous().numpy(), w, _threads())
    return torch.from_numpy(y)


@quantum_layer.register_fake
def _(x, weights, n_qubits, n_inputs, n_weights, gates, params, constants, observables):
    return x.new_empty((*x.shape[:-1], len(observables) // n_qubits))


@torch.library.custom_op("qwthn::quantum_layer_backward", mutates_args=())
def quantum_layer_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weights: torch.Tensor,
    n_qubits: int,
    n_inputs: int,
    n_weights: int,
    gates: list[int],
    params: list[int],
    constants: list[float],
    observables: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint-method gradients w.r.t. ``x`` and ``weights`` (summed over the batch)."""
    _check(x, weights)
    encoded = _encoded(n_qubits, n_inputs, n_weights, gates, params, constants, observables)
    grad_x, grad_w = native.quantum_backward(
        encoded,
        x.detach().contiguous().numpy(),
        weights.detach().to(x.dtype).contiguous().numpy(),
        grad_out.detach().to(x.dtype).contiguous().numpy(),
        _threads(),
    )
    return torch.from_numpy(grad_x), torch.from_numpy(grad_w).to(weights.dtype)


@quantum_layer_backward.register_fake
def _(grad_out, x, weights, *circuit):
    return torch.empty_like(x), torch.empty_like(weights)


def _setup_context(ctx, inputs, output) -> None:
    x, weights, *circuit = inputs
    ctx.save_for_backward(x, weights)
    ctx.circuit = circuit


def _backward(ctx, grad_out):
    x, weights = ctx.saved_tensors
    grad_x, grad_w = quantum_layer_backward(grad_out, x, weights, *ctx.circuit)
    return (grad_x, grad_w, *([None] * len(ctx.circuit)))


quantum_layer.register_autograd(_backward, setup_context=_setup_context)
