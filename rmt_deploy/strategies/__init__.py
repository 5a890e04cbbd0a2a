"""plan(model, strategy=...): the registry of compression strategies, one file each."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..analysis import ModelSpectrum
from ..plan import CompressionPlan
from . import classic_rmt, hybrid, lowrank, magnitude, nm24, seb, ser  # noqa: F401  (registry)
from .base import STRATEGIES, FilterFn, PlanContext, StrategyError, prunable_layers

__all__ = ["STRATEGIES", "StrategyError", "plan", "prunable_layers"]


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
    **settings: Any,
) -> CompressionPlan:
    """Decide, per Linear/Conv2d layer, dense | low-rank r | mask at density d | 2:4, with reasons.

    `sparsity` is the share of the targeted layers' weights to remove (for `lowrank`, the
    share of their parameters; `nm24` is 2:4 wherever a layer can take it). `data` is a
    labelled training/calibration dataset for the strategies that need one.
    """
    if strategy not in STRATEGIES:
        raise StrategyError(
            f"unknown strategy {strategy!r}; available: {', '.join(sorted(STRATEGIES))}"
        )
    spec = STRATEGIES[strategy]
    config = {**(config or {}), **settings}
    if not isinstance(sparsity, int | float) or not 0.0 <= sparsity < 1.0:
        raise StrategyError(f"sparsity must lie in [0, 1), got {sparsity!r}")
    unknown = set(config) - set(spec.defaults)
    if unknown:
        allowed = ", ".join(sorted(spec.defaults)) or "none"
        raise StrategyError(
            f"strategy {strategy!r} has no setting {', '.join(sorted(unknown))} "
            f"(settings: {allowed})"
        )
    config = {
        key: _coerce(strategy, key, value, spec.defaults[key]) for key, value in config.items()
    }
    if spec.needs_data and data is None:
        raise StrategyError(f"strategy {strategy!r} needs training/calibration data (--data)")
    targets = prunable_layers(model, filter_fn)
    if not targets:
        raise StrategyError("no Linear/Conv2d layer to compress (check filter_fn)")
    ctx = PlanContext(model, targets, float(sparsity), {**spec.defaults, **config}, data, spectrum)
    produced = spec.fn(ctx)
    layers, extra_state = produced if isinstance(produced, tuple) else (produced, {})
    return CompressionPlan(
        strategy, {"sparsity": float(sparsity), **ctx.config}, layers, name, extra_state
    )


def _coerce(strategy: str, key: str, value: Any, default: Any) -> Any:
    """Bring a setting (from YAML or `--set`) to the type of its default, or say why not."""
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        coerced = kind(value)
    except (TypeError, ValueError) as exc:
        raise StrategyError(
            f"strategy {strategy!r}: setting {key} must be a {kind.__name__}, got {value!r}"
        ) from exc
    if kind in (int, float) and coerced < 0:
        raise StrategyError(f"strategy {strategy!r}: setting {key} must not be negative")
    return coerced
