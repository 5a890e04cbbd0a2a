"""Latency-aware planning: the fastest deployment within a budget, measured on this machine —
baselines in every runtime and precision, per-layer tables timed in context, a dynamic program
over them, and the finalists timed whole (`search.LatencySearch`, phase by phase)."""

from .allocate import DAMAGE_CAPS, Allocation, allocate, candidate_allocations, refine_sensitivity
from .config import SearchConfig, SearchConfigError
from .latency_aware import latency_plan
from .layer_table import LayerEntry, LayerOption, LayerTable, TableMismatchError
from .results import BudgetNotMetError, Candidate, Engine, LatencyPlanReport
from .search import LatencySearch
from .timing import capture_input_shapes

__all__ = [
    "DAMAGE_CAPS",
    "Allocation",
    "BudgetNotMetError",
    "Candidate",
    "Engine",
    "LatencyPlanReport",
    "LatencySearch",
    "LayerEntry",
    "LayerOption",
    "LayerTable",
    "SearchConfig",
    "SearchConfigError",
    "TableMismatchError",
    "allocate",
    "candidate_allocations",
    "capture_input_shapes",
    "latency_plan",
    "refine_sensitivity",
]
