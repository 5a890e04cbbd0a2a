"""The latency-aware planner: the fastest engine within a budget, measured on this machine.

1. **Baselines.** The dense model is exported once and measured in every deployment this
   machine offers (ONNX Runtime fp32 and INT8, OpenVINO at its default and f32, bf16 and INT8
   where it can), interleaved; each is validated on the held-out images — INT8 can cost more
   than the budget, and then the layers whose quantization hurts most stay in float.
2. **The spectrum proposes, the data decides.** Every Linear/Conv2d-like layer gets options:
   dense and a few ranks (never below the MP edge, multiples of 8, below break-even), each
   with its output error cross-validated on calibration images (`calibration.py`) and a
   sensitivity measured on calibration images (`allocate.py`).
3. **The target's clock arbitrates.** Each option is timed on each deployment that keeps the
   budget, in context (`layer_table.py`); a dynamic program picks per layer the options that
   save the most latency for each level of predicted damage.
4. **Validated, then timed whole.** The allocations are validated one-shot on the held-out
   images (the budget's metric, with its 95 % upper bound); the fastest predicted ones within
   budget are exported and timed as whole models, interleaved with the dense baselines over
   repeated rounds. The fastest *measured* engine within budget wins — dense, if no plan beats
   the best dense deployment by `min_speedup` with 95 % confidence, timed head to head.

Predictions are the per-layer table's savings scaled by one factor per deployment, measured
on a whole-model probe (the most aggressive allocation): layers timed in small graphs do not
add up to the whole model, and by how much depends on the runtime (OpenVINO's whole-graph
compilation saves less than its small graphs promise).
"""

from __future__ import annotations

from dataclasses import fields

from torch import nn
from torch.utils.data import Dataset

from ..plan import CompressionPlan
from .config import SearchConfig, SearchConfigError
from .results import LatencyPlanReport
from .search import LatencySearch


def latency_plan(
    model: nn.Module,
    calib: Dataset,
    *,
    heldout: Dataset | None = None,
    config: SearchConfig | None = None,
    filter_fn=None,
    name: str = "",
    progress: bool = True,
    **settings,
) -> tuple[CompressionPlan, LatencyPlanReport]:
    """Plan `model` for the fastest deployment within budget: `config` (or its fields as
    keyword `settings`, see `SearchConfig`) says how. With `accuracy_budget` (the most
    `budget_metric` may lose on `heldout`) the fastest measured engine within it is chosen;
    without, every layer takes its fastest option with error ≤ `layer_error` on the first
    target. Raises BudgetNotMetError (carrying the dense plan) when the dense model ships."""
    if config is None:
        known = {f.name for f in fields(SearchConfig)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise SearchConfigError(
                f"no search setting {', '.join(unknown)} (settings: {', '.join(sorted(known))})"
            )
        config = SearchConfig(**settings)
    elif settings:
        raise SearchConfigError("give the search settings as a SearchConfig or as keywords")
    return LatencySearch(model, calib, heldout, config, filter_fn, name, progress).run()
