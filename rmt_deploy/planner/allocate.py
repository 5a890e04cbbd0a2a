"""Per-layer allocation: which option each layer takes, for the most latency saved at a given
predicted damage — a multiple-choice knapsack solved by dynamic programming (SPDY, Frantar &
Alistarh 2022: per-layer latency tables, sensitivities learned on calibration data, a DP over
them; HALP, Shen et al. 2022: latency–saliency knapsack).

A layer's damage is its predicted relative output error (whitened SVD, cross-validated) times
its *sensitivity*: how much of that error reaches the model's output. The sensitivity is
measured once per layer on calibration images — the layer alone in its middle option, the
relative squared error of the final output divided by the layer's own predicted error — so
a layer the rest of the network amplifies costs more than one it smooths away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..layers.views import LayerView
from ..surgery import replace_module
from .layer_table import LayerEntry, LayerOption

COST_BINS = 2000


@torch.inference_mode()
def _outputs(model: nn.Module, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat(
        [
            model(images[i : i + batch].to(device)).float().cpu()
            for i in range(0, len(images), batch)
        ]
    )


def relative_output_error(reference: torch.Tensor, outputs: torch.Tensor) -> float:
    """‖y − y_dense‖² / ‖y_dense‖² over all outputs."""
    return float(((outputs - reference) ** 2).sum() / (reference**2).sum().clamp_min(1e-30))


def probe_option(entry: LayerEntry) -> LayerOption | None:
    """The option a layer's sensitivity is measured at: the low-rank one nearest 2 % error."""
    lowrank = [o for o in entry.options if o.form == "lowrank"]
    if not lowrank:
        return None
    return min(lowrank, key=lambda o: abs(np.log(max(o.error, 1e-6) / 0.02)))


def refine_sensitivity(
    model: nn.Module,
    entries: list[LayerEntry],
    views: dict[str, LayerView],
    factors: dict,
    images: torch.Tensor,
    progress: bool = False,
) -> None:
    """Set each entry's sensitivity (in place): output error per unit of layer error, from
    the layer alone at its probe rank on `images` (calibration images)."""
    from ..layers import lowrank_from_view
    from ..progress import tqdm

    model.eval()
    reference = _outputs(model, images)
    for entry in tqdm(entries, desc="sensitivity", unit="layer", disable=not progress):
        option = probe_option(entry)
        if option is None:
            continue
        view = views[entry.name]
        left, right = factors[entry.name].factors(option.rank, view.weight.dtype)
        original = replace_module(model, entry.name, lowrank_from_view(view, left, right))
        try:
            damage = relative_output_error(reference, _outputs(model, images))
        finally:
            replace_module(model, entry.name, original)
        entry.sensitivity = damage / max(option.error, 1e-9)


@dataclass
class Allocation:
    """One layer-to-option assignment and what the table predicts for it."""

    choices: dict[str, LayerOption]
    saving_ms: float  # Σ (dense − option) latency in context
    damage: float  # Σ sensitivity × layer error: predicted relative output error

    def key(self) -> tuple:
        return tuple(sorted((n, o.key) for n, o in self.choices.items()))


def allocate(entries: list[LayerEntry], caps: list[float], min_gain: float = 0.0) -> list:
    """For each damage cap, the options that save the most latency within it (DP over the
    layers, damage discretized into COST_BINS bins up to the largest cap). An option is only
    a candidate where it is faster than dense by more than `min_gain` of the dense time."""
    caps = sorted(caps)
    unit = caps[-1] / COST_BINS
    layers: list[tuple[LayerEntry, list[tuple[LayerOption, int, float]]]] = []
    for entry in entries:
        dense = entry.dense
        items = [(dense, 0, 0.0)]
        for option in entry.options[1:]:
            saving = (dense.ms or 0.0) - (option.ms or np.inf)
            if saving <= min_gain * (dense.ms or 0.0) or entry.sensitivity is None:
                continue
            cost = int(np.ceil(entry.sensitivity * option.error / unit))
            if cost <= COST_BINS:
                items.append((option, cost, saving))
        layers.append((entry, items))
    best = np.zeros(COST_BINS + 1)  # best[c]: most saving with damage ≤ c·unit
    picks = []
    for _entry, items in layers:
        candidates = np.full((len(items), COST_BINS + 1), -np.inf)
        for i, (_option, cost, saving) in enumerate(items):
            candidates[i, cost:] = best[: COST_BINS + 1 - cost] + saving
        choice = candidates.argmax(axis=0)
        best = candidates.max(axis=0)
        picks.append(choice)
    allocations, seen = [], set()
    for cap in caps:
        budget = int(cap / unit)
        choices, saving, damage = {}, 0.0, 0.0
        for (entry, items), choice in zip(reversed(layers), reversed(picks), strict=True):
            option, cost, gain = items[int(choice[budget])]
            choices[entry.name] = option
            saving += gain
            damage += (entry.sensitivity or 0.0) * option.error
            budget -= cost
        allocation = Allocation(dict(reversed(list(choices.items()))), saving, damage)
        if allocation.key() not in seen:
            seen.add(allocation.key())
            allocations.append(allocation)
    return allocations


# Damage caps (predicted relative output error of the whole model) the DP is solved for.
DAMAGE_CAPS = tuple(1e-5 * 2**k for k in range(18))


def candidate_allocations(
    entries: list[LayerEntry], sensitivities: dict, prior: dict[str, float], min_gain: float
) -> list[Allocation]:
    """The search's allocation phase: each layer's sensitivity (measured, divided by its SEB
    prior when there is one) set on its entry, the DP solved at every damage cap, and the
    allocations that compress at least one layer, by growing damage."""
    for entry in entries:
        raw = sensitivities.get(entry.name)
        entry.sensitivity = None if raw is None else raw / prior.get(entry.name, 1.0)
    return [
        a
        for a in allocate(entries, list(DAMAGE_CAPS), min_gain)
        if any(o.form != "dense" for o in a.choices.values())
    ]
