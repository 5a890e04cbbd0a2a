"""Classic RMT pruning (arXiv 2503.01922): sparsify singular vectors below the MP edge, then
prune coefficients directly.

Per layer W = U S Vᵀ and per direction i the threshold T_i = θ·max{1/750, (1 − s_i/σ₊)₊^30}:
for directions below the edge σ₊, entries of U[:, i] and V[:, i] smaller than T_i are zeroed;
entries below θ/750 are zeroed in every direction. The layer is recomposed and the direct
coefficient pruning (global |W|) brings the model to the target sparsity in one shot; the
seed's slow cycling of that step is what `finetune` between calls reproduces.
"""

from __future__ import annotations

import torch

from .base import PlanContext, global_masks, mask_entry, register_strategy


def sparsify_singular_vectors(weight: torch.Tensor, edge: float, theta: float) -> torch.Tensor:
    matrix = weight.detach().reshape(weight.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    floor = theta / 750
    below = (1 - s / edge).clamp_min(0) ** 30
    thresholds = torch.where(
        s < edge, theta * torch.clamp(below, min=1 / 750), torch.full_like(s, floor)
    )
    u = u * (u.abs() >= thresholds[None, :])
    vh = vh * (vh.abs() >= thresholds[:, None])
    return ((u * s) @ vh).to(weight.dtype).reshape(weight.shape)


@register_strategy("classic_rmt", theta=0.1)
def classic_rmt(ctx: PlanContext):
    """MP-guided singular-vector sparsification plus direct coefficient pruning."""
    theta = float(ctx.config["theta"])
    fits = {layer.name: layer.fit for layer in ctx.spectrum.layers}
    weights, touched = {}, set()
    for name, module in ctx.targets:
        fit = fits.get(name)
        if fit is None or getattr(module, "groups", 1) != 1:
            weights[name] = module.weight.detach()
        else:
            weights[name] = sparsify_singular_vectors(module.weight, fit.singular_edge, theta)
            touched.add(name)
    masks = global_masks(weights, dict.fromkeys(weights, 1.0), ctx.sparsity)
    plans = []
    for name, module in ctx.targets:
        note = "singular vectors sparsified below the MP edge, " if name in touched else ""
        plans.append(
            mask_entry(
                name, module, masks[name], note + "then global |W| threshold", weight=weights[name]
            )
        )
    return plans
