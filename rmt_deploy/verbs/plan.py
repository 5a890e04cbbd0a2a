"""The plan verb: what a strategy does to each layer, given the data it plans on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ._lazy import made


@dataclass
class PlanRequest:
    """What to plan: `strategy` at `sparsity` with its own `settings`; `target` (deployments,
    device, batch) and `budget` for the strategies that time and validate plans."""

    strategy: str
    sparsity: float = 0.5
    name: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    target: Any = None  # strategies.Target
    budget: Any = None  # strategies.Budget


def plan_model(
    model: nn.Module, request: PlanRequest, *, train=None, calib=None, heldout=None, spectrum=None
):
    """The CompressionPlan for `model`. Strategies that train while planning get the training
    images `train`, the others the calibration images `calib` (each a dataset, a callable
    making one, or None; only the one used is made); `heldout` validates plans, `spectrum`
    spares a second MP analysis."""
    from ..strategies import needs_training, plan

    data = made(train) if needs_training(request.strategy) else made(calib)
    return plan(
        model,
        request.strategy,
        request.sparsity,
        data=data,
        spectrum=made(spectrum),
        name=request.name,
        config=dict(request.settings),
        heldout=made(heldout),
        budget=request.budget,
        target=request.target,
    )
