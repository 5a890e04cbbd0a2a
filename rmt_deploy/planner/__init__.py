"""Latency-aware planning: the fastest deployment within a budget, measured on this machine —
baselines in every runtime and precision, per-layer tables timed in context, a dynamic program
over them, and the finalists timed whole."""

from .allocate import Allocation, allocate, refine_sensitivity
from .latency_aware import (
    BudgetNotMetError,
    Candidate,
    Engine,
    LatencyPlanReport,
    latency_plan,
)
from .layer_table import LayerEntry, LayerOption, LayerTable, TableMismatchError
from .timing import capture_input_shapes

__all__ = [
    "Allocation",
    "BudgetNotMetError",
    "Candidate",
    "Engine",
    "LatencyPlanReport",
    "LayerEntry",
    "LayerOption",
    "LayerTable",
    "TableMismatchError",
    "allocate",
    "capture_input_shapes",
    "latency_plan",
    "refine_sensitivity",
]
