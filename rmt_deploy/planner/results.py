"""What the latency-aware search found, as typed records: each candidate allocation, each
whole engine timed (baselines and finalists), and the report that carries them to the plan
stage, the run report and `planner.md`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import RmtDeployError
from ..plan import CompressionPlan


class BudgetNotMetError(RmtDeployError):
    """No compressed plan keeps the held-out loss within the budget. `fallback` is the plan
    that keeps every layer dense, each with the reason: what ships instead."""

    def __init__(self, message: str, report: LatencyPlanReport, fallback: CompressionPlan):
        super().__init__(message)
        self.report = report
        self.fallback = fallback

    def __reduce__(self):  # it crosses process boundaries (the plan stage runs in its own)
        return (type(self), (str(self), self.report, self.fallback))


@dataclass
class Candidate:
    """One allocation on one deployment: what the table predicts and what validation says."""

    deployment: str
    damage_cap: float
    lowrank_layers: int
    nm24_layers: int
    params_after: int
    damage: float  # predicted relative output error of the whole model
    predicted_ms: float  # the table's saving, scaled by the deployment's probe calibration
    predicted_speedup: float  # against the dense model on the same deployment
    table_ms: float | None = None  # the table's saving as it is (uncalibrated)
    heldout_loss: float | None = None
    heldout_loss_se: float | None = None
    heldout_loss_upper: float | None = None
    heldout_top1: float | None = None
    layer_error: float | None = None  # fixed-ε plans only


@dataclass
class Engine:
    """A whole model on a deployment, timed interleaved with the others: a baseline (dense) or
    a finalist (a validated plan)."""

    label: str
    deployment: str
    candidate: int | None  # index into the report's candidates; None: the dense model
    predicted_ms: float | None = None
    measured_ms: float | None = None
    q1_ms: float | None = None
    q3_ms: float | None = None
    heldout_loss: float | None = None
    heldout_loss_se: float | None = None
    heldout_loss_upper: float | None = None
    within_budget: bool = True
    note: str = ""
    # Head to head against the best dense engine: SpeedupEstimate.to_dict() + "against".
    confirmed: dict | None = None

    def confirms(self, min_speedup: float) -> bool:
        return self.confirmed is not None and self.confirmed["low"] >= min_speedup


@dataclass
class LatencyPlanReport:
    deployments: list[str]
    skipped_deployments: dict[str, str]
    batch: int
    budget_metric: str | None
    budget: float | None
    dense_heldout_top1: float | None = None
    heldout_images: int = 0
    latency_target: float | None = None
    baselines: list[Engine] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    finalists: list[Engine] = field(default_factory=list)
    chosen: str | None = None  # the label of the engine that ships
    chosen_deployment: str | None = None
    outcome: str = "compressed"  # or why the dense model ships
    calibration: list[dict] = field(default_factory=list)
    # INT8: the recipe chosen (and every recipe's output error), the layers kept in float, each
    # step of the mixed-precision search, and each layer's measured effect.
    int8_recipe: dict = field(default_factory=dict)
    int8_float_nodes: list[str] = field(default_factory=list)
    int8_mixed: list[dict] = field(default_factory=list)
    int8_effects: dict = field(default_factory=lambda: {"layers": []})
    # NNCF's model, when the default one was over budget: made by its accuracy control
    nncf_accuracy_control: str = ""
    nncf_max_drop: float | None = None
    # Per deployment: the probe's predicted and measured share of the dense time, and κ.
    calibrations: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # The per-layer tables and whole-model timings (what `table=` reuses); not in to_dict.
    tables: dict = field(default_factory=dict, repr=False, compare=False)

    def engine(self, label: str | None) -> Engine | None:
        for e in [*self.baselines, *self.finalists]:
            if e.label == label:
                return e
        return None

    def best_baseline(self) -> Engine | None:
        within = [e for e in self.baselines if e.within_budget and e.measured_ms is not None]
        return min(within, key=lambda e: e.measured_ms) if within else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("tables")
        return data

    def whole_key(self, engine: Engine) -> str:
        """The key of an engine's whole-model timing in the saved table: dense models by
        deployment, plans by deployment, damage cap and size (stable across replans)."""
        if engine.candidate is None:
            return f"dense|{engine.deployment}"
        cand = self.candidates[engine.candidate]
        return f"{engine.deployment}|{cand.damage_cap:.3e}|{cand.params_after}"
