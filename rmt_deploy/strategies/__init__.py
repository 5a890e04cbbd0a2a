"""plan(model, strategy=...): the registry of compression strategies, one file each."""

from __future__ import annotations

import typing
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..analysis import ModelSpectrum
from ..errors import RmtDeployError
from ..layers.attention import unfuse_attention_
from ..plan import CompressionPlan
from ..targets import find_targets
from . import (  # noqa: F401  (registry)
    channels,
    classic_rmt,
    hybrid,
    latency,
    lowrank,
    magnitude,
    nm24,
    seb,
    ser,
    svd,
)
from .base import (
    STRATEGIES,
    Budget,
    FilterFn,
    PlanContext,
    StrategyError,
    Target,
    example_batch,
)

__all__ = [
    "STRATEGIES",
    "needs_training",
    "Budget",
    "StrategyError",
    "Target",
    "check_settings",
    "example_batch",
    "plan",
]


def plan(
    model: nn.Module,
    strategy: str = "seb",
    sparsity: float = 0.5,
    *,
    data: Dataset | None = None,
    spectrum: ModelSpectrum | None = None,
    filter_fn: FilterFn | None = None,
    name: str = "",
    config: dict[str, Any] | None = None,
    example: torch.Tensor | None = None,
    heldout: Dataset | None = None,
    budget: Budget | None = None,
    target: Target | None = None,
    **settings: Any,
) -> CompressionPlan:
    """Decide, per Linear/Conv2d layer, dense | low-rank r | mask at density d | 2:4, with reasons.

    `sparsity` is the share of the targeted layers' weights to remove (for `lowrank`, the
    share of their parameters; `nm24` is 2:4 wherever a layer can take it). `data` is a
    labelled training/calibration dataset for the strategies that need one; with it (or
    `example`, an input batch) every layer's view is checked against its own forward.
    `heldout`, `budget` and `target` are for the strategies that validate and time plans
    (`latency`: the fastest deployment within the budget).
    nn.MultiheadAttention modules are unfused in place first (same outputs) so that their
    projections can be planned; modules no compressed form fits are listed in `plan.skipped`.
    """
    if strategy not in STRATEGIES:
        raise StrategyError(
            f"unknown strategy {strategy!r}; available: {', '.join(sorted(STRATEGIES))}"
        )
    spec = STRATEGIES[strategy]
    if not isinstance(sparsity, int | float) or not 0.0 <= sparsity < 1.0:
        raise StrategyError(f"sparsity must lie in [0, 1), got {sparsity!r}")
    config = check_settings(strategy, {**(config or {}), **settings})
    if spec.needs_data and data is None:
        raise StrategyError(f"strategy {strategy!r} needs training/calibration data (--data)")
    unfuse_attention_(model)
    if example is None and data is not None:
        example = example_batch(data)
    found = find_targets(model, filter_fn, example)
    if not found.views:
        why = "; ".join(f"{s.name}: {s.reason}" for s in found.skipped[:3])
        raise StrategyError(
            "no Linear/Conv2d layer to compress" + (f" ({why})" if why else " (check filter_fn)")
        )
    ctx = PlanContext(
        model,
        found.items(),
        float(sparsity),
        {**spec.defaults, **config},
        data,
        spectrum,
        views=found.views,
        heldout=heldout,
        budget=budget,
        target=target or Target(),
        name=name,
    )
    produced = spec.fn(ctx)
    if isinstance(produced, CompressionPlan):  # a strategy that builds the whole plan
        return produced
    layers, extra_state = produced if isinstance(produced, tuple) else (produced, {})
    return CompressionPlan(
        strategy,
        {"sparsity": float(sparsity), **ctx.config},
        layers,
        name,
        extra_state,
        skipped=found.skipped,
    )


def needs_training(strategy: str) -> bool:
    """Whether `strategy` trains while planning: it gets the training images, not calibration."""
    return strategy in STRATEGIES and STRATEGIES[strategy].needs_training


def check_settings(strategy: str, settings: dict[str, Any], ranges: bool = True) -> dict[str, Any]:
    """`settings` brought to the types of the strategy's defaults and (with `ranges`) checked
    against its rules, or a StrategyError naming the unknown, mistyped or out-of-range one and
    what is allowed."""
    spec = STRATEGIES[strategy]
    unknown = set(settings) - set(spec.defaults)
    if unknown:
        allowed = ", ".join(sorted(spec.defaults)) or "none"
        raise StrategyError(
            f"strategy {strategy!r} has no setting {', '.join(sorted(unknown))} "
            f"(settings: {allowed})"
        )
    if spec.config is not None:
        return _config_settings(strategy, settings)
    coerced = {
        key: _coerce(strategy, key, value, spec.defaults[key]) for key, value in settings.items()
    }
    for key, value in coerced.items() if ranges else ():
        rule = spec.rules.get(key)
        if rule is not None and value is not None and not rule.holds(value):
            raise StrategyError(f"{strategy} {rule.message(key, value)}")
    return coerced


def _config_settings(strategy: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Settings of a strategy with a config dataclass: each brought to its field's type (None
    where the field is optional: the setting is off), then the dataclass built, so a value
    out of range is refused here, naming the setting, before any stage runs."""
    spec = STRATEGIES[strategy]
    hints = typing.get_type_hints(spec.config)
    coerced = {}
    for key, value in settings.items():
        kinds = typing.get_args(hints[spec.fields[key]]) or (hints[spec.fields[key]],)
        if value is None and type(None) in kinds:
            coerced[key] = None
            continue
        base = next(k for k in kinds if k in (bool, int, float, str))
        coerced[key] = _coerce(strategy, key, value, base())
    try:
        spec.settings_config({**spec.defaults, **coerced})
    except RmtDeployError as exc:
        raise StrategyError(f"strategy {strategy!r}: {exc}") from exc
    return coerced


def _coerce(strategy: str, key: str, value: Any, default: Any) -> Any:
    """Bring a setting (from YAML or `--set`) to the type of its default, or say why not."""
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            if value not in (0, 1):  # 3 is no truth value: refused, not taken as true
                raise ValueError(value)
            return bool(value)
        coerced = kind(value)
    except (TypeError, ValueError) as exc:
        raise StrategyError(
            f"strategy {strategy!r}: setting {key} must be a {kind.__name__}, got {value!r}"
        ) from exc
    if kind in (int, float) and coerced < 0:
        raise StrategyError(f"strategy {strategy!r}: setting {key} must not be negative")
    return coerced
