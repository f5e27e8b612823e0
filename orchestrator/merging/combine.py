"""Combine several adapters' updates to one tensor into one update (pure tensor math).

Each adapter i contributes its dense update tau_i (the "task vector" of that module) and a
weight w_i. A module an adapter does not touch contributes zeros.

- linear:      sum_i w_i tau_i (task arithmetic; exactly the adapters applied together).
- cat:         the same sum, built from the adapters' factors stacked along the rank, so the
               combined adapter also exists as one LoRA adapter of rank sum_i r_i.
- ties:        keep each tau_i's top `density` fraction by magnitude; elect each entry's sign
               from the weighted sum of the kept values; average, weighted, only the weighted
               kept values that agree with the elected sign (TIES-Merging, Yadav et al. 2023).
- dare_linear: drop each entry of tau_i with probability 1 - density, rescale the rest by
               1 / density, then sum weighted (DARE, Yu et al. 2023).
- dare_ties:   DARE's drop and rescale, then TIES's sign election and disjoint mean.

DARE's drops are seeded per (seed, tensor name, adapter index): the same call gives the
same merge whatever order the tensors are visited in.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import torch

METHODS = ("linear", "ties", "dare_linear", "dare_ties", "cat")
EXACT_METHODS = ("linear", "cat")  # equal to the adapters applied together at run time


def combine(method: str, deltas: Sequence[torch.Tensor | None], weights: Sequence[float], *,
            density: float = 1.0, seed: int = 0, name: str = "") -> torch.Tensor:
    """One update from several adapters' updates to the same tensor (None: not touched)."""
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; use one of {', '.join(METHODS)}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    present = [(i, d.float(), float(w)) for i, (d, w) in enumerate(zip(deltas, weights)) if d is not None]
    if not present:
        raise ValueError(f"no adapter updates {name or 'this tensor'}")
    if method in ("linear", "cat"):
        return weighted_sum([d for _, d, _ in present], [w for _, _, w in present])
    if method == "dare_linear":
        dropped = [dare(d, density, _generator(seed, name, i)) for i, d, _ in present]
        return weighted_sum(dropped, [w for _, _, w in present])
    if method == "ties":
        kept = [trim(d, density) for _, d, _ in present]
    else:  # dare_ties
        kept = [dare(d, density, _generator(seed, name, i)) for i, d, _ in present]
    return disjoint_mean(kept, [w for _, _, w in present])


def weighted_sum(deltas: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    out = torch.zeros_like(deltas[0])
    for d, w in zip(deltas, weights):
        out.add_(d, alpha=w)
    return out


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` fraction of entries largest in magnitude, zero the rest."""
    if density >= 1:
        return delta.clone()
    k = int(round(density * delta.numel()))
    if k <= 0:
        return torch.zeros_like(delta)
    flat = delta.abs().flatten()
    # The k-th largest magnitude is the (n - k + 1)-th smallest.
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))


def dare(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop entries with probability 1 - density; rescale the survivors so the expectation holds."""
    if density >= 1:
        return delta.clone()
    keep = torch.rand(delta.shape, generator=generator) < density
    return torch.where(keep, delta / density, torch.zeros_like(delta))


def elect_sign(kept: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Each entry's sign by the weighted total of the kept values (+1 on an exact tie)."""
    total = weighted_sum(list(kept), weights)
    return torch.where(total >= 0, torch.ones_like(total), -torch.ones_like(total))


def disjoint_mean(kept: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Per entry, the weighted values (w_i * kept_i) that agree with the elected sign, summed
    and divided by the total |w_i| of the adapters that contributed them."""
    sign = elect_sign(kept, weights)
    num = torch.zeros_like(kept[0])
    den = torch.zeros_like(kept[0])
    for d, w in zip(kept, weights):
        weighted = d * w
        agree = (weighted != 0) & (torch.sign(weighted) == sign)
        num += torch.where(agree, weighted, torch.zeros_like(weighted))
        den += agree.to(d.dtype) * abs(w)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))


def _generator(seed: int, name: str, index: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode()) * 31 + index) % (2 ** 63))
    return g
