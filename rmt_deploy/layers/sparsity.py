"""Masks: magnitude top-k and N:M (2:4) structured sparsity along the input dimension.

2:4 groups run along the input channels, as NVIDIA's sparse tensor cores and TensorRT expect:
for a Linear weight (out, in) groups of 4 consecutive inputs; for a conv weight
(out, in, kh, kw) groups of 4 input channels at each kernel position.
"""

from __future__ import annotations

import torch


def lowest_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of exactly `count` entries with the lowest scores (ties: lowest index first).

    A k-th value selection, linear in the size: `topk` with k near half of millions of
    entries is many times slower.
    """
    flat = scores.flatten()
    if count <= 0:
        return torch.zeros_like(flat, dtype=torch.bool).reshape(scores.shape)
    if count >= flat.numel():
        return torch.ones_like(flat, dtype=torch.bool).reshape(scores.shape)
    threshold = flat.kthvalue(count).values
    below = flat < threshold
    ties = torch.nonzero(flat == threshold).flatten()
    below[ties[: count - int(below.sum())]] = True
    return below.reshape(scores.shape)


def magnitude_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` share of entries with the largest |scores| (0/1 float mask)."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must lie in [0, 1], got {density}")
    n_prune = scores.numel() - int(round(density * scores.numel()))
    return (~lowest_mask(scores.abs(), n_prune)).float()


def _groups_last(weight: torch.Tensor) -> torch.Tensor:
    """Move the input dimension last: (out, in) or (out, kh, kw, in)."""
    return weight if weight.ndim == 2 else weight.movedim(1, -1)


def _groups_back(grouped: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return grouped if like.ndim == 2 else grouped.movedim(-1, 1)


def nm_incompatibility(weight_shape: tuple[int, ...], m: int = 4) -> str | None:
    """Why a weight cannot take N:M along its input dimension, or None when it can."""
    if len(weight_shape) < 2:
        return f"a {len(weight_shape)}-D tensor has no input dimension"
    in_dim = weight_shape[1]
    if in_dim % m:
        return f"input dimension {in_dim} is not divisible by {m}"
    return None


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4, scores: torch.Tensor | None = None):
    """Keep the n largest-|score| entries in every group of m along the input dimension."""
    reason = nm_incompatibility(tuple(weight.shape), m)
    if reason:
        raise ValueError(f"cannot apply {n}:{m} sparsity: {reason}")
    grouped = _groups_last((weight if scores is None else scores).abs())
    blocks = grouped.reshape(-1, m)
    mask = torch.zeros_like(blocks, dtype=torch.float32)
    mask.scatter_(1, blocks.topk(n, dim=1).indices, 1.0)
    return _groups_back(mask.reshape(grouped.shape), weight).contiguous()


def is_nm_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of m along the input dimension has at most n non-zeros."""
    if nm_incompatibility(tuple(weight.shape), m):
        return False
    blocks = _groups_last(weight).reshape(-1, m)
    return bool(((blocks != 0).sum(dim=1) <= n).all())
