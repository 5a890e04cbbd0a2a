"""Plain truncated SVD at one parameter share per layer: the data-free low-rank baseline.

Every layer keeps (1 − sparsity) of its parameters: rank r = ⌊(1 − s)·m·n / (m + n)⌋ rounded
down to `rank_multiple` (tensor-core and blocked kernels want multiples of 8/16). No spectrum
and no data: it is what the `lowrank` strategy's data-aware ranks are measured against, and
what timing a random-weight model needs (its spectrum is all noise, so RMT ranks mean nothing).
"""

from __future__ import annotations

from ..ranges import AT_LEAST_1
from .base import PlanContext, dense_entry, lowrank_entry, register_strategy


def uniform_rank(m: int, n: int, sparsity: float, multiple: int) -> int:
    """The largest multiple of `multiple` with r·(m + n) ≤ (1 − sparsity)·m·n (0 if none)."""
    return int((1 - sparsity) * m * n / (m + n)) // multiple * multiple


@register_strategy("svd", rules={"rank_multiple": AT_LEAST_1}, rank_multiple=16)
def svd(ctx: PlanContext):
    """Truncated SVD, every layer at the same parameter share (no data)."""
    multiple = int(ctx.config["rank_multiple"])
    plans = []
    for name, module in ctx.targets:
        view = ctx.views.get(name)
        if view is not None and view.groups != 1:
            plans.append(
                dense_entry(name, module, "kept dense: grouped convolution", "grouped_conv")
            )
            continue
        m, n = module.weight.shape[0], module.weight[0].numel()
        rank = uniform_rank(m, n, ctx.sparsity, multiple)
        if rank == 0:
            reason = f"kept dense: no rank multiple of {multiple} fits {1 - ctx.sparsity:.0%}"
            plans.append(dense_entry(name, module, reason, "break_even"))
            continue
        reason = f"truncated SVD at rank {rank} ({1 - ctx.sparsity:.0%} of parameters)"
        plans.append(lowrank_entry(name, module, rank, reason))
    return plans
