"""The latency-aware planner as a strategy: the fastest deployment within the budget, measured
on this machine (`rmt_deploy/planner/`). Its search report rides on the plan (`plan.search`)."""

from __future__ import annotations

from .base import PlanContext, StrategyError, register_strategy


@register_strategy(
    "latency",
    needs_data=True,
    layer_error=0.0,  # > 0: no budget search, every layer at this per-layer error
    rank_multiple=8,
    finalists=2,  # per deployment, timed whole
    latency_target=0.0,  # > 0: the least damaging plan predicted this much faster
    min_speedup=1.03,  # a plan must beat the best dense deployment by this, measured
    plan_within=1.5,  # plan only for deployments whose dense model is within this of the best
    rounds=5,
    runs=10,
    sensitivity_images=32,
    calib_images=512,
    table="",  # a JSON file of per-layer tables and timings to reuse (or write)
    edge_floor=True,  # ranks never below the MP edge (the spikes)
    prior="none",  # none | seb: SEB's layer weights divide the sensitivities
    refine=True,  # measure each layer's sensitivity on calibration images
)
def latency(ctx: PlanContext):
    """Fastest measured engine within budget: per-layer tables, a DP, finalists timed whole."""
    from ..planner import latency_plan

    cfg = ctx.config
    if ctx.budget is None and not cfg["layer_error"] > 0:
        raise StrategyError("strategy latency needs a budget, or the setting layer_error > 0")
    plan, report = latency_plan(
        ctx.model,
        ctx.data,
        heldout=ctx.heldout,
        targets=ctx.target.deployments,
        device=ctx.target.device,
        batch=ctx.target.batch,
        accuracy_budget=ctx.budget.max if ctx.budget else None,
        budget_metric=ctx.budget.metric if ctx.budget else "top1",
        layer_error=cfg["layer_error"] or None,
        latency_target=cfg["latency_target"] or None,
        calib_images=int(cfg["calib_images"]),
        sensitivity_images=int(cfg["sensitivity_images"]),
        rank_multiple=max(1, int(cfg["rank_multiple"])),
        finalists=max(1, int(cfg["finalists"])),
        min_speedup=float(cfg["min_speedup"]),
        plan_within=float(cfg["plan_within"]),
        rounds=max(1, int(cfg["rounds"])),
        runs=max(1, int(cfg["runs"])),
        table=cfg["table"] or None,
        edge_floor=bool(cfg["edge_floor"]),
        sensitivity_prior=str(cfg["prior"]),
        refine=bool(cfg["refine"]),
        filter_fn=lambda m, fqn: fqn in ctx.views,
        name=ctx.name,
    )
    plan.search = report
    return plan
