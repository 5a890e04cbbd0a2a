"""2:4 structured sparsity along the input dimension (what sparse tensor cores run).

Within one layer SEB's score |W|/w_ℓ orders entries exactly as |W| does (w_ℓ is one number
per layer), so a SEB-scored 2:4 mask equals the magnitude one; magnitude is what is used.
"""

from __future__ import annotations

from ..layers import nm_incompatibility, nm_mask
from ..ranges import Choice, Range
from .base import PlanContext, dense_entry, mask_entry, register_strategy


@register_strategy(
    "nm24",
    rules={"fraction": Range(0.0, 1.0, low_open=True), "order": Choice(("seb", "size"))},
    fraction=1.0,
    order="seb",
)
def nm24(ctx: PlanContext):
    """2:4 by magnitude along the input dimension; layers that cannot take it stay dense.

    With `fraction` < 1 only that share of the eligible weights goes 2:4, layer by layer in
    `order`: `seb` (the highest SEB weight w_ℓ first: the layers whose MP edge stands out,
    SEB's most prunable) or `size` (the largest layers first)."""
    from .seb import seb_weights

    fraction, order = float(ctx.config["fraction"]), str(ctx.config["order"])
    why = {}
    for name, module in ctx.targets:
        reason = nm_incompatibility(tuple(module.weight.shape))
        if reason is None and getattr(module, "groups", 1) != 1:
            reason = "grouped convolution"
        if reason:
            why[name] = reason
    eligible = [(n, m) for n, m in ctx.targets if n not in why]
    chosen = {n for n, _ in eligible}
    weights = {}
    if fraction < 1:
        if order == "seb":
            weights = seb_weights(ctx.spectrum, [n for n, _ in eligible], 0.5)
            ranked = sorted(eligible, key=lambda item: -weights[item[0]])
        else:
            ranked = sorted(eligible, key=lambda item: -item[1].weight.numel())
        budget = fraction * sum(m.weight.numel() for _, m in eligible)
        chosen, covered = set(), 0
        for name, module in ranked:
            if covered >= budget:
                break
            chosen.add(name)
            covered += module.weight.numel()
    plans = []
    for name, module in ctx.targets:
        if name in why:
            category = "grouped_conv" if why[name] == "grouped convolution" else "shape"
            plans.append(dense_entry(name, module, f"kept dense: {why[name]}", category))
        elif name not in chosen:
            plans.append(
                dense_entry(
                    name,
                    module,
                    f"kept dense: outside the {fraction:.0%} of weights taken in {order} order",
                    "not_chosen",
                )
            )
        else:
            mask = nm_mask(ctx.weight(name))
            note = f" (SEB w = {weights[name]:.3f})" if name in weights else ""
            plans.append(
                mask_entry(
                    name, module, mask, f"2:4 by magnitude along the input dim{note}", action="nm24"
                )
            )
    return plans
