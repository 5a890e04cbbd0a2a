"""The latency-aware search's settings, declared once with their ranges: the strategy registry
derives its settings from these fields, and a bad value is refused when the config is read,
naming the setting, before any stage runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..budget import BudgetMetric
from ..errors import RmtDeployError


class SearchConfigError(RmtDeployError):
    """A search setting out of its range, of the wrong type, or unknown."""


def _at_least(low: float, *, integer: bool = False, optional: bool = False, above: bool = False):
    """Field metadata: the lowest value allowed (exclusive with `above`); None allowed when
    `optional` (the setting is off)."""
    return {"low": low, "integer": integer, "optional": optional, "above": above}


@dataclass
class SearchConfig:
    """How the planner searches. `targets`: deployment names or "auto" (`backend` is the
    single-deployment spelling); with `accuracy_budget` the fastest measured engine within it
    ships; without, every layer takes its fastest option within `layer_error` (default 0.02)."""

    targets: list[str] | str | None = None
    backend: str | None = None
    device: str = "cpu"
    batch: int = field(default=8, metadata=_at_least(1, integer=True))
    layer_error: float | None = field(
        default=None, metadata=_at_least(0, optional=True, above=True)
    )
    accuracy_budget: float | None = field(default=None, metadata=_at_least(0, optional=True))
    budget_metric: str | BudgetMetric = "top1"
    # × over the best dense baseline: the least damaging plan predicted to reach it
    latency_target: float | None = field(
        default=None, metadata=_at_least(0, optional=True, above=True)
    )
    nm24: bool | None = None  # 2:4 options (default: on a CUDA deployment)
    min_gain: float = field(default=0.02, metadata=_at_least(0))
    # a plan must beat the best dense deployment by this, head to head (95 % lower bound)
    min_speedup: float = field(default=1.03, metadata=_at_least(1))
    # plan only for deployments whose dense model is within this factor of the fastest
    plan_within: float = field(default=1.5, metadata=_at_least(1))
    calib_images: int = field(default=512, metadata=_at_least(1, integer=True))
    sensitivity_images: int = field(default=32, metadata=_at_least(1, integer=True))
    rank_multiple: int = field(default=8, metadata=_at_least(1, integer=True))
    finalists: int = field(default=2, metadata=_at_least(1, integer=True))  # per deployment
    rounds: int = field(default=5, metadata=_at_least(1, integer=True))
    runs: int = field(default=10, metadata=_at_least(1, integer=True))
    table: str | Path | None = None  # per-layer tables and timings to reuse (or write)
    edge_floor: bool = True  # ranks never below the MP edge (the spikes)
    sensitivity_prior: str = "none"  # none | seb: SEB's layer weights divide sensitivities
    refine: bool = True  # measure each layer's sensitivity on calibration images

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.metadata:
                _check_range(f.name, getattr(self, f.name), f.metadata)
        for name in ("edge_floor", "refine"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise SearchConfigError(f"{name} must be true or false, got {value!r}")
        if self.sensitivity_prior not in ("none", "seb"):
            raise SearchConfigError(
                f"the sensitivity prior (prior) is none or seb, got {self.sensitivity_prior!r}"
            )
        if self.targets is None:
            self.targets = [self.backend] if self.backend else "auto"

    @property
    def fixed(self) -> bool:
        """No budget: every layer at its fastest option within the per-layer error."""
        return self.accuracy_budget is None

    @property
    def error_per_layer(self) -> float:
        return 0.02 if self.layer_error is None else self.layer_error


def _check_range(name: str, value: Any, rule: dict) -> None:
    if value is None and rule["optional"]:
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or (rule["integer"] and not float(value).is_integer()):
        kind = "a whole number" if rule["integer"] else "a number"
        raise SearchConfigError(f"{name} must be {kind}, got {value!r}")
    low, above = rule["low"], rule["above"]
    if not math.isfinite(value) or value < low or (above and value == low):
        bound = f"> {low:g}" if above else f"≥ {low:g}"
        raise SearchConfigError(f"{name} must be {bound}, got {value!r}")

