"""Matrix-product-operator (tensor-train) linear layer: the tensor-network path of a QWTHN adapter.

A dense ``d_out x d_in`` matrix is replaced by K cores; core k has shape
``[D_{k-1}, i_k, j_k, D_k]`` with ``prod(i_k) = d_in``, ``prod(j_k) = d_out`` and ``D_0 = D_K = 1``.
The entry ``W[(j_1..j_K), (i_1..i_K)]`` is the product of the core slices along the bond
(row-major multi-indices, mode 1 most significant). Bond dimensions are capped at the largest
rank a cut can carry, so no parameter is wasted and the count formula stays exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from qwthn_onnx.mpo_shapes import MPOError, bond_dims, check_modes, factorize, mpo_num_parameters

__all__ = ["DENSE_LIMIT", "MPOError", "MPOLinear", "bond_dims", "factorize", "mpo_num_parameters"]

# Operators up to this many dense elements (16 MiB in float32) are applied by materialising the
# matrix from the cores: batch-independent, and one GEMM instead of K small contractions per
# call. Adapter MPOs (d -> r, r -> d) are far below it; bigger ones contract core by core.
DENSE_LIMIT = 1 << 22


class MPOLinear(nn.Module):
    """``y = x @ W.T`` with ``W`` held as an MPO; leading dims of ``x`` are free.

    Args:
        in_features, out_features: dense shape of the operator.
        bond_dim: maximal bond dimension D (capped per cut, see :func:`bond_dims`).
        num_cores: K, used to factorize the dims when modes are not given.
        in_modes, out_modes: explicit factorizations (length K each).
        zero_last_core: initialise the last core to zero, so the operator starts at exactly 0.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bond_dim: int = 4,
        num_cores: int = 3,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        zero_last_core: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise MPOError(f"MPO dims must be >= 1, got {in_features} -> {out_features}")
        if bond_dim < 1:
            raise MPOError(f"bond_dim must be >= 1, got {bond_dim}")
        if in_modes is not None and out_modes is not None and len(in_modes) != len(out_modes):
            raise MPOError(
                f"in_modes {list(in_modes)} and out_modes {list(out_modes)} need the same length"
            )
        k = len(in_modes) if in_modes is not None else len(out_modes) if out_modes else num_cores
        self.in_modes = check_modes(
            "in_modes", in_modes if in_modes is not None else factorize(in_features, k), in_features
        )
        self.out_modes = check_modes(
            "out_modes",
            out_modes if out_modes is not None else factorize(out_features, k),
            out_features,
        )
        self.in_features, self.out_features, self.bond_dim = in_features, out_features, bond_dim
        self.bonds = bond_dims(self.in_modes, self.out_modes, bond_dim)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(self.bonds[c], i, j, self.bonds[c + 1], dtype=dtype))
            for c, (i, j) in enumerate(zip(self.in_modes, self.out_modes, strict=True))
        )
        self.reset_parameters(zero_last_core)

    def reset_parameters(self, zero_last_core: bool = False) -> None:
        """Normal cores scaled so ``Var(W_ij) = 1 / in_features`` (Kaiming-like for a product)."""
        n = len(self.cores)
        # Var(W) = prod_k sigma_k^2 * prod_k D_k (sum over bond paths); split the target evenly.
        paths = math.prod(self.bonds[1:-1])
        std = (1.0 / (self.in_features * paths)) ** (1.0 / (2 * n))
        with torch.no_grad():
            for core in self.cores:
                core.normal_(0.0, std)
            if zero_last_core:
                self.cores[-1].zero_()

    @property
    def num_cores(self) -> int:
        return len(self.cores)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise MPOError(f"MPOLinear expects [..., {self.in_features}], got {list(x.shape)}")
        if self.in_features * self.out_features <= DENSE_LIMIT:
            return nn.functional.linear(x, self.to_dense())
        return self.contract(x)

    def contract(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the cores one by one to ``x`` without forming the dense matrix."""
        lead = x.shape[:-1]
        # t: [B, J (out modes done), D, i_k, I_rest]; contract one core per step.
        t = x.reshape(-1, 1, 1, self.in_features)
        for core, i_k in zip(self.cores, self.in_modes, strict=True):
            b, jd, d, rest = t.shape
            t = t.reshape(b, jd, d, i_k, rest // i_k)
            t = torch.einsum("bjdir,diek->bjekr", t, core)
            t = t.reshape(b, jd * core.shape[2], core.shape[3], rest // i_k)
        return t.reshape(*lead, self.out_features)

    def to_dense(self) -> torch.Tensor:
        """The dense ``[out_features, in_features]`` matrix this MPO represents."""
        w = self.cores[0].reshape(self.cores[0].shape[1:])  # [i, j, D]
        for core in self.cores[1:]:
            i, j = w.shape[0], w.shape[1]
            w = torch.einsum("ijd,dxyk->ixjyk", w, core)
            w = w.reshape(i * core.shape[1], j * core.shape[2], core.shape[3])
        return w.squeeze(-1).T

    def num_parameters(self) -> int:
        return mpo_num_parameters(self.in_modes, self.out_modes, self.bond_dim)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features} -> {self.out_features}, in_modes={list(self.in_modes)}, "
            f"out_modes={list(self.out_modes)}, bonds={list(self.bonds)}"
        )
