"""Data-aware low rank: whitened SVD (SVD-LLM) with ranks grown from the MP edge.

For a layer y = W x with input covariance C = E[x xᵀ] = S Sᵀ (Cholesky; conv inputs are the
im2col patches), the SVD of W S = U Σ Vᵀ gives the best rank-r layer for the *output*:
W ≈ U_r Σ_r V_rᵀ S⁻¹ with relative output error e(r) = Σ_{i>r} σ_i² / Σ σ_i². Each layer starts
at its MP-edge rank (the spikes) and grows to the smallest rank with e(r) ≤ ε; one global ε is
found by bisection so the targeted layers keep at most (1 − sparsity) of their parameters.
A layer whose rank would reach the break-even m·n/(m+n) stays dense.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import take_images
from ..plan import LayerPlan
from .base import PlanContext, dense_entry, register_strategy


@torch.no_grad()
def input_covariances(
    model: nn.Module, modules: dict[str, nn.Module], loader, max_images: int, progress: bool = False
) -> dict[str, torch.Tensor]:
    """E[x xᵀ] of each module's input (im2col patches for convs), in float64."""
    sums = {name: None for name in modules}
    counts = dict.fromkeys(modules, 0)

    def hook(name: str, module: nn.Module):
        def collect(_mod, args):
            x = args[0].detach()
            if isinstance(module, nn.Conv2d):
                x = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
                x = x.transpose(1, 2)
            x = x.reshape(-1, x.shape[-1]).double()
            gram = x.T @ x
            sums[name] = gram if sums[name] is None else sums[name] + gram
            counts[name] += x.shape[0]

        return collect

    handles = [m.register_forward_pre_hook(hook(n, m)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        for images in tqdm(
            take_images(loader, max_images), desc="calibrate", unit="batch", disable=not progress
        ):
            model(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: sums[name] / counts[name] for name in modules}


def _svd_via_gram(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of `a` from the eigendecomposition of its smaller Gram matrix (float64).

    Several times faster than an SVD on CPU and exact enough for truncation: directions with
    σ ≈ 0 (which no useful rank keeps) get zero vectors instead of noise.
    """
    wide = a.shape[0] <= a.shape[1]
    gram = a @ a.T if wide else a.T @ a
    eigenvalues, vectors = torch.linalg.eigh(gram)
    eigenvalues, vectors = eigenvalues.flip(0).clamp_min(0), vectors.flip(1)
    sigma = eigenvalues.sqrt()
    inv = torch.where(sigma > sigma[0] * 1e-10, 1 / sigma, torch.zeros_like(sigma))
    if wide:
        return vectors, sigma, (vectors.T @ a) * inv[:, None]
    return (a @ vectors) * inv[None, :], sigma, vectors.T


def whitened_factors(weight: torch.Tensor, cov: torch.Tensor):
    """SVD of W·S (S the Cholesky factor of the input covariance) and, for every rank r,
    the relative output error of keeping r directions: (U, σ, Vᵀ·S⁻¹, errors)."""
    matrix = weight.detach().reshape(weight.shape[0], -1).double()
    d = cov.shape[0]
    damp = 1e-6 * float(torch.trace(cov)) / d + 1e-12
    chol = torch.linalg.cholesky(cov + damp * torch.eye(d, dtype=cov.dtype))
    u, sigma, vh = _svd_via_gram(matrix @ chol)
    energy = sigma**2
    tail = energy.flip(0).cumsum(0).flip(0)  # tail[r] = Σ_{i≥r} σ_i²
    errors = torch.cat([tail, tail.new_zeros(1)]) / energy.sum().clamp_min(1e-30)
    right_all = torch.linalg.solve_triangular(chol, vh, upper=False, left=False)  # X·S = Vᵀ
    return u, sigma, right_all, errors


def rank_for_error(errors: torch.Tensor, eps: float, edge_rank: int, multiple: int = 1) -> int:
    """The smallest rank whose relative output error is ≤ eps, never below the MP edge rank
    (the spikes are signal), rounded up to a multiple of `multiple`."""
    r = int(torch.nonzero(errors <= eps)[0])  # errors[-1] = 0, so one always exists
    r = max(r, edge_rank, 1)
    return min(math.ceil(r / multiple) * multiple, len(errors) - 1)


def factorized_entry(
    name: str, module: nn.Module, factors, rank: int, reason: str, stats: dict[str, float]
) -> LayerPlan:
    """A low-rank LayerPlan carrying the whitened factors truncated to `rank`."""
    u, sigma, right_all, _errors = factors
    m, n = module.weight.shape[0], module.weight[0].numel()
    root = sigma[:rank].sqrt()
    left = (u[:, :rank] * root).to(module.weight.dtype)
    right = (root[:, None] * right_all[:rank]).to(module.weight.dtype)
    return LayerPlan(
        name,
        "lowrank",
        tuple(module.weight.shape),
        m * n,
        rank * (m + n),
        rank=rank,
        reason=reason,
        stats=stats,
        payload={"left": left, "right": right},
    )


@register_strategy("lowrank", needs_data=True, calib_images=512, batch_size=64, rank_multiple=1)
def lowrank(ctx: PlanContext):
    """Whitened-SVD factorization, ranks grown from the MP edge against output error."""
    cfg = ctx.config
    fits = {layer.name: layer.fit for layer in ctx.spectrum.layers}
    eligible = {n: m for n, m in ctx.targets if getattr(m, "groups", 1) == 1}
    covs = input_covariances(
        ctx.model, eligible, ctx.loader(int(cfg["batch_size"])), int(cfg["calib_images"])
    )
    factors, plans_fixed = {}, {}
    for name, module in ctx.targets:
        if name not in eligible:
            plans_fixed[name] = dense_entry(name, module, "kept dense: grouped convolution")
            continue
        factors[name] = whitened_factors(module.weight, covs[name])

    multiple = max(1, int(cfg["rank_multiple"]))

    def rank_for(name: str, eps: float) -> int:
        fit = fits.get(name)
        return rank_for_error(factors[name][3], eps, fit.n_spikes if fit else 0, multiple)

    shapes = {n: (m.weight.shape[0], m.weight[0].numel()) for n, m in eligible.items()}

    def layer_params(name: str, rank: int) -> int:
        m, n = shapes[name]
        return min(m * n, rank * (m + n))

    total = sum(m.weight.numel() for _, m in ctx.targets)
    fixed = sum(p.params_after for p in plans_fixed.values())
    budget = (1 - ctx.sparsity) * total

    def params_at(eps: float) -> int:
        return fixed + sum(layer_params(n, rank_for(n, eps)) for n in factors)

    lo, hi = 0.0, 1.0
    met = params_at(hi) <= budget
    for _ in range(50):
        mid = (lo + hi) / 2
        if params_at(mid) <= budget:
            hi = mid
        else:
            lo = mid
    eps = hi
    plans: list[LayerPlan] = []
    for name, module in ctx.targets:
        if name in plans_fixed:
            plans.append(plans_fixed[name])
            continue
        errors = factors[name][3]
        rank = rank_for(name, eps)
        fit = fits.get(name)
        spikes = fit.n_spikes if fit is not None else 0
        stats = {"output_error": float(errors[rank]), "edge_rank": float(spikes)}
        m = module.weight.shape[0]
        n = module.weight[0].numel()
        if rank * (m + n) >= m * n:
            plans.append(
                dense_entry(
                    name,
                    module,
                    f"kept dense: rank {rank} needed for output error ≤ {eps:.3g} "
                    f"is above break-even {m * n / (m + n):.1f}",
                    **{"edge_rank": float(spikes)},
                )
            )
            continue
        reason = (
            f"rank {rank} (MP edge: {spikes} spikes) for relative output error "
            f"{float(errors[rank]):.3g} ≤ {eps:.3g} on calibration data"
        )
        plans.append(factorized_entry(name, module, factors[name], rank, reason, stats))
    if not met:
        for p in plans:
            p.reason += " [budget not reachable: even edge ranks exceed it]"
    return plans
