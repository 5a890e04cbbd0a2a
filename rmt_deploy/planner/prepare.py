"""The search's view of the model, computed once: the layers to plan, their spectra (the MP
edge is each low-rank option's floor), input statistics and whitened factors on calibration
images, and what turns an allocation into a CompressionPlan."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..analysis import analyze
from ..calibration import WhitenedFactors, collect_input_stats, output_error, whitened_factors
from ..deploy import DEPLOYMENTS, Deployment
from ..devices import resolve_device
from ..errors import RmtDeployError
from ..layers import nm_mask
from ..layers.semi_structured import semi_structured_incompatibility
from ..plan import CompressionPlan, LayerPlan, dense_entry, factorized_entry, mask_entry
from ..targets import Targets, find_targets
from .allocate import Allocation
from .config import SearchConfig
from .layer_table import LayerEntry, LayerOption, layer_options
from .timing import capture_input_shapes


@dataclass
class PreparedModel:
    """The layers a search plans (`found`; `eligible`: those with compressed options), their
    rank floors (`spikes`), whitened factors and input statistics, the SEB prior, and the
    input shape each layer sees at the planned batch."""

    found: Targets
    factors: dict[str, WhitenedFactors]
    stats: dict
    spikes: dict[str, int]
    shapes: dict[str, tuple]
    prior: dict[str, float] = field(default_factory=dict)
    name: str = ""

    @property
    def targets(self) -> dict[str, nn.Module]:
        return dict(self.found.items())

    def calibration_record(self) -> list[dict]:
        return [
            {
                "name": n,
                "samples": f.samples,
                "inputs": f.dim,
                "shrinkage": round(f.shrinkage, 4),
                "images": self.stats[n].images,
            }
            for n, f in self.factors.items()
        ]

    def entries(self, deployment: Deployment, config: SearchConfig, nm24: bool) -> list:
        """Each layer's options for a deployment's table (not yet timed)."""
        return [
            self._entry(name, view, deployment, config, nm24)
            for name, view in self.found.views.items()
        ]

    def _entry(self, lname, view, deployment, config, nm24) -> LayerEntry:
        m, n = view.matrix_shape
        shape = list(self.shapes[lname])
        if lname not in self.factors:
            dense = [LayerOption("dense", params=m * n)]
            return LayerEntry(lname, view.kind, shape, [m, n], 0, dense, note="grouped convolution")
        nm24_error = None
        if (
            nm24
            and deployment.device == "cuda"
            and view.kind == "linear"
            and semi_structured_incompatibility(view.module) is None
        ):
            nm24_error = output_error(
                view.weight, view.weight * nm_mask(view.weight), self.stats[lname].covariance()
            )
        spikes = self.spikes.get(lname, 0)
        options = layer_options(view, self.factors[lname], spikes, config.rank_multiple, nm24_error)
        return LayerEntry(lname, view.kind, shape, [m, n], spikes, options)

    def plan(
        self,
        allocation: Allocation | None,
        label: str,
        deployment: str | None,
        config: SearchConfig,
        dense_times: dict[str, float],
        category: str = "budget",
    ) -> CompressionPlan:
        """The CompressionPlan of an allocation (None: every layer dense, `label` the reason and
        `category` its class: budget or not_faster; grouped convolutions are counted as such)."""
        layers = [
            self._layer(lname, module, allocation, label, deployment, dense_times, category)
            for lname, module in self.found.items()
        ]
        spec = DEPLOYMENTS[deployment] if deployment else None
        plan_config = {
            "deployment": deployment,
            "batch": config.batch,
            "rank_multiple": config.rank_multiple,
            "engine": label,
            "runtime": spec.runtime if spec else None,
            "precision": spec.precision if spec else None,
        }
        if allocation is None:
            plan_config["outcome"] = "dense"
        return CompressionPlan(
            "latency", plan_config, layers, model=self.name, skipped=self.found.skipped
        )

    def _layer(self, lname, module, allocation, label, deployment, dense_times, category):
        option = allocation.choices.get(lname) if allocation else None
        dense_ms = dense_times.get(lname) or 0.0
        if option is None or option.form == "dense":
            if lname not in self.factors:
                reason, why = "kept dense: grouped convolution", "grouped_conv"
            elif allocation is None:
                reason, why = f"kept dense: {label}", category
            else:
                reason, why = "kept dense: no option saves latency within the budget", "not_chosen"
            return dense_entry(lname, module, reason, why, dense_ms=dense_ms)
        stats = {
            "chosen_ms": option.ms or 0.0,
            "dense_ms": dense_ms,
            "output_error": option.error,
            "trusted": float(option.trusted),
        }
        if option.form == "lowrank":
            reason = (
                f"rank {option.rank}: output error {option.error:.3g} (cross-validated"
                f"{'' if option.trusted else ', untrusted: safe rank'}); measured "
                f"{option.ms:.4f} ms vs dense {dense_ms:.4f} ms in context on {deployment}"
            )
            return factorized_entry(lname, module, self.factors[lname], option.rank, reason, stats)
        mask = nm_mask(self.found.views[lname].weight)
        entry: LayerPlan = mask_entry(
            lname, module, mask, f"2:4: output error {option.error:.3g}", "nm24"
        )
        entry.stats.update(stats)
        return entry


def prepare_model(
    model: nn.Module,
    calib: Dataset,
    example: torch.Tensor,
    config: SearchConfig,
    filter_fn=None,
    name: str = "",
    progress: bool = True,
) -> PreparedModel:
    """Find the layers, fit their spectra (the MP edge as the rank floor unless
    `edge_floor` is off) and whiten each on calibration images, on the search's device."""
    found = find_targets(model, filter_fn, example[:2])
    if not found.views:
        raise RmtDeployError("no Linear/Conv2d layer to plan (check the filter)")
    eligible = {n: v for n, v in found.views.items() if v.groups == 1}
    spectrum = analyze(model, lambda m, q: q in eligible)
    # The MP edge is the rank floor (the spikes are signal); without it every rank is open.
    spikes = {
        layer.name: layer.fit.n_spikes if config.edge_floor else 0
        for layer in spectrum.layers
        if layer.fit
    }
    prior = {}
    if config.sensitivity_prior == "seb":  # SEB's weights: the layers it prunes harder cost less
        from ..scores import seb_weights

        prior = seb_weights(spectrum, list(eligible), 0.5)
    loader = DataLoader(
        calib, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    stats = collect_input_stats(
        model,
        eligible,
        loader,
        config.calib_images,
        progress=progress,
        device=compute_device(config),
    )
    factors = {n: whitened_factors(v.weight, stats[n]) for n, v in eligible.items()}
    model.cpu()
    shapes = capture_input_shapes(model, dict(found.items()), example)
    return PreparedModel(found, factors, stats, spikes, shapes, prior, name)


def compute_device(config: SearchConfig) -> torch.device:
    """Calibration, sensitivities and PyTorch validation run on the search's device; exports
    from the CPU."""
    return resolve_device("cpu" if config.device.startswith("cpu") else config.device)
