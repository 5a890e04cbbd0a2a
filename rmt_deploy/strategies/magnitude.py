"""Global magnitude pruning: the baseline every RMT strategy is measured against."""

from __future__ import annotations

from .base import PlanContext, global_masks, mask_entry, register_strategy


@register_strategy("magnitude")
def magnitude(ctx: PlanContext):
    """Global |W| pruning to the target sparsity over all targeted layers."""
    weights = {name: ctx.weight(name) for name, _ in ctx.targets}
    masks = global_masks(weights, dict.fromkeys(weights, 1.0), ctx.sparsity)
    return [
        mask_entry(name, module, masks[name], f"global |W| threshold at sparsity {ctx.sparsity}")
        for name, module in ctx.targets
    ]
