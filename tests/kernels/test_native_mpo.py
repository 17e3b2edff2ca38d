"""The C++ MPO kernel (native.mpo_forward / mpo_backward, qwthn::mpo_linear) against MPOLinear."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwthn_onnx import native
from qwthn_onnx.mpo import MPOError, MPOLinear
from qwthn_onnx.ops.torch_ops import mpo_linear

pytestmark = pytest.mark.skipif(not native.available(), reason="qwthn_onnx._native not built")

# (in, out, bond, cores or explicit modes): adapter shapes, odd modes, modes of 1, one core.
SHAPES = [
    (64, 8, 4, 3),
    (8, 64, 4, 3),
    (768, 8, 8, 3),
    (12, 6, 2, 2),
    (7, 5, 3, 1),
    (30, 17, 3, ((3, 1, 10), (1, 17, 1))),
]


def _mpo(d_in, d_out, bond, cores, seed=0, dtype=torch.float64) -> MPOLinear:
    torch.manual_seed(seed)
    if isinstance(cores, tuple):
        mpo = MPOLinear(d_in, d_out, bond, in_modes=cores[0], out_modes=cores[1], dtype=dtype)
    else:
        mpo = MPOLinear(d_in, d_out, bond, num_cores=cores, dtype=dtype)
    return mpo


def _run(mpo: MPOLinear, x: torch.Tensor, grad_y: torch.Tensor, threads: int = 1):
    cores = [c.detach().to(x.dtype).numpy() for c in mpo.cores]
    modes = (list(mpo.in_modes), list(mpo.out_modes))
    y = native.mpo_forward(*modes, x.numpy(), cores, threads)
    grad_x, grad_cores = native.mpo_backward(*modes, x.numpy(), cores, grad_y.numpy(), threads)
    return y, grad_x, grad_cores


def _reference(mpo: MPOLinear, x: torch.Tensor, grad_y: torch.Tensor):
    x = x.double().requires_grad_()
    y = mpo.double()(x)
    grads = torch.autograd.grad(y, [x, *mpo.cores], grad_y.double())
    return y.detach().numpy(), grads[0].numpy(), [g.numpy() for g in grads[1:]]


def _assert_close(actual, expected, tol):
    scale = max(np.abs(expected).max(), 1e-30)
    np.testing.assert_allclose(actual, expected, atol=tol * scale, rtol=tol)


def _assert_matches_reference(mpo: MPOLinear, rows: int) -> None:
    """float64 forward and backward of the kernel equal torch autograd's."""
    x = torch.randn(rows, mpo.in_features, dtype=torch.float64)
    grad_y = torch.randn(rows, mpo.out_features, dtype=torch.float64)
    y, gx, gc = _run(mpo, x, grad_y)
    ry, rgx, rgc = _reference(mpo, x, grad_y)
    _assert_close(y, ry, 1e-12)
    _assert_close(gx, rgx, 1e-12)
    for g, r in zip(gc, rgc, strict=True):
        _assert_close(g, r, 1e-11)


@pytest.mark.parametrize(("d_in", "d_out", "bond", "cores"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_backward_match_torch(isa, d_in, d_out, bond, cores, dtype):
    mpo = _mpo(d_in, d_out, bond, cores)
    x = torch.randn(3, 37, d_in, dtype=torch.float64)  # 111 rows: chunk and row-block tails
    grad_y = torch.randn(3, 37, d_out, dtype=torch.float64)
    y, gx, gc = _run(mpo, x.to(dtype), grad_y.to(dtype))
    ry, rgx, rgc = _reference(mpo, x, grad_y)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert y.shape == (3, 37, d_out) and y.dtype == dtype_np(dtype)
    _assert_close(y, ry, tol)
    _assert_close(gx, rgx, tol)
    for g, r in zip(gc, rgc, strict=True):
        assert g.shape == r.shape
        _assert_close(g, r, 10 * tol)


@pytest.mark.parametrize(("d_in", "d_out", "bond", "cores"), SHAPES)
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_a_few_rows_take_the_short_block_path_and_match(d_in, d_out, bond, cores, rows):
    """Single tokens (decode): no dense W, lanes shrink to the batch, short-block loops."""
    _assert_matches_reference(_mpo(d_in, d_out, bond, cores), rows)


def dtype_np(dtype: torch.dtype) -> np.dtype:
    return np.dtype(np.float32 if dtype == torch.float32 else np.float64)


def test_large_operator_is_contracted_core_by_core_and_matches():
    """in*out above the dense limit: the forward takes the core-by-core path."""
    _assert_matches_reference(_mpo(2048, 4096, 2, 3), rows=5)


def test_results_do_not_depend_on_the_thread_count():
    mpo = _mpo(64, 8, 4, 3)
    x = torch.randn(4000, 64, dtype=torch.float32)
    grad_y = torch.randn(4000, 8, dtype=torch.float32)
    first = _run(mpo, x, grad_y, threads=1)
    for threads in (2, 3, 8):
        again = _run(mpo, x, grad_y, threads=threads)
        assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
        for a, b in zip(first[2], again[2], strict=True):
            assert np.array_equal(a, b)


def test_torch_op_passes_opcheck_and_gradcheck():
    mpo = _mpo(12, 6, 2, 2)
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    cores = [c.detach().clone().requires_grad_() for c in mpo.cores]
    modes = (list(mpo.in_modes), list(mpo.out_modes))
    torch.library.opcheck(mpo_linear, (x, cores, *modes))
    assert torch.autograd.gradcheck(lambda x, *c: mpo_linear(x, list(c), *modes), (x, *cores))


def test_torch_op_matches_the_module_and_trains():
    mpo = _mpo(64, 8, 4, 3, dtype=torch.float32)
    x = torch.randn(2, 5, 64)
    y = mpo_linear(x, list(mpo.cores), list(mpo.in_modes), list(mpo.out_modes))
    torch.testing.assert_close(y, mpo(x), atol=1e-5, rtol=1e-5)
    y.square().sum().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in mpo.cores)


def _cores(mpo, dtype=np.float64):
    return [c.detach().numpy().astype(dtype) for c in mpo.cores]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m, x, c: (m[0][:2], m[1], x, c), r"in_modes has 2 entries but out_modes has 3"),
        (lambda m, x, c: (m[0], m[1], x, c[:2]), r"got 2 cores for 3 mode pairs"),
        (lambda m, x, c: (m[0], m[1], x[:, :63], c), r"prod\(in_modes\)=64"),
        (lambda m, x, c: ([4, -4, 4], m[1], x, c), r"modes must be positive"),
        (lambda m, x, c: (m[0], m[1], x, [c[0], c[2], c[1]]), r"core 2 has bond_in 4 but core 1"),
        (lambda m, x, c: (m[0], m[1], x, [c[0][..., :1], *c[1:]]), r"core 1 has bond_in 4"),
        (lambda m, x, c: (m[0], m[1], x, [*c[:2], c[2].reshape(4, 4, 2)]), r"core 2 must have sh"),
        (lambda m, x, c: (m[0], m[1], x[:0], c), r"x is empty"),
        (lambda m, x, c: (m[0], m[1], np.where(x > 1, np.nan, x), c), r"x contains a non-finite"),
        (lambda m, x, c: (m[0], m[1], x, [c[0] * np.inf, *c[1:]]), r"core 0 contains a non-fin"),
        (lambda m, x, c: ([1] * 17, [1] * 17, x, c), r"1\.\.16 cores"),
        (lambda m, x, c: ([2**20] * 3, [1] * 3, x, c), r"prod\(in_modes\) exceeds"),
    ],
)
def test_bad_arguments_raise_mpo_errors(mutate, message):
    mpo = _mpo(64, 8, 4, 3)
    x = np.random.default_rng(0).normal(size=(6, 64))
    args = mutate((list(mpo.in_modes), list(mpo.out_modes)), x, _cores(mpo))
    with pytest.raises(MPOError, match=message):
        native.mpo_forward(*args)


def test_dtype_mismatches_are_refused():
    mpo = _mpo(64, 8, 4, 3)
    modes = (list(mpo.in_modes), list(mpo.out_modes))
    x = np.zeros((2, 64), dtype=np.float32)
    with pytest.raises(MPOError, match="core 0 must be a numpy array of x's dtype"):
        native.mpo_forward(*modes, x, _cores(mpo))
    with pytest.raises(MPOError, match="grad_y must be a numpy array of x's dtype"):
        native.mpo_backward(*modes, x, _cores(mpo, np.float32), np.zeros((2, 8)))
    with pytest.raises(MPOError, match=r"grad_y must have shape \[batch=2"):
        native.mpo_backward(*modes, x, _cores(mpo, np.float32), np.zeros((2, 9), np.float32))
