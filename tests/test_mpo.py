import math

import pytest
import torch

from qwthn_onnx.mpo import MPOError, MPOLinear, bond_dims, factorize, mpo_num_parameters


@pytest.mark.parametrize(
    ("dim", "k", "expected"),
    [
        (768, 3, (12, 8, 8)),
        (4096, 3, (16, 16, 16)),
        (64, 2, (8, 8)),
        (7, 3, (7, 1, 1)),
        (1, 2, (1, 1)),
    ],
)
def test_factorize_is_balanced_and_exact(dim, k, expected):
    assert factorize(dim, k) == expected
    assert math.prod(factorize(dim, k)) == dim


@pytest.mark.parametrize("dim", [2, 12, 30, 96, 100, 896, 1000, 3584])
def test_factorize_products_for_many_dims(dim):
    for k in (1, 2, 3, 4):
        modes = factorize(dim, k)
        assert len(modes) == k and math.prod(modes) == dim


@pytest.mark.parametrize(
    ("d_in", "d_out", "bond", "k"),
    [(64, 8, 4, 3), (8, 64, 4, 3), (32, 32, 2, 2), (96, 10, 8, 3), (7, 5, 3, 2), (16, 16, 64, 4)],
)
def test_forward_equals_reconstructed_dense_matrix(d_in, d_out, bond, k):
    torch.manual_seed(0)
    mpo = MPOLinear(d_in, d_out, bond_dim=bond, num_cores=k, dtype=torch.float64)
    x = torch.randn(3, 4, d_in, dtype=torch.float64)
    dense = mpo.to_dense()
    assert dense.shape == (d_out, d_in)
    # The core-by-core contraction (large operators) and the dense path (small ones) agree.
    torch.testing.assert_close(mpo.contract(x), x @ dense.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mpo(x), x @ dense.T, rtol=1e-12, atol=1e-12)


def test_large_operators_take_the_contraction_path(monkeypatch):
    import qwthn_onnx.mpo as mpo_module

    mpo = MPOLinear(32, 16, bond_dim=4, num_cores=2, dtype=torch.float64)
    x = torch.randn(5, 32, dtype=torch.float64, requires_grad=True)
    monkeypatch.setattr(mpo_module, "DENSE_LIMIT", 0)
    monkeypatch.setattr(MPOLinear, "to_dense", lambda self: pytest.fail("dense path taken"))
    y = mpo(x)
    monkeypatch.undo()
    torch.testing.assert_close(y, x @ mpo.to_dense().T)
    assert torch.autograd.gradcheck(mpo.contract, (x,))


def test_dense_matches_explicit_core_product():
    """Index convention, checked by hand: W[(j1 j2),(i1 i2)] = sum_d G1[i1,j1,d] G2[d,i2,j2]."""
    torch.manual_seed(1)
    mpo = MPOLinear(6, 4, bond_dim=3, in_modes=(2, 3), out_modes=(2, 2), dtype=torch.float64)
    g1, g2 = mpo.cores[0][0], mpo.cores[1][..., 0]
    w = torch.zeros(4, 6, dtype=torch.float64)
    for i1 in range(2):
        for i2 in range(3):
            for j1 in range(2):
                for j2 in range(2):
                    w[j1 * 2 + j2, i1 * 3 + i2] = (g1[i1, j1, :] * g2[:, i2, j2]).sum()
    torch.testing.assert_close(mpo.to_dense(), w)


@pytest.mark.parametrize(
    ("in_modes", "out_modes", "bond"),
    [
        ((4, 4, 4), (2, 2, 2), 4),
        ((16, 16, 16), (2, 2, 2), 8),
        ((2, 2), (2, 2), 100),
        ((3,), (5,), 4),
    ],
)
def test_parameter_count_formula_is_exact(in_modes, out_modes, bond):
    mpo = MPOLinear(
        math.prod(in_modes), math.prod(out_modes), bond, in_modes=in_modes, out_modes=out_modes
    )
    counted = sum(p.numel() for p in mpo.parameters())
    assert mpo.num_parameters() == counted == mpo_num_parameters(in_modes, out_modes, bond)


def test_bonds_are_capped_by_cut_rank():
    # Cut after the first core of 2x2 modes carries at most 4 (left) and 4 (right).
    assert bond_dims((2, 2), (2, 2), 100) == (1, 4, 1)
    assert bond_dims((4, 4, 4), (2, 2, 2), 4) == (1, 4, 4, 1)
    assert bond_dims((2, 2, 2), (1, 1, 1), 8) == (1, 2, 2, 1)


def test_zero_last_core_gives_exact_zero_and_gradients_flow_after_a_step():
    mpo = MPOLinear(16, 8, bond_dim=2, num_cores=2, zero_last_core=True)
    x = torch.randn(5, 16)
    assert torch.equal(mpo(x), torch.zeros(5, 8))
    mpo(x).pow(2).sum().backward()
    mpo.zero_grad()
    (mpo(x) * torch.randn(5, 8)).sum().backward()
    assert mpo.cores[-1].grad.abs().sum() > 0


def test_init_variance_is_kaiming_like():
    torch.manual_seed(0)
    mpo = MPOLinear(1024, 1024, bond_dim=8, num_cores=3, dtype=torch.float64)
    var = mpo.to_dense().var().item()
    assert 0.5 / 1024 < var < 2.0 / 1024


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(MPOError, match="multiply to 12, not 64"):
        MPOLinear(64, 8, in_modes=(2, 2, 3), out_modes=(2, 2, 2))
    with pytest.raises(MPOError, match="same length"):
        MPOLinear(64, 8, in_modes=(8, 8), out_modes=(2, 2, 2))
    with pytest.raises(MPOError, match="bond_dim must be >= 1"):
        MPOLinear(8, 8, bond_dim=0)
    with pytest.raises(MPOError, match="dims must be >= 1"):
        MPOLinear(0, 8)
    with pytest.raises(MPOError, match=r"expects \[..., 16\]"):
        MPOLinear(16, 4)(torch.randn(2, 15))
