"""MPO shape arithmetic in plain Python: factorisations, capped bond dimensions, parameter
counts and the error for impossible shapes. The op schemas and the native module check MPO
nodes with it without loading PyTorch; :mod:`qwthn_onnx.mpo` builds the layer on it."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["MPOError", "bond_dims", "check_modes", "factorize", "mpo_num_parameters"]


class MPOError(ValueError):
    """An impossible MPO shape (modes that do not multiply to the dimension, bond < 1, ...)."""


def factorize(dim: int, num_factors: int) -> tuple[int, ...]:
    """Split ``dim`` into ``num_factors`` integer factors as balanced as possible.

    Prime factors are dealt largest first to the currently smallest factor; the result is
    sorted descending so the widest mode comes first. Factors of 1 appear when ``dim`` has
    fewer prime factors than ``num_factors`` (a prime dimension stays one mode).
    """
    if dim < 1:
        raise MPOError(f"cannot factorize dimension {dim}: it must be >= 1")
    if num_factors < 1:
        raise MPOError(f"num_factors must be >= 1, got {num_factors}")
    primes: list[int] = []
    rest, p = dim, 2
    while p * p <= rest:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    if rest > 1:
        primes.append(rest)
    factors = [1] * num_factors
    for prime in sorted(primes, reverse=True):
        smallest = min(range(num_factors), key=lambda k: factors[k])
        factors[smallest] *= prime
    return tuple(sorted(factors, reverse=True))


def bond_dims(in_modes: Sequence[int], out_modes: Sequence[int], bond_dim: int) -> tuple[int, ...]:
    """Bond dimensions ``(D_0=1, D_1, ..., D_K=1)``, each capped by the rank its cut can carry."""
    sizes = [i * j for i, j in zip(in_modes, out_modes, strict=True)]
    dims = [1]
    for k in range(1, len(sizes)):
        left, right = math.prod(sizes[:k]), math.prod(sizes[k:])
        dims.append(min(bond_dim, left, right))
    dims.append(1)
    return tuple(dims)


def mpo_num_parameters(in_modes: Sequence[int], out_modes: Sequence[int], bond_dim: int) -> int:
    """Exact parameter count: ``sum_k D_{k-1} * i_k * j_k * D_k`` with capped bonds."""
    d = bond_dims(in_modes, out_modes, bond_dim)
    pairs = enumerate(zip(in_modes, out_modes, strict=True))
    return sum(d[k] * i * j * d[k + 1] for k, (i, j) in pairs)


def check_modes(name: str, modes: Sequence[int], dim: int) -> tuple[int, ...]:
    modes = tuple(int(m) for m in modes)
    if any(m < 1 for m in modes):
        raise MPOError(f"{name} {list(modes)} has a mode < 1; every mode must be a positive int")
    if math.prod(modes) != dim:
        raise MPOError(
            f"{name} {list(modes)} multiply to {math.prod(modes)}, not {dim}; give modes whose "
            f"product is {dim} (e.g. {list(factorize(dim, len(modes)))})"
        )
    return modes
