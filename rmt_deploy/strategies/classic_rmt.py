"""Classic RMT pruning as the seed does it (arXiv 2503.01922; yspennstate/RMT_pruning_ViT,
src/pruning.py, src/SplittableLayers.py, src/training.py).

Cycles i = 1, 2, … each do, per layer:
1. fit the MP law to W (BEMA): the edge σ₊, the fit's L∞ gap and the share of singular values
   below σ₊;
2. on even cycles, sparsify the singular vectors: W = U S Vᵀ, and with θ = 750·1.5e-8·t_i·M·N
   (t_i the cycle's removal target, M×N the layer) zero the entries of U[:, k] and V[k, :]
   below θ·(1 − s_k/σ₊)³⁰ for directions below the edge, and below θ/750 for every direction,
   then recompose (the seed splits the layer into √S·Vᵀ then U·√S where that saves parameters;
   with its ratio 1 it never does, and neither does this);
3. prune coefficients: a threshold rising from 1e-5·i in steps of 2e-5 zeroes |w| below
   4·((1 − L∞)·share)^(1.5/i)·p and below 3·p until ((1 − L∞)·share)^(1.5/i)·t_i of the layer's
   non-zeros are gone;
then regularized training with the zeros frozen: group lasso s_ℓ/1e6·‖θ‖₂ with
s_ℓ = 1/(1 + 1e4·L∞_ℓ/i), L1 5e-7, L2 2e-7, gradients scaled by s_ℓ, AdamW at 5e-8 — the seed
runs it on the regularizer alone; `data_steps` adds cross-entropy on training images.
t_i = 0.06·1.02^i (the seed's schedule, 34 cycles). Cycles stop at the target sparsity.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import compress_
from ..layers.sparsity import lowest_mask
from ..plan import CompressionPlan, LayerPlan
from ..ranges import AT_LEAST_1, BELOW_1, Range
from ..spectral.fit import MatrixTooSmallError, MPFit, fit_mp_spectrum, singular_values
from .base import PlanContext, StrategyError, mask_entry, register_strategy

SEED_STEPS, SEED_LR = 5000, 5e-8  # its first cycle's regularizer steps (then +1000 a cycle)


def sparsify_singular_vectors(weight: torch.Tensor, edge: float, theta: float) -> torch.Tensor:
    """W recomposed after zeroing small entries of its singular vectors (step 2 above)."""
    matrix = weight.detach().reshape(weight.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    floor = theta / 750
    below = (1 - s / edge).clamp_min(0) ** 30
    thresholds = torch.where(
        s < edge, theta * torch.clamp(below, min=1 / 750), torch.full_like(s, floor)
    )
    u = u * (u.abs() >= thresholds[None, :])
    vh = vh * (vh.abs() >= thresholds[:, None])
    return ((u * s) @ vh).to(weight.dtype).reshape(weight.shape)


def removal_factor(gof: float, share: float, cycle: int) -> float:
    """((1 − L∞)·share)^(1.5/i): how much of the cycle's target a layer takes (seed)."""
    return max(0.0, (1 - gof) * share) ** (1.5 / cycle)


def ladder_threshold(weight: torch.Tensor, remove: int, factor: float, cycle: int) -> float:
    """The seed's rising threshold: p from 1e-5·i in steps of 2e-5, zeroing |w| below
    max(4·factor, 3)·p, until at least `remove` non-zeros are gone. Returns the threshold."""
    values = weight.detach().abs().flatten()
    values = values[values > 0].sort().values
    if remove <= 0 or values.numel() == 0:
        return 0.0
    kth = float(values[min(remove, values.numel()) - 1])
    scale = max(4 * factor, 3.0)
    start, step = 1e-5 * cycle, 2e-5
    steps = max(0, math.ceil((kth / scale - start) / step + 1e-12))
    p = start + steps * step
    while p * scale <= kth:  # float rounding: the first p that removes the k-th entry
        p += step
    return p * scale


def _exact_counts(counts_wanted: dict[str, float], needed: int) -> dict[str, int]:
    """Split `needed` removals over the layers in proportion to their cycle targets (largest
    remainders first), so that the total is exact."""
    wanted = sum(counts_wanted.values())
    shares = {n: needed * count / wanted for n, count in counts_wanted.items()}
    counts = {n: int(math.floor(v)) for n, v in shares.items()}
    order = sorted(shares, key=lambda n: shares[n] - counts[n], reverse=True)
    for name in order[: needed - sum(counts.values())]:
        counts[name] += 1
    return counts


def cycle_target(cycle: int, base: float = 0.06, growth: float = 1.02) -> float:
    """The seed's removal target for cycle i: 6 % × 1.02^i of the layer's non-zeros."""
    return base * growth**cycle


def _regularize(model: nn.Module, names: list[str], scales: dict[str, float], cfg, data):
    """The seed's regularized training step between cycles, zeros frozen (masked layers)."""
    steps = int(cfg["reg_steps"]) + int(cfg["data_steps"])
    if steps == 0:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(cfg["reg_lr"]), weight_decay=float(cfg["l2"]))
    batches = None
    if int(cfg["data_steps"]):
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=int(cfg["batch_size"]),
            shuffle=True,
            generator=torch.Generator().manual_seed(int(cfg["_cycle"])),
        )
        batches = iter(loader)
    model.train()
    for step in range(steps):
        loss = torch.zeros(())
        for name in names:
            w = model.get_submodule(name).masked_weight()
            # A layer without an MP fit has no s_ℓ: no group lasso, gradients unscaled (the seed
            # fits every layer it trains; freezing the unfitted ones would be our invention).
            loss = loss + scales.get(name, 0.0) / 1e6 * w.norm()
            loss = loss + float(cfg["l1"]) * w.abs().sum() + float(cfg["l2"]) * w.pow(2).sum()
        if batches is not None and step >= int(cfg["reg_steps"]):
            try:
                images, labels = next(batches)
            except StopIteration:
                break
            loss = loss + F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for name in names:  # gradients scaled by s_ℓ, as the seed's training does
            for p in model.get_submodule(name).parameters(recurse=False):
                if p.grad is not None:
                    p.grad.mul_(scales.get(name, 1.0))
        opt.step()
    model.eval()


@register_strategy(
    "classic_rmt",
    rules={
        "cycles": Range(1, 1000, integer=True),
        "reg_lr": BELOW_1,
        "l1": BELOW_1,
        "l2": BELOW_1,
        "batch_size": AT_LEAST_1,
    },
    cycles=34,  # the most cycles (the seed's range(1, 35)); they stop at the target
    reg_steps=100,  # regularizer steps per cycle (the seed: 5000, then +1000 each cycle)
    reg_lr=SEED_LR,
    l1=5e-7,
    l2=2e-7,
    data_steps=0,  # cross-entropy steps per cycle on the training images (the seed: 0)
    batch_size=64,
    alpha=0.25,
    beta=0.8,
    gof_cutoff=1.0,  # the seed prunes layers whose L∞ is below this (1: every layer)
)
def classic_rmt(ctx: PlanContext):
    """The seed's cycles: MP fit, singular-vector sparsifying, coefficient pruning, regularizing."""
    cfg = ctx.config
    cycles = _checked_cycles(ctx)
    model = _masked_copy(ctx)
    names = [n for n, _ in ctx.targets]
    total = sum(model.get_submodule(n).weight.numel() for n in names)
    goal = int(round(ctx.sparsity * total))
    history = []
    for cycle in range(1, cycles + 1):
        removed = _zeros(model, names)
        if removed >= goal:
            break
        cuts = _cycle_cuts(model, names, cfg, cycle)
        _prune_cycle(model, cuts, cycle, goal - removed)
        scales = {n: 1.0 / (1.0 + 1e4 * cut.fit.gof / cycle) for n, cut in cuts.items()}
        _regularize(model, names, scales, {**cfg, "_cycle": cycle}, ctx.data)
        history.append(f"{cycle}:{_zeros(model, names) / total:.3f}")
    removed = _zeros(model, names)
    if removed < goal:
        raise StrategyError(
            f"classic_rmt reached sparsity {removed / total:.3f} in {cycles} cycles, short of "
            f"{ctx.sparsity}: raise the cycles setting"
        )
    return _mask_entries(ctx, model, history), _kept_state(ctx, model, names)


def _checked_cycles(ctx: PlanContext) -> int:
    """The settings the seed's schedule cannot run with, refused before any work; returns
    the number of cycles."""
    cfg = ctx.config
    cycles = int(cfg["cycles"])
    if int(cfg["data_steps"]) and ctx.data is None:
        raise StrategyError("classic_rmt data_steps > 0 needs training images (--data)")
    return cycles


def _masked_copy(ctx: PlanContext) -> nn.Module:
    """A copy of the model whose target layers are masked layers with all-ones masks, so that
    every zero the cycles make stays frozen through the regularizer."""
    model = copy.deepcopy(ctx.model).eval()
    ones = CompressionPlan(
        "classic_rmt",
        {},
        [mask_entry(n, m, torch.ones_like(m.weight), "") for n, m in ctx.targets],
    )
    compress_(model, ones)
    return model


def _zeros(model: nn.Module, names: list[str]) -> int:
    """Entries masked to zero so far over the target layers: the cycles' progress."""
    return sum(int((model.get_submodule(n).weight_mask == 0).sum()) for n in names)


@dataclass
class _LayerCut:
    """One layer's part in a cycle: its MP fit, its removal factor and the non-zeros it would
    remove at the cycle's full target."""

    fit: MPFit
    factor: float
    count: float


def _cycle_cuts(
    model: nn.Module, names: list[str], cfg: dict[str, Any], cycle: int
) -> dict[str, _LayerCut]:
    """Step 1 for every layer: the layers the MP law fits (below the gof cutoff) and what
    each would remove; the others sit this cycle out."""
    target = cycle_target(cycle)
    cuts = {}
    for name in names:
        w = model.get_submodule(name).masked_weight().detach()
        fit = _fit(w, cfg)
        if fit is None or fit.gof >= float(cfg["gof_cutoff"]):
            continue
        nonzero = int((w != 0).sum())
        factor = removal_factor(fit.gof, fit.noise_fraction, cycle)
        cuts[name] = _LayerCut(fit, factor, factor * target * nonzero)
    return cuts


def _fit(w: torch.Tensor, cfg: dict[str, Any]) -> MPFit | None:
    """The BEMA fit of the weight as a matrix, or None where it is too small to fit."""
    matrix = w.reshape(w.shape[0], -1)
    try:
        return fit_mp_spectrum(
            singular_values(matrix),
            tuple(matrix.shape),
            float(cfg["alpha"]),
            float(cfg["beta"]),
        )
    except MatrixTooSmallError:
        return None  # no MP fit: the seed's BEMA fails too; the layer is left as is


def _prune_cycle(model: nn.Module, cuts: dict[str, _LayerCut], cycle: int, needed: int) -> None:
    """Steps 2 and 3 on every fitted layer; `needed` removals reach the target sparsity."""
    wanted = sum(cut.count for cut in cuts.values())
    # Departure: the last cycle is scaled so that the target sparsity is met exactly (the
    # seed runs a fixed number of cycles); strategies are compared at equal sparsity.
    scale = min(1.0, needed / wanted) if wanted > 0 else 0.0
    exact = None
    if scale < 1:
        exact = _exact_counts({n: cut.count for n, cut in cuts.items()}, needed)
    target = cycle_target(cycle)
    for name, cut in cuts.items():
        count = None if exact is None else exact[name]
        _prune_layer(model.get_submodule(name), cut, cycle, target, count)


@torch.no_grad()
def _prune_layer(
    module: nn.Module, cut: _LayerCut, cycle: int, target: float, exact: int | None
) -> None:
    """One layer's cycle: on even cycles sparsify its singular vectors, then zero by the
    seed's ladder, or, on the last cycle, exactly `exact` more of its smallest entries."""
    if cycle % 2 == 0:
        theta = 750 * 1.5e-8 * target * module.weight[0].numel() * module.weight.shape[0]
        dense = sparsify_singular_vectors(module.masked_weight(), cut.fit.singular_edge, theta)
        # Departure: earlier zeros stay zero (the seed's recomposition can revive
        # them; its training then treats them as free weights).
        module.weight.copy_(dense * module.weight_mask)
    w = module.masked_weight()
    if exact is None:
        threshold = ladder_threshold(w, int(math.ceil(cut.count)), cut.factor, cycle)
        keep = w.abs() >= threshold
    else:  # the last cycle: exactly the entries the target sparsity still needs
        scores = torch.where(w != 0, w.abs(), torch.full_like(w, -1.0))
        zeros = int((w == 0).sum())
        keep = ~lowest_mask(scores, zeros + exact)
    module.weight_mask.mul_(keep.to(module.weight_mask.dtype))
    module.fold_()


def _mask_entries(ctx: PlanContext, model: nn.Module, history: list[str]) -> list[LayerPlan]:
    """The plan: each target layer's final mask and pruned weight, with the last cycles'
    sparsities as the reason."""
    trail = " ".join(history[-4:])
    reason = f"classic RMT, {len(history)} cycles (sparsity by cycle … {trail})"
    entries = []
    for name, module in ctx.targets:
        pruned = model.get_submodule(name)
        entries.append(
            mask_entry(
                name,
                module,
                pruned.weight_mask.detach().clone(),
                reason,
                weight=pruned.weight.detach().clone(),
            )
        )
    return entries


def _kept_state(ctx: PlanContext, model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The rest of the trained state (biases, norms) under the original model's keys; the
    target weights travel in the plan's entries instead."""
    targets = {f"{n}.{k}" for n in names for k in ("weight", "weight_mask")}
    original = ctx.model.state_dict()
    return {k: v for k, v in model.state_dict().items() if k not in targets and k in original}
