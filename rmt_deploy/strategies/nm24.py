"""2:4 structured sparsity along the input dimension (what sparse tensor cores run).

Within one layer SEB's score |W|/w_ℓ orders entries exactly as |W| does (w_ℓ is one number
per layer), so a SEB-scored 2:4 mask equals the magnitude one; magnitude is what is used.
"""

from __future__ import annotations

from ..layers import nm_incompatibility, nm_mask
from .base import PlanContext, dense_entry, mask_entry, register_strategy


@register_strategy("nm24")
def nm24(ctx: PlanContext):
    """2:4 by magnitude along the input dimension; layers that cannot take it stay dense."""
    plans = []
    for name, module in ctx.targets:
        reason = nm_incompatibility(tuple(module.weight.shape))
        if reason is None and getattr(module, "groups", 1) != 1:
            reason = "grouped convolution"
        if reason:
            category = "grouped_conv" if reason == "grouped convolution" else "shape"
            plans.append(dense_entry(name, module, f"kept dense: {reason}", category))
            continue
        mask = nm_mask(ctx.weight(name))
        plans.append(
            mask_entry(name, module, mask, "2:4 by magnitude along the input dim", action="nm24")
        )
    return plans
