"""Spectral edge budgeting (SEB, successor of arXiv 2503.01922; yspennstate/RMT_based_pruning).

Layers whose MP edge σ₊ is high relative to the others (more noise-like scale) are pruned
harder: score |W_ij| / w_ℓ with w_ℓ = max(0.1, 1 + β·[1 − s/s_d]₊^p · z_ℓ), p = 1, z_ℓ the
z-score of σ₊ across layers, pruned globally to sparsity s.
"""

from __future__ import annotations

from ..scores import layer_kind, seb_regime, seb_weights  # noqa: F401  (re-exported)
from .base import PlanContext, global_masks, mask_entry, register_strategy


def seb_scales(ctx: PlanContext, sparsity: float) -> dict[str, float]:
    """w_ℓ per targeted layer of the strategy's context."""
    return seb_weights(ctx.spectrum, [name for name, _ in ctx.targets], sparsity)


@register_strategy("seb")
def seb(ctx: PlanContext):
    """Spectral edge budgeting: global pruning by |W| / w_ℓ with w_ℓ from the MP edge z-score."""
    weights = {name: ctx.weight(name) for name, _ in ctx.targets}
    scales = seb_scales(ctx, ctx.sparsity)
    masks = global_masks(weights, scales, ctx.sparsity)
    plans = []
    for name, module in ctx.targets:
        entry = mask_entry(
            name, module, masks[name], f"SEB score |W|/w with w = {scales[name]:.3f}"
        )
        entry.stats["seb_scale"] = scales[name]
        plans.append(entry)
    return plans
