"""Data-aware low rank: whitened SVD (SVD-LLM) with ranks grown from the MP edge.

For a layer y = W x with input covariance C = E[x xᵀ] = S Sᵀ (Cholesky; conv inputs are the
im2col patches), the SVD of W S = U Σ Vᵀ gives the best rank-r layer for the *output*:
W ≈ U_r Σ_r V_rᵀ S⁻¹ with relative output error e(r) = Σ_{i>r} σ_i² / Σ σ_i², cross-validated
on calibration images the fit did not see (`calibration.py`). Each layer starts
at its MP-edge rank (the spikes) and grows to the smallest rank with e(r) ≤ ε; one global ε is
found by bisection so the targeted layers keep at most (1 − sparsity) of their parameters.
A layer whose rank would reach the break-even m·n/(m+n) stays dense.
"""

from __future__ import annotations

from ..calibration import collect_input_stats, rank_for_error, whitened_factors
from ..plan import LayerPlan
from ..ranges import AT_LEAST_1
from .base import PlanContext, dense_entry, factorized_entry, register_strategy


@register_strategy(
    "lowrank",
    needs_data=True,
    rules=dict.fromkeys(("calib_images", "batch_size", "rank_multiple"), AT_LEAST_1),
    calib_images=512,
    batch_size=64,
    rank_multiple=1,
)
def lowrank(ctx: PlanContext):
    """Whitened-SVD factorization, ranks grown from the MP edge against output error."""
    cfg = ctx.config
    fits = {layer.name: layer.fit for layer in ctx.spectrum.layers}
    eligible = {n: v for n, v in ctx.views.items() if v.groups == 1}
    stats = collect_input_stats(
        ctx.model, eligible, ctx.loader(int(cfg["batch_size"])), int(cfg["calib_images"])
    )
    factors, plans_fixed = {}, {}
    for name, module in ctx.targets:
        if name not in eligible:
            plans_fixed[name] = dense_entry(
                name, module, "kept dense: grouped convolution", "grouped_conv"
            )
            continue
        factors[name] = whitened_factors(eligible[name].weight, stats[name])

    multiple = max(1, int(cfg["rank_multiple"]))

    def rank_for(name: str, eps: float) -> int:
        fit = fits.get(name)
        return rank_for_error(factors[name].predicted, eps, fit.n_spikes if fit else 0, multiple)

    shapes = {n: v.matrix_shape for n, v in eligible.items()}

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
        errors = factors[name].predicted
        rank = rank_for(name, eps)
        fit = fits.get(name)
        spikes = fit.n_spikes if fit is not None else 0
        stats_ = {"output_error": float(errors[rank]), "edge_rank": float(spikes)}
        m, n = shapes[name]
        if rank * (m + n) >= m * n:
            plans.append(
                dense_entry(
                    name,
                    module,
                    f"kept dense: rank {rank} needed for output error ≤ {eps:.3g} "
                    f"is above break-even {m * n / (m + n):.1f}",
                    "above_break_even",
                    edge_rank=float(spikes),
                )
            )
            continue
        reason = (
            f"rank {rank} (MP edge: {spikes} spikes) for relative output error "
            f"{float(errors[rank]):.3g} ≤ {eps:.3g} (cross-validated on calibration data)"
        )
        plans.append(factorized_entry(name, module, factors[name], rank, reason, stats_))
    if not met:
        for p in plans:
            p.reason += " [budget not reachable: even edge ranks exceed it]"
    return plans
