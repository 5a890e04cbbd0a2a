"""The latency-aware planner as a strategy: the fastest deployment within the budget, measured
on this machine (`rmt_deploy/planner/`). Its settings are the search config's fields, declared
once there with their ranges; its search report rides on the plan (`plan.search`)."""

from __future__ import annotations

import dataclasses

from ..planner.config import SearchConfig
from .base import PlanContext, StrategyError, register_strategy

# Each setting and the SearchConfig field it sets (the target, batch and budget come from the
# run's target and budget, not from settings).
SETTINGS = {
    "layer_error": "layer_error",  # set: no budget search, every layer at this per-layer error
    "rank_multiple": "rank_multiple",
    "finalists": "finalists",  # per deployment, timed whole
    "latency_target": "latency_target",  # set: the least damaging plan predicted this fast
    "min_speedup": "min_speedup",  # a plan must beat the best dense deployment by this
    "plan_within": "plan_within",  # plan only for deployments within this of the best dense
    "rounds": "rounds",
    "runs": "runs",
    "sensitivity_images": "sensitivity_images",
    "calib_images": "calib_images",
    "table": "table",  # a JSON file of per-layer tables and timings to reuse (or write)
    "edge_floor": "edge_floor",  # ranks never below the MP edge (the spikes)
    "prior": "sensitivity_prior",  # none | seb: SEB's layer weights divide the sensitivities
    "refine": "refine",  # measure each layer's sensitivity on calibration images
}


@register_strategy("latency", needs_data=True, config=SearchConfig, settings=SETTINGS)
def latency(ctx: PlanContext):
    """Fastest measured engine within budget: per-layer tables, a DP, finalists timed whole."""
    from ..planner import latency_plan

    cfg = ctx.config
    if ctx.budget is None and cfg["layer_error"] is None:
        raise StrategyError("strategy latency needs a budget, or the setting layer_error")
    config = SearchConfig(
        targets=ctx.target.deployments,
        device=ctx.target.device,
        batch=ctx.target.batch,
        accuracy_budget=ctx.budget.max if ctx.budget else None,
        budget_metric=ctx.budget.metric if ctx.budget else "top1",
    )
    config = dataclasses.replace(config, **{SETTINGS[k]: cfg[k] for k in SETTINGS})
    if not config.table:  # "" as "no table", as before settings could be null
        config.table = None
    plan, report = latency_plan(
        ctx.model,
        ctx.data,
        heldout=ctx.heldout,
        config=config,
        filter_fn=lambda m, fqn: fqn in ctx.views,
        name=ctx.name,
    )
    plan.search = report
    return plan
