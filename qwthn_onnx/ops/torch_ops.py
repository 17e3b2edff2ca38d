"""The C++ kernels as PyTorch custom ops: ``qwthn::quantum_layer``, ``qwthn::mpo_linear``.

The circuit travels as the op's arguments, in the flat encoding of
:mod:`qwthn_onnx.circuit.encoding` (ints and float64 constants), so an exporter sees the whole
circuit on the node and can emit the ONNX ``QuantumLayer`` with the same attributes; likewise
the MPO's modes for ``MPOLinear``. Fake (meta) implementations give shapes without computing;
autograd runs the C++ backward ops (adjoint method for the circuit). The kernels run on CPU
tensors (float32 or float64) with ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qwthn_onnx import native
from qwthn_onnx.circuit import Circuit, CircuitError
from qwthn_onnx.circuit.encoding import EncodedCircuit, encode
from qwthn_onnx.mpo import MPOError

__all__ = ["circuit_arguments", "mpo_linear", "quantum_layer"]


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


def _require_kernel(error: type[Exception], alternative: str, *tensors: torch.Tensor) -> None:
    """The C++ kernels need CPU tensors and a built extension; ``alternative`` says what else
    to use."""
    devices = sorted({t.device.type for t in tensors} - {"cpu"})
    if devices:
        raise error(f"the C++ kernel runs on CPU tensors, got {devices[0]}; {alternative}")
    if not native.available():
        raise error("the C++ kernel (qwthn_onnx._native) is not built; reinstall with a compiler")
    x = tensors[0]  # the input's dtype is the one the kernel computes in
    if x.dtype not in (torch.float32, torch.float64):
        raise error(
            f"the C++ kernel computes in float32 or float64, got {x.dtype} (bf16/fp16 autocast "
            "must not reach the adapter); cast the input to float32"
        )


def _check(x: torch.Tensor, weights: torch.Tensor) -> None:
    _require_kernel(CircuitError, "use quantum_backend='torch' on other devices", x, weights)


def _numpy(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A zero-copy view where possible (activations and gradients can be large)."""
    return t.detach().to(dtype).contiguous().numpy()


def _numpy_copy(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A copy, for parameters: ``Tensor.numpy()`` marks the storage it shares as not resizable,
    and FSDP2 frees an unsharded parameter after use by resizing its storage to 0, so a
    zero-copy view of a parameter fails there ("Trying to resize storage that is not
    resizable"). Adapter parameters are small; copying them costs next to nothing."""
    return t.detach().to(dtype, copy=True).contiguous().numpy()


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
    w = _numpy_copy(weights, x.dtype)
    y = native.quantum_forward(encoded, _numpy(x, x.dtype), w, _threads())
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
        _numpy(x, x.dtype),
        _numpy_copy(weights, x.dtype),
        _numpy(grad_out, x.dtype),
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


def _check_mpo(x: torch.Tensor, cores: list[torch.Tensor]) -> None:
    _require_kernel(MPOError, "call the MPOLinear module (PyTorch) on other devices", x, *cores)


@torch.library.custom_op("qwthn::mpo_linear", mutates_args=())
def mpo_linear(
    x: torch.Tensor, cores: list[torch.Tensor], in_modes: list[int], out_modes: list[int]
) -> torch.Tensor:
    """``x[..., prod(in_modes)] -> [..., prod(out_modes)]`` through the MPO ``cores``."""
    _check_mpo(x, cores)
    arrays = [_numpy_copy(c, x.dtype) for c in cores]
    y = native.mpo_forward(in_modes, out_modes, _numpy(x, x.dtype), arrays, _threads())
    return torch.from_numpy(y)


@mpo_linear.register_fake
def _(x, cores, in_modes, out_modes):
    return x.new_empty((*x.shape[:-1], math.prod(out_modes)))


@torch.library.custom_op("qwthn::mpo_linear_backward", mutates_args=())
def mpo_linear_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    cores: list[torch.Tensor],
    in_modes: list[int],
    out_modes: list[int],
) -> list[torch.Tensor]:
    """``[grad_x, grad_core_0, ...]``, the core gradients summed over the batch."""
    _check_mpo(x, cores)
    grad_x, grad_cores = native.mpo_backward(
        in_modes,
        out_modes,
        _numpy(x, x.dtype),
        [_numpy_copy(c, x.dtype) for c in cores],
        _numpy(grad_y, x.dtype),
        _threads(),
    )
    return [torch.from_numpy(grad_x)] + [
        torch.from_numpy(g).to(c.dtype) for g, c in zip(grad_cores, cores, strict=True)
    ]


@mpo_linear_backward.register_fake
def _(grad_y, x, cores, in_modes, out_modes):
    return [torch.empty_like(x)] + [torch.empty_like(c) for c in cores]


def _mpo_setup_context(ctx, inputs, output) -> None:
    x, cores, in_modes, out_modes = inputs
    ctx.save_for_backward(x, *cores)
    ctx.modes = (in_modes, out_modes)


def _mpo_backward(ctx, grad_y):
    x, *cores = ctx.saved_tensors
    grad_x, *grad_cores = mpo_linear_backward(grad_y, x, cores, *ctx.modes)
    return grad_x, grad_cores, None, None


mpo_linear.register_autograd(_mpo_backward, setup_context=_mpo_setup_context)
