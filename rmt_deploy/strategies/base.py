"""Strategy registry and the helpers strategies share (targets, global pruning, plan entries)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..analysis import ModelSpectrum, analyze
from ..errors import RmtDeployError
from ..layers.sparsity import lowest_mask
from ..layers.views import LayerView
from ..plan import (  # noqa: F401  (the entry builders, re-exported for the strategies)
    LayerPlan,
    dense_entry,
    example_batch,
    factorized_entry,
    lowrank_entry,
    mask_entry,
    weight_params,
)

FilterFn = Callable[[nn.Module, str], bool]


class StrategyError(RmtDeployError):
    """Unknown strategy, bad setting, or a strategy that needs data run without it."""


@dataclass(frozen=True)
class Budget:
    """How far the compressed model may move from the dense one on held-out images: the most
    `metric` (top1, agreement, kl, cosine, a user's) may lose, with its 95 % upper bound."""

    max: float
    metric: Any = "top1"  # a metric name or a budget.BudgetMetric


@dataclass(frozen=True)
class Target:
    """Where the model will run: deployments (names, or "auto" for all this machine offers),
    the device and the batch size latency is measured at."""

    deployments: tuple[str, ...] | str = "auto"
    device: str = "cpu"
    batch: int = 8


@dataclass
class PlanContext:
    """Everything a strategy may read. `spectrum` is computed on first use.

    `targets` are (name, module) in model order; `views` say what each computes (the weight
    it really multiplies by, padding done in its forward): strategies score `weight(name)`."""

    model: nn.Module
    targets: list[tuple[str, nn.Module]]
    sparsity: float
    config: dict[str, Any]
    data: Dataset | None = None
    _spectrum: ModelSpectrum | None = None
    views: dict[str, LayerView] = field(default_factory=dict)
    heldout: Dataset | None = None  # images plans may be validated on (never the test part)
    budget: Budget | None = None
    target: Target = field(default_factory=lambda: Target())
    name: str = ""

    def weight(self, name: str) -> torch.Tensor:
        """The weight layer `name` computes with (its view's; the module's own without one)."""
        view = self.views.get(name)
        if view is not None:
            return view.weight
        return dict(self.targets)[name].weight.detach()

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
    fn: Callable[[PlanContext], Any]  # → layers | (layers, extra_state) | CompressionPlan
    needs_data: bool
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    # It trains while planning (labelled training images with augmentation, not calibration)
    needs_training: bool = False
    # A config dataclass whose fields are the settings (ranges checked by constructing it):
    # `fields` maps each setting to its field (a user-facing name may differ from the field's).
    config: type | None = None
    fields: dict[str, str] = field(default_factory=dict)
    # The ranges of settings without a config dataclass (`ranges.Range`/`Choice` by setting):
    # refused when the settings are checked — by `plan` and at config load — never inside.
    rules: dict[str, Any] = field(default_factory=dict)

    def settings_config(self, settings: dict[str, Any]) -> Any:
        """The config dataclass built from `settings` (the user's names): its checks run."""
        assert self.config is not None
        return self.config(**{self.fields[k]: v for k, v in settings.items()})


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(
    name: str,
    *,
    needs_data: bool = False,
    needs_training: bool = False,
    config: type | None = None,
    settings: dict[str, str] | None = None,
    rules: dict[str, Any] | None = None,
    **defaults: Any,
):
    """Decorator: `@register_strategy("seb")` adds a strategy under that name. With `config`
    (a dataclass), `settings` maps each setting's name to its field; the defaults are the
    fields' and a value out of a field's range is refused when the settings are checked.
    Without one, `rules` gives the settings' ranges (`ranges.Range` / `ranges.Choice`)."""

    def wrap(fn: Callable[[PlanContext], list[LayerPlan]]):
        doc = (fn.__doc__ or "").strip().splitlines()
        fields_ = dict(settings or {})
        if config is not None:
            made = {f.name: f.default for f in dataclasses.fields(config)}
            defaults.update({key: made[f] for key, f in fields_.items()})
        STRATEGIES[name] = Strategy(
            name, fn, needs_data or needs_training, dict(defaults), doc[0] if doc else "",
            needs_training, config, fields_, dict(rules or {}),
        )  # fmt: skip
        return fn

    return wrap


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
