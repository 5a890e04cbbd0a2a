"""Latency-aware planning: measure each layer's forms on the target, pick the fastest within
an error budget, search the global setting against an accuracy budget."""

from .latency_aware import (
    ERROR_GRID,
    BudgetNotMetError,
    Candidate,
    LatencyPlanReport,
    latency_plan,
)
from .layer_latency import LayerLatency, LayerTiming, capture_input_shapes

__all__ = [
    "ERROR_GRID",
    "BudgetNotMetError",
    "Candidate",
    "LatencyPlanReport",
    "LayerLatency",
    "LayerTiming",
    "capture_input_shapes",
    "latency_plan",
]
