"""Latency-aware planning: per layer, the fastest form within an output-error budget.

The spectrum proposes, the data decides, the target's clock arbitrates:
- the MP fit gives each layer its edge rank (the spikes are signal: never cut below it);
- the whitened SVD on calibration activations gives, for every rank, the layer's relative
  output error, so a per-layer error budget ε fixes the rank each layer needs;
- each candidate form (dense, rank r, and 2:4 on CUDA) is timed on the deployment backend
  at the layer's real input shape; a layer is factorized only where that is measurably
  faster than dense.
One global ε trades speed for accuracy. With an accuracy budget, a grid of ε is searched:
each plan is applied, evaluated on held-out images, and the fastest plan whose top-1 loss
stays within the budget wins. Predicted end-to-end latency = measured dense model latency
minus the per-layer savings; the pipeline reports it beside the measured speedup.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..analysis import analyze
from ..compress import compress_
from ..errors import RmtDeployError
from ..evaluate import evaluate
from ..layers import nm_mask
from ..layers.semi_structured import semi_structured_incompatibility
from ..plan import CompressionPlan, LayerPlan
from ..strategies.base import dense_entry, mask_entry, prunable_layers
from ..strategies.lowrank import (
    factorized_entry,
    input_covariances,
    rank_for_error,
    whitened_factors,
)
from .layer_latency import LayerLatency, capture_input_shapes, median_ms, time_onnxruntime

ERROR_GRID = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15)


class BudgetNotMetError(RmtDeployError):
    """No compressed plan keeps the held-out top-1 loss within the accuracy budget."""

    def __init__(self, message: str, report: LatencyPlanReport):
        super().__init__(message)
        self.report = report


@dataclass
class Candidate:
    """One global setting tried: its plan's predicted latency and held-out accuracy."""

    layer_error: float
    lowrank_layers: int
    nm24_layers: int
    params_after: int
    predicted_ms: float
    predicted_speedup: float
    heldout_top1: float | None = None
    drop_pp: float | None = None


@dataclass
class LatencyPlanReport:
    backend: str
    device: str
    batch: int
    dense_model_ms: float
    accuracy_budget: float | None
    dense_heldout_top1: float | None
    chosen_layer_error: float | None
    candidates: list[Candidate] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)  # LayerTiming.to_dict() per layer

    def chosen(self) -> Candidate | None:
        for c in self.candidates:
            if c.layer_error == self.chosen_layer_error:
                return c
        return None

    def to_dict(self) -> dict:
        return asdict(self)


def _output_error_nm24(weight: torch.Tensor, cov: torch.Tensor) -> float:
    """Relative output error of the 2:4 magnitude mask: tr(ΔW C ΔWᵀ) / tr(W C Wᵀ)."""
    w = weight.detach().reshape(weight.shape[0], -1).double()
    delta = w * (1 - nm_mask(weight.detach()).reshape(w.shape).double())
    return float(((delta @ cov) * delta).sum() / ((w @ cov) * w).sum().clamp_min(1e-30))


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
    error_grid: tuple[float, ...] = ERROR_GRID,
    nm24: bool | None = None,
    min_gain: float = 0.05,
    calib_images: int = 512,
    runs: int = 30,
    filter_fn=None,
    name: str = "",
    progress: bool = True,
) -> tuple[CompressionPlan, LatencyPlanReport]:
    """Plan `model` for `backend` at `batch`: a fixed `layer_error`, or with
    `accuracy_budget` (pp of top-1 on `heldout`) the fastest ε on `error_grid` within it."""
    if accuracy_budget is not None:
        if heldout is None:
            raise RmtDeployError("an accuracy budget needs held-out images to validate plans on")
        if accuracy_budget < 0:
            raise RmtDeployError(f"the accuracy budget must be ≥ 0 pp, got {accuracy_budget}")
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
    targets = dict(prunable_layers(model, filter_fn))
    if not targets:
        raise RmtDeployError("no Linear/Conv2d layer to plan (check the filter)")
    eligible = {n: m for n, m in targets.items() if getattr(m, "groups", 1) == 1}
    loader = DataLoader(
        calib, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    spikes = {
        layer.name: layer.fit.n_spikes
        for layer in analyze(model, lambda m, q: q in eligible).layers
        if layer.fit
    }
    covs = input_covariances(model, eligible, loader, calib_images, progress=progress)
    factors = {n: whitened_factors(m.weight, covs[n]) for n, m in eligible.items()}
    nm24_error = {
        n: _output_error_nm24(m.weight, covs[n])
        for n, m in eligible.items()
        if nm24 and isinstance(m, nn.Linear) and semi_structured_incompatibility(m) is None
    }

    example = torch.stack([calib[i][0] for i in range(min(batch, len(calib)))])
    if example.shape[0] < batch:  # a tiny calibration set: repeat images to reach the batch
        example = example.repeat((batch + example.shape[0] - 1) // example.shape[0], 1, 1, 1)[
            :batch
        ]
    shapes = capture_input_shapes(model, targets, example)
    # On CUDA, time in the deployment precision (fp16; the sparse kernels need it anyway).
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    timer = LayerLatency(targets, shapes, backend, device, dtype=dtype, runs=runs)
    if backend == "onnxruntime":
        dense_ms = time_onnxruntime(copy.deepcopy(model), tuple(example.shape), runs, timer.threads)
    else:
        on_device = copy.deepcopy(model).to(device, dtype).eval()
        x = example.to(device, dtype)
        with torch.inference_mode():
            dense_ms = median_ms(lambda: on_device(x), runs, cuda=device.startswith("cuda"))

    def choose(eps: float) -> dict[str, tuple[str, int | None, float]]:
        """layer → (form, rank, predicted ms) at per-layer error budget eps."""
        picks = {}
        for lname, module in targets.items():
            base = timer.measure(lname, "dense")
            best = ("dense", None, base)
            if lname in factors:
                rank = rank_for_error(factors[lname][3], eps, spikes.get(lname, 0))
                m, n = module.weight.shape[0], module.weight[0].numel()
                if rank * (m + n) < m * n:
                    ms = timer.measure(lname, f"rank:{rank}")
                    if ms < base * (1 - min_gain):
                        best = ("lowrank", rank, ms)
            if lname in nm24_error and nm24_error[lname] <= eps:
                ms = timer.measure(lname, "nm24")
                if ms < min(best[2], base * (1 - min_gain)):
                    best = ("nm24", None, ms)
            picks[lname] = best
        return picks

    def candidate(eps: float, picks) -> Candidate:
        saved = sum(timer.measure(n, "dense") - ms for n, (_, _, ms) in picks.items())
        predicted = max(dense_ms - saved, 1e-6)
        after = 0
        for n, (form, rank, _) in picks.items():
            m, k = targets[n].weight.shape[0], targets[n].weight[0].numel()
            after += (
                rank * (m + k) if form == "lowrank" else (m * k // 2 if form == "nm24" else m * k)
            )
        return Candidate(
            eps,
            sum(f == "lowrank" for f, _, _ in picks.values()),
            sum(f == "nm24" for f, _, _ in picks.values()),
            after,
            predicted,
            dense_ms / predicted,
        )

    def build(eps: float, picks) -> CompressionPlan:
        layers: list[LayerPlan] = []
        for lname, module in targets.items():
            form, rank, ms = picks[lname]
            base = timer.measure(lname, "dense")
            stats = {"dense_ms": base, "chosen_ms": ms}
            if form == "lowrank":
                err = float(factors[lname][3][rank])
                stats.update(output_error=err, edge_rank=float(spikes.get(lname, 0)))
                reason = (
                    f"rank {rank} (MP edge {spikes.get(lname, 0)}): output error {err:.3g} ≤ "
                    f"{eps:.3g}; measured {ms:.4f} ms vs dense {base:.4f} ms on {backend}"
                )
                layers.append(factorized_entry(lname, module, factors[lname], rank, reason, stats))
            elif form == "nm24":
                reason = (
                    f"2:4: output error {nm24_error[lname]:.3g} ≤ {eps:.3g}; measured {ms:.4f} ms "
                    f"vs dense {base:.4f} ms"
                )
                entry = mask_entry(lname, module, nm_mask(module.weight.detach()), reason, "nm24")
                entry.stats.update(stats)
                layers.append(entry)
            else:
                layers.append(dense_entry(lname, module, _dense_reason(lname, eps), **stats))
        config = {"backend": backend, "device": device, "batch": batch, "layer_error": eps}
        return CompressionPlan("latency", config, layers, model=name)

    def _dense_reason(lname: str, eps: float) -> str:
        if lname not in factors:
            return "kept dense: grouped convolution"
        rank = rank_for_error(factors[lname][3], eps, spikes.get(lname, 0))
        measured = timer.cached(lname, f"rank:{rank}")
        if measured is not None:
            return (
                f"kept dense: rank {rank} for error ≤ {eps:.3g} measured {measured:.4f} ms vs "
                f"dense {timer.measure(lname, 'dense'):.4f} ms (not {min_gain:.0%} faster)"
            )
        return f"kept dense: rank {rank} for error ≤ {eps:.3g} is above break-even"

    report = LatencyPlanReport(backend, device, batch, dense_ms, accuracy_budget, None, None)
    dense_top1 = None
    if accuracy_budget is not None:
        dense_top1 = evaluate(model, heldout, progress=False).top1
        report.dense_heldout_top1 = dense_top1
    plans: dict[float, CompressionPlan] = {}
    for eps in tqdm(grid, desc="latency plan", unit="ε", disable=not progress):
        picks = choose(eps)
        cand = candidate(eps, picks)
        plans[eps] = build(eps, picks)
        if accuracy_budget is not None and cand.lowrank_layers + cand.nm24_layers > 0:
            # One-shot, no BatchNorm re-estimation: the dense reference gets none either, and
            # the fine-tune that follows the search only recovers, so this bound is safe.
            trial = compress_(copy.deepcopy(model), plans[eps])
            cand.heldout_top1 = evaluate(trial, heldout, progress=False).top1
            cand.drop_pp = dense_top1 - cand.heldout_top1
        report.candidates.append(cand)
    report.layers = [timer.timing(n).to_dict() for n in targets]
    if accuracy_budget is None:
        report.chosen_layer_error = grid[0]
        return plans[grid[0]], report
    within = [
        c for c in report.candidates if c.drop_pp is not None and c.drop_pp <= accuracy_budget
    ]
    if not within:
        tried = [c for c in report.candidates if c.drop_pp is not None]
        if not tried:
            raise BudgetNotMetError(
                "no layer is measurably faster in a compressed form on "
                f"{backend} at batch {batch}: nothing to trade accuracy for",
                report,
            )
        best = min(tried, key=lambda c: c.drop_pp)
        raise BudgetNotMetError(
            f"no plan keeps the held-out top-1 loss within {accuracy_budget} pp: the best found "
            f"loses {best.drop_pp:.2f} pp (layer error {best.layer_error}, predicted "
            f"×{best.predicted_speedup:.2f}); raise the budget or fine-tune first",
            report,
        )
    chosen = min(within, key=lambda c: c.predicted_ms)
    report.chosen_layer_error = chosen.layer_error
    return plans[chosen.layer_error], report
