"""Strategy registry and the helpers strategies share (targets, global pruning, plan entries)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..analysis import ModelSpectrum, analyze
from ..errors import RmtDeployError
from ..layers.sparsity import lowest_mask
from ..plan import LayerPlan

FilterFn = Callable[[nn.Module, str], bool]


class StrategyError(RmtDeployError):
    """Unknown strategy, bad setting, or a strategy that needs data run without it."""


@dataclass
class PlanContext:
    """Everything a strategy may read. `spectrum` is computed on first use."""

    model: nn.Module
    targets: list[tuple[str, nn.Module]]
    sparsity: float
    config: dict[str, Any]
    data: Dataset | None = None
    _spectrum: ModelSpectrum | None = None

    @property
    def spectrum(self) -> ModelSpectrum:
        if self._spectrum is None:
            names = {name for name, _ in self.targets}
            self._spectrum = analyze(self.model, lambda m, fqn: fqn in names)
        return self._spectrum

    def loader(self, batch_size: int, shuffle: bool = True, seed: int = 0) -> DataLoader:
        assert self.data is not None
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            self.data,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=1,
            drop_last=False,
        )


@dataclass(frozen=True)
class Strategy:
    name: str
    fn: Callable[[PlanContext], list[LayerPlan]]
    needs_data: bool
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str, *, needs_data: bool = False, **defaults: Any):
    """Decorator: `@register_strategy("seb")` adds a strategy under that name."""

    def wrap(fn: Callable[[PlanContext], list[LayerPlan]]):
        doc = (fn.__doc__ or "").strip().splitlines()
        STRATEGIES[name] = Strategy(name, fn, needs_data, dict(defaults), doc[0] if doc else "")
        return fn

    return wrap


def prunable_layers(
    model: nn.Module, filter_fn: FilterFn | None = None
) -> list[tuple[str, nn.Module]]:
    """Linear and Conv2d layers (the kinds the compressed layers replace), after the filter."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if type(module) in (nn.Linear, nn.Conv2d) and (filter_fn is None or filter_fn(module, name))
    ]


def weight_params(module: nn.Module) -> int:
    return module.weight.numel()


def dense_entry(name: str, module: nn.Module, reason: str, **stats: float) -> LayerPlan:
    n = weight_params(module)
    return LayerPlan(name, "dense", tuple(module.weight.shape), n, n, reason=reason, stats=stats)


def mask_entry(
    name: str,
    module: nn.Module,
    mask: torch.Tensor,
    reason: str,
    action: str = "mask",
    **extra: torch.Tensor,
) -> LayerPlan:
    kept = int(mask.sum())
    return LayerPlan(
        name,
        action,
        tuple(module.weight.shape),
        weight_params(module),
        kept,
        density=kept / mask.numel(),
        reason=reason,
        payload={"mask": mask, **extra},
    )


def global_masks(
    weights: dict[str, torch.Tensor], layer_scale: dict[str, float], sparsity: float
) -> dict[str, torch.Tensor]:
    """Prune globally by |W_ij| / w_ℓ: the `sparsity` share of all entries with the lowest score.

    Ties at the threshold are broken by position so the count is exact.
    """
    scores = torch.cat([(w.abs() / layer_scale[n]).flatten().float() for n, w in weights.items()])
    keep = (~lowest_mask(scores, int(round(sparsity * scores.numel())))).float()
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start : start + w.numel()].reshape(w.shape)
        start += w.numel()
    return masks
