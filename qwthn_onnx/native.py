"""Thin typed wrapper over the C++ kernels (``qwthn_onnx._native``, built from custom_ops/).

The circuit kernel reads the flat :class:`~qwthn_onnx.circuit.encoding.EncodedCircuit` arrays,
validates every count, code and index itself, and computes expectation values and their
adjoint-method gradients; the MPO kernel contracts ``x`` with MPO cores, forward and backward.
Both work on numpy arrays (float32 or float64, batch parallel over threads, GIL released).
Errors raised by the C++ side surface as :class:`~qwthn_onnx.circuit.CircuitError` or
:class:`~qwthn_onnx.mpo.MPOError` carrying the C++ message. :func:`available` says whether the
extension could be imported (a pure-Python install, e.g. from an sdist built without a
compiler, has no kernel).

``$QWTHN_NATIVE_MODULE`` names another build of the extension file to load instead (a debug
or sanitizer build, as tests/kernels/test_sanitizers.py does, like ``$QWTHN_OPS_LIBRARY`` for
the op library); it is registered as ``qwthn_onnx._native``, so every importer gets that build.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .circuit.encoding import EncodedCircuit
from .circuit.ir import CircuitError, max_qubits_limit
from .mpo_shapes import MPOError

__all__ = [
    "available",
    "isa",
    "module_path",
    "mpo_backward",
    "mpo_forward",
    "quantum_backward",
    "quantum_forward",
    "set_isa",
]

_ENV = "QWTHN_NATIVE_MODULE"


def _load_override(path: str) -> ModuleType:
    """Load the extension file ``path`` as ``qwthn_onnx._native``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ImportError(f"${_ENV}={path} is not a file; unset it or point it at a built _native")
    name = f"{__package__}._native"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"${_ENV}={path} is not a Python extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


_module: ModuleType | None = None
_import_error: ImportError | None = None
try:
    if os.environ.get(_ENV):
        _module = _load_override(os.environ[_ENV])
    else:
        from . import _native as _module  # type: ignore[attr-defined, no-redef]
except ImportError as e:  # pragma: no cover - depends on the build
    _import_error = e


def available() -> bool:
    """True when the compiled kernel ``qwthn_onnx._native`` can be used."""
    return _module is not None


def module_path() -> Path | None:
    """The loaded extension file (the op library is looked for beside it), or None."""
    return Path(_module.__file__).resolve() if _module is not None else None


def _native() -> Any:
    if _module is None:
        raise ImportError(
            "qwthn_onnx._native is not built; reinstall with a C++17 compiler and CMake "
            f"(pip install -e .) ({_import_error})"
        )
    return _module


def isa() -> str:
    """The instruction set the kernel runs with: ``"avx2"`` or ``"baseline"``."""
    return str(_native().active_isa())


def set_isa(name: str) -> None:
    """Select ``"auto"``, ``"baseline"`` or ``"avx2"`` (process-wide; mainly for testing)."""
    _call(_native().set_isa, name)


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as e:  # the native errors derive from ValueError
        if isinstance(e, CircuitError | MPOError):
            raise
        error = MPOError if type(e).__name__ == "NativeMPOError" else CircuitError
        raise error(str(e)) from None


def _circuit(encoded: EncodedCircuit, max_qubits: int | None) -> Any:
    if not isinstance(encoded, EncodedCircuit):
        raise CircuitError(f"expected an EncodedCircuit, got {type(encoded).__name__}.")
    arrays = []
    for name, dtype in (
        ("gates", np.int64),
        ("params", np.int64),
        ("constants", np.float64),
        ("observables", np.int64),
    ):
        value = getattr(encoded, name)
        try:
            arrays.append(np.ascontiguousarray(value, dtype=dtype))
        except (TypeError, ValueError) as e:
            raise CircuitError(
                f"encoded circuit: '{name}' is not a {dtype.__name__} array ({e})"
            ) from None
    for name in ("n_qubits", "n_inputs", "n_weights"):
        value = getattr(encoded, name)
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise CircuitError(f"encoded circuit: '{name}' must be an int, got {value!r}")
    return _call(
        _native().Circuit,
        int(encoded.n_qubits),
        int(encoded.n_inputs),
        int(encoded.n_weights),
        *arrays,
        max_qubits_limit(max_qubits),
    )


def _float_array(name: str, value: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise CircuitError(f"{name} must be a numpy array, got {type(value).__name__}.")
    if value.dtype not in (np.float32, np.float64):
        raise CircuitError(f"{name} must be float32 or float64, got {value.dtype}.")
    if dtype is not None and value.dtype != dtype:
        raise CircuitError(f"{name} has dtype {value.dtype}, but inputs are {dtype}.")
    return np.ascontiguousarray(value)


def _batch(encoded: EncodedCircuit, inputs: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    if inputs.ndim == 0 or inputs.shape[-1] != encoded.n_inputs:
        raise CircuitError(
            f"inputs must have shape [..., n_inputs={encoded.n_inputs}], got {inputs.shape}."
        )
    lead = inputs.shape[:-1]
    return inputs.reshape(int(np.prod(lead, dtype=np.int64)), encoded.n_inputs), lead


def quantum_forward(
    encoded: EncodedCircuit,
    inputs: np.ndarray,
    weights: np.ndarray,
    threads: int = 0,
    *,
    max_qubits: int | None = None,
) -> np.ndarray:
    """Expectation values ``inputs [..., n_inputs], weights [n_weights] -> [..., n_obs]``.

    inputs and weights must share a dtype (float32 or float64; the result has it too).
    ``threads``: worker threads, 0 = one per hardware thread. Results do not depend on it.
    """
    inputs = _float_array("inputs", inputs)
    weights = _float_array("weights", weights, inputs.dtype)
    circuit = _circuit(encoded, max_qubits)
    flat, lead = _batch(encoded, inputs)
    out = _call(circuit.forward, flat, weights, int(threads))
    return out.reshape(*lead, out.shape[-1])


def quantum_backward(
    encoded: EncodedCircuit,
    inputs: np.ndarray,
    weights: np.ndarray,
    grad_out: np.ndarray,
    threads: int = 0,
    *,
    max_qubits: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Adjoint-method gradients of ``sum(grad_out * quantum_forward(...))``.

    Returns ``(grad_inputs [..., n_inputs], grad_weights [n_weights])``, the latter summed over
    the batch. grad_out has the forward output's shape and the inputs' dtype.
    """
    inputs = _float_array("inputs", inputs)
    weights = _float_array("weights", weights, inputs.dtype)
    grad_out = _float_array("grad_out", grad_out, inputs.dtype)
    circuit = _circuit(encoded, max_qubits)  # encoding errors first
    flat, lead = _batch(encoded, inputs)
    n_obs = int(circuit.n_observables)
    if grad_out.shape != (*lead, n_obs):
        raise CircuitError(
            f"grad_out must have shape {(*lead, n_obs)} (the forward output's), got "
            f"{grad_out.shape}."
        )
    grad_in, grad_w = _call(
        circuit.backward, flat, weights, grad_out.reshape(flat.shape[0], n_obs), int(threads)
    )
    return grad_in.reshape(inputs.shape), grad_w


def _mpo_arrays(
    x: np.ndarray, cores: list[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray], tuple[int, ...]]:
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64) or x.ndim == 0:
        raise MPOError("x must be a float32 or float64 numpy array of rank >= 1.")
    arrays = []
    for k, core in enumerate(cores):
        if not isinstance(core, np.ndarray) or core.dtype != x.dtype:
            raise MPOError(f"core {k} must be a numpy array of x's dtype ({x.dtype}).")
        arrays.append(np.ascontiguousarray(core))
    lead = x.shape[:-1]
    flat = np.ascontiguousarray(x).reshape(int(np.prod(lead, dtype=np.int64)), x.shape[-1])
    return flat, arrays, lead


def mpo_forward(
    in_modes: list[int], out_modes: list[int], x: np.ndarray, cores: list[np.ndarray],
    threads: int = 0,
) -> np.ndarray:  # fmt: skip
    """``y = x @ W.T`` for the MPO ``W`` given by ``cores``: ``x [..., prod(in_modes)]``.

    Cores have shapes ``[D_{k-1}, in_modes[k], out_modes[k], D_k]`` and x's dtype.
    """
    flat, arrays, lead = _mpo_arrays(x, cores)
    y = _call(_native().mpo_forward, list(in_modes), list(out_modes), flat, arrays, int(threads))
    return y.reshape(*lead, y.shape[-1])


def mpo_backward(
    in_modes: list[int], out_modes: list[int], x: np.ndarray, cores: list[np.ndarray],
    grad_y: np.ndarray, threads: int = 0,
) -> tuple[np.ndarray, list[np.ndarray]]:  # fmt: skip
    """Gradients of ``sum(grad_y * mpo_forward(...))``: ``(grad_x, [grad_core_k])``."""
    flat, arrays, lead = _mpo_arrays(x, cores)
    if not isinstance(grad_y, np.ndarray) or grad_y.dtype != x.dtype:
        raise MPOError(f"grad_y must be a numpy array of x's dtype ({x.dtype}).")
    if grad_y.shape[:-1] != lead:
        raise MPOError(f"grad_y must have x's leading dims {lead}, got {grad_y.shape}.")
    grad_flat = np.ascontiguousarray(grad_y).reshape(flat.shape[0], -1)
    grad_x, grad_cores = _call(
        _native().mpo_backward, list(in_modes), list(out_modes), flat, arrays, grad_flat,
        int(threads),
    )  # fmt: skip
    return grad_x.reshape(x.shape), list(grad_cores)
