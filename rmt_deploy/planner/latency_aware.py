"""Latency-aware planning: per layer, the fastest form within an output-error budget.

The spectrum proposes, the data decides, the target's clock arbitrates:
- the MP fit gives each layer its edge rank (the spikes are signal: never cut below it);
- the whitened SVD on calibration activations gives, for every rank, the layer's relative
  output error, cross-validated on calibration images the fit did not see
  (`calibration.py`); a per-layer error budget ε fixes the rank each layer needs, rounded up
  to a multiple of 8 (CPU kernels block channels by 8/16; other ranks fall off the fast path);
- each candidate form (dense, rank r, and 2:4 on CUDA) is timed on the deployment backend
  at the layer's real input shape; a layer is factorized only where that is measurably
  faster than dense.
One global ε trades speed for fidelity. With a budget, a grid of ε is searched: each plan is
applied one-shot and compared with the dense model on held-out inputs by the budget's metric
(top-1 loss on labels, or agreement / KL / cosine against the dense outputs), and the fastest
plan whose loss is within the budget *with its 95 % upper bound* wins. When none is,
BudgetNotMetError carries the whole search and the all-dense fallback plan.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..analysis import analyze
from ..budget import BudgetMetric, Reference, check_metric, measure, model_outputs, resolve_metric
from ..calibration import (
    WhitenedFactors,
    collect_input_stats,
    output_error,
    rank_for_error,
    whitened_factors,
)
from ..compress import compress_
from ..errors import RmtDeployError
from ..layers import nm_mask, unfuse_attention_
from ..layers.semi_structured import semi_structured_incompatibility
from ..plan import CompressionPlan, LayerPlan
from ..strategies import example_batch
from ..strategies.base import dense_entry, factorized_entry, mask_entry
from ..targets import find_targets
from .layer_latency import LayerLatency, capture_input_shapes, median_ms, time_onnxruntime

ERROR_GRID = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15)


class BudgetNotMetError(RmtDeployError):
    """No compressed plan keeps the held-out loss within the budget. `fallback` is the plan
    that keeps every layer dense, each with the reason: what ships instead."""

    def __init__(self, message: str, report: LatencyPlanReport, fallback: CompressionPlan):
        super().__init__(message)
        self.report = report
        self.fallback = fallback


@dataclass
class Candidate:
    """One global setting tried: its plan's predicted latency and held-out loss."""

    layer_error: float
    lowrank_layers: int
    nm24_layers: int
    params_after: int
    predicted_ms: float
    predicted_speedup: float
    heldout_loss: float | None = None  # the budget metric against the dense model (mean)
    heldout_loss_se: float | None = None  # its standard error over the held-out inputs
    heldout_loss_upper: float | None = None  # one-sided 95 % upper bound: what must fit
    # top-1 % on the held-out images when they have labels (for the report)
    heldout_top1: float | None = None


@dataclass
class LayerChoice:
    """One layer's form at one setting: what it is, what it costs, why."""

    form: str  # dense | lowrank | nm24
    rank: int | None
    ms: float
    error: float = 0.0
    reason: str = ""
    category: str = ""  # for dense: why (grouped_conv, not_faster, above_break_even, …)
    trusted: bool = True  # False: the error estimate's folds disagreed (safe rank taken)


@dataclass
class LatencyPlanReport:
    backend: str
    device: str
    batch: int
    dense_model_ms: float
    budget_metric: str | None
    budget: float | None
    dense_heldout_top1: float | None
    chosen_layer_error: float | None
    heldout_images: int = 0
    candidates: list[Candidate] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)  # LayerTiming.to_dict() per layer
    calibration: list[dict] = field(default_factory=list)  # per layer: samples, trust, …

    def chosen(self) -> Candidate | None:
        for c in self.candidates:
            if c.layer_error == self.chosen_layer_error:
                return c
        return None

    def to_dict(self) -> dict:
        return asdict(self)


def _output_error_nm24(weight: torch.Tensor, cov: torch.Tensor) -> float:
    """Relative output error of the 2:4 magnitude mask."""
    return output_error(weight, weight * nm_mask(weight), cov)


def latency_plan(
    model: nn.Module,
    calib: Dataset,
    *,
    heldout: Dataset | None = None,
    backend: str = "onnxruntime",
    device: str = "cpu",
    batch: int = 1,
    layer_error: float | None = None,
    accuracy_budget: float | None = None,
    budget_metric: str | BudgetMetric = "top1",
    error_grid: tuple[float, ...] = ERROR_GRID,
    nm24: bool | None = None,
    min_gain: float = 0.05,
    calib_images: int = 512,
    rank_multiple: int = 8,
    runs: int = 30,
    filter_fn=None,
    name: str = "",
    progress: bool = True,
) -> tuple[CompressionPlan, LatencyPlanReport]:
    """Plan `model` for `backend` at `batch`: a fixed `layer_error`, or with `accuracy_budget`
    (the most `budget_metric` may lose on `heldout`) the fastest ε on `error_grid` within it."""
    metric: BudgetMetric | None = None
    if accuracy_budget is not None:
        if heldout is None:
            raise RmtDeployError("a budget needs held-out images to validate plans on")
        if accuracy_budget < 0:
            raise RmtDeployError(f"the budget must be ≥ 0, got {accuracy_budget}")
        metric = resolve_metric(budget_metric)
    grid = (
        sorted(error_grid)
        if accuracy_budget is not None
        else [0.02 if layer_error is None else layer_error]
    )
    if not grid or min(grid) <= 0:
        raise RmtDeployError("layer errors must be positive")
    on_gpu = backend == "torch" and device.startswith("cuda")
    nm24 = on_gpu if nm24 is None else nm24
    if nm24 and not on_gpu:
        raise RmtDeployError("2:4 candidates are timed with the torch backend on a CUDA device")
    LayerLatency.check_backend(backend, device)
    unfuse_attention_(model)
    example = example_batch(calib, batch)
    if example.shape[0] < batch:  # a tiny calibration set: repeat images to reach the batch
        example = example.repeat((batch + example.shape[0] - 1) // example.shape[0], 1, 1, 1)[
            :batch
        ]
    found = find_targets(model, filter_fn, example[:2])
    if not found.views:
        raise RmtDeployError("no Linear/Conv2d layer to plan (check the filter)")
    targets = dict(found.items())
    eligible = {n: v for n, v in found.views.items() if v.groups == 1}
    reference: Reference | None = None
    if metric is not None:
        outputs, labels = model_outputs(model, heldout)
        check_metric(metric, labels is not None, tuple(outputs.shape))
        reference = Reference(outputs, labels)
    loader = DataLoader(
        calib, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    spikes = {
        layer.name: layer.fit.n_spikes
        for layer in analyze(model, lambda m, q: q in eligible).layers
        if layer.fit
    }
    stats = collect_input_stats(model, eligible, loader, calib_images, progress=progress)
    factors: dict[str, WhitenedFactors] = {
        n: whitened_factors(v.weight, stats[n]) for n, v in eligible.items()
    }
    nm24_error = {
        n: _output_error_nm24(v.weight, stats[n].covariance())
        for n, v in eligible.items()
        if nm24 and v.kind == "linear" and semi_structured_incompatibility(v.module) is None
    }

    shapes = capture_input_shapes(model, targets, example)
    # On CUDA, time in the deployment precision (fp16; the sparse kernels need it anyway).
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    timer = LayerLatency(found.views, shapes, backend, device, dtype=dtype, runs=runs)
    if backend == "onnxruntime":
        dense_ms = time_onnxruntime(copy.deepcopy(model), tuple(example.shape), runs, timer.threads)
    else:
        on_device = copy.deepcopy(model).to(device, dtype).eval()
        x = example.to(device, dtype)
        with torch.inference_mode():
            dense_ms = median_ms(lambda: on_device(x), runs, cuda=device.startswith("cuda"))

    def rank_at(lname: str, eps: float) -> tuple[int, bool]:
        """The rank layer `lname` needs for error ≤ eps, and whether that estimate is trusted;
        an untrusted one moves to the safe rank where even its worst fold meets eps."""
        f = factors[lname]
        rank = rank_for_error(f.predicted, eps, spikes.get(lname, 0), rank_multiple)
        if f.trusted_at(rank):
            return rank, True
        worst = f.fold_worst if f.fold_worst is not None else f.predicted
        return max(rank, rank_for_error(worst, eps, spikes.get(lname, 0), rank_multiple)), False

    def choose(lname: str, eps: float) -> LayerChoice:
        base = timer.measure(lname, "dense")
        if lname not in factors:
            return LayerChoice("dense", None, base, reason="kept dense: grouped convolution",
                               category="grouped_conv")  # fmt: skip
        rank, trusted = rank_at(lname, eps)
        m, n = eligible[lname].matrix_shape
        error = float(factors[lname].predicted[rank])
        note = "" if trusted else " (estimate untrusted: folds disagree; safe rank)"
        best = LayerChoice(
            "dense",
            None,
            base,
            reason=f"kept dense: rank {rank} for error ≤ {eps:.3g} is above break-even{note}",
            category="above_break_even",
        )
        if rank * (m + n) < m * n:
            ms = timer.measure(lname, f"rank:{rank}")
            if ms < base * (1 - min_gain):
                best = LayerChoice(
                    "lowrank",
                    rank,
                    ms,
                    error,
                    f"rank {rank} (MP edge {spikes.get(lname, 0)}): output error {error:.3g} ≤ "
                    f"{eps:.3g} (cross-validated){note}; measured {ms:.4f} ms vs dense "
                    f"{base:.4f} ms on {backend}",
                    trusted=trusted,
                )
            else:
                best = LayerChoice(
                    "dense",
                    None,
                    base,
                    reason=f"kept dense: rank {rank} for error ≤ {eps:.3g} measured {ms:.4f} ms "
                    f"vs dense {base:.4f} ms (not {min_gain:.0%} faster){note}",
                    category="not_faster",
                )
        if lname in nm24_error and nm24_error[lname] <= eps:
            ms = timer.measure(lname, "nm24")
            if ms < min(best.ms, base * (1 - min_gain)):
                best = LayerChoice(
                    "nm24",
                    None,
                    ms,
                    nm24_error[lname],
                    f"2:4: output error {nm24_error[lname]:.3g} ≤ {eps:.3g}; measured "
                    f"{ms:.4f} ms vs dense {base:.4f} ms",
                )
        return best

    def build(eps: float, picks: dict[str, LayerChoice]) -> tuple[CompressionPlan, Candidate]:
        layers: list[LayerPlan] = []
        saved = 0.0
        for lname, module in targets.items():
            pick = picks[lname]
            base = timer.measure(lname, "dense")
            saved += base - pick.ms
            stats_ = {"dense_ms": base, "chosen_ms": pick.ms}
            if pick.form == "lowrank":
                stats_.update(
                    output_error=pick.error,
                    edge_rank=float(spikes.get(lname, 0)),
                    trusted=float(pick.trusted),
                )
                layers.append(
                    factorized_entry(lname, module, factors[lname], pick.rank, pick.reason, stats_)
                )
            elif pick.form == "nm24":
                mask = nm_mask(found.views[lname].weight)
                entry = mask_entry(lname, module, mask, pick.reason, "nm24")
                entry.stats.update(stats_)
                layers.append(entry)
            else:
                layers.append(dense_entry(lname, module, pick.reason, pick.category, **stats_))
        config = {
            "backend": backend,
            "device": device,
            "batch": batch,
            "layer_error": eps,
            "rank_multiple": rank_multiple,
        }
        plan = CompressionPlan("latency", config, layers, model=name, skipped=found.skipped)
        predicted = max(dense_ms - saved, 1e-6)
        summary = plan.summary()
        cand = Candidate(
            eps,
            summary["lowrank_layers"],
            summary["nm24_layers"],
            summary["params_after"],
            predicted,
            dense_ms / predicted,
        )
        return plan, cand

    report = LatencyPlanReport(
        backend,
        device,
        batch,
        dense_ms,
        metric.name if metric else None,
        accuracy_budget,
        None,
        None,
        heldout_images=len(heldout) if heldout is not None and metric else 0,
    )
    if reference is not None and reference.labels is not None:
        report.dense_heldout_top1 = _top1(reference.outputs, reference.labels)
    plans: dict[float, CompressionPlan] = {}
    untrusted: dict[str, list[float]] = {}
    for eps in tqdm(grid, desc="latency plan", unit="ε", disable=not progress):
        picks = {lname: choose(lname, eps) for lname in targets}
        for lname, pick in picks.items():
            if not pick.trusted:
                untrusted.setdefault(lname, []).append(eps)
        plans[eps], cand = build(eps, picks)
        if metric is not None and cand.lowrank_layers + cand.nm24_layers > 0:
            # One-shot, no BatchNorm re-estimation: the dense reference gets none either, and
            # the fine-tune that follows the search only recovers, so this bound is safe.
            trial = compress_(copy.deepcopy(model), plans[eps])
            outputs, _ = model_outputs(trial, heldout)
            loss = measure(metric, reference, outputs)
            cand.heldout_loss, cand.heldout_loss_se = loss.mean, loss.se
            cand.heldout_loss_upper = loss.upper
            if reference.labels is not None:
                cand.heldout_top1 = _top1(outputs, reference.labels)
        report.candidates.append(cand)
    report.layers = [timer.timing(n).to_dict() for n in targets]
    report.calibration = [
        {
            "name": n,
            "samples": f.samples,
            "inputs": f.dim,
            "shrinkage": round(f.shrinkage, 4),
            "images": stats[n].images,
            "untrusted_ranks": untrusted.get(n, []),
        }
        for n, f in factors.items()
    ]
    if metric is None:
        report.chosen_layer_error = grid[0]
        return plans[grid[0]], report
    # A plan fits when the upper bound of its loss does: the mean alone on a few hundred
    # images passes plans by luck (winner's curse over the grid).
    within = [
        c
        for c in report.candidates
        if c.heldout_loss_upper is not None and c.heldout_loss_upper <= accuracy_budget
    ]
    if not within:
        tried = [c for c in report.candidates if c.heldout_loss is not None]
        if not tried:
            why = (
                "no layer is measurably faster in a compressed form on "
                f"{backend} at batch {batch}: nothing to trade accuracy for"
            )
        else:
            best = min(tried, key=lambda c: c.heldout_loss_upper)
            why = (
                f"no plan keeps the held-out {metric.name} loss within {accuracy_budget}"
                f"{' ' + metric.unit if metric.unit else ''} (95 % upper bound): the best found "
                f"loses {best.heldout_loss:.3g} ± {best.heldout_loss_se:.2g} (layer error "
                f"{best.layer_error}, predicted ×{best.predicted_speedup:.2f})"
            )
        fallback = CompressionPlan(
            "latency",
            {"backend": backend, "device": device, "batch": batch, "outcome": "dense"},
            [
                dense_entry(lname, module, f"kept dense: {why}", "budget")
                for lname, module in targets.items()
            ],
            model=name,
            skipped=found.skipped,
        )
        raise BudgetNotMetError(why, report, fallback)
    chosen = min(within, key=lambda c: c.predicted_ms)
    report.chosen_layer_error = chosen.layer_error
    return plans[chosen.layer_error], report


def _top1(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((outputs.argmax(dim=1) == labels).float().mean())
