"""analyze(model): an MP fit of every Linear/Conv weight, with what truncating it would save."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import NonFiniteWeightsError, RmtDeployError
from .paths import read_json, write_json_atomic
from .progress import tqdm
from .spectral.fit import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    DEFAULT_MIN_DIM,
    MatrixTooSmallError,
    MPFit,
    fit_mp_spectrum,
    singular_values,
)

FilterFn = Callable[[nn.Module, str], bool]
ANALYZED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SCHEMA_VERSION = 1


@dataclass
class LayerSpectrum:
    """One layer: its matrix view, the MP fit (or why it was skipped) and low-rank arithmetic."""

    name: str
    kind: str  # "linear" | "conv1d" | "conv2d" | "conv3d"
    weight_shape: tuple[int, ...]
    shape: tuple[int, int]  # matrix view m × n (conv: C_out × C_in·k…)
    fit: MPFit | None = None
    skipped: str | None = None  # reason, when there is no fit

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def break_even_rank(self) -> float:
        """m·n/(m+n): a rank-r factorization saves parameters only for r below this."""
        m, n = self.shape
        return m * n / (m + n)

    @property
    def edge_rank(self) -> int | None:
        """Rank a truncation at the MP edge keeps (the spikes); None when skipped."""
        return None if self.fit is None else self.fit.n_spikes

    @property
    def lowrank_params(self) -> int | None:
        """Parameters of the edge-rank factorization, or of the dense matrix if that is smaller."""
        if self.edge_rank is None:
            return None
        return min(self.params, self.edge_rank * sum(self.shape))

    @property
    def param_saving(self) -> float | None:
        """Share of this matrix's parameters an edge-rank factorization removes (0 if none)."""
        if self.lowrank_params is None:
            return None
        return 1.0 - self.lowrank_params / self.params

    @property
    def noise_fraction(self) -> float | None:
        return None if self.fit is None else self.fit.noise_fraction

    @property
    def energy_outside_bulk(self) -> float | None:
        return None if self.fit is None else self.fit.energy_outside_bulk

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "weight_shape": list(self.weight_shape),
            "shape": list(self.shape),
            "skipped": self.skipped,
            "params": self.params,
            "break_even_rank": self.break_even_rank,
            "edge_rank": self.edge_rank,
            "lowrank_params": self.lowrank_params,
            "param_saving": self.param_saving,
            "noise_fraction": self.noise_fraction,
            "energy_outside_bulk": self.energy_outside_bulk,
            "fit": None if self.fit is None else self.fit.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSpectrum:
        fit = data.get("fit")
        return cls(
            name=data["name"],
            kind=data["kind"],
            weight_shape=tuple(data["weight_shape"]),
            shape=tuple(data["shape"]),  # type: ignore[arg-type]
            fit=None if fit is None else MPFit.from_dict(fit),
            skipped=data.get("skipped"),
        )


@dataclass
class ModelSpectrum:
    """Per-layer spectra of a model, plus the settings that produced them."""

    model: str
    layers: list[LayerSpectrum] = field(default_factory=list)
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    min_dim: int = DEFAULT_MIN_DIM

    @property
    def fitted(self) -> list[LayerSpectrum]:
        return [layer for layer in self.layers if layer.fit is not None]

    @property
    def skipped(self) -> list[LayerSpectrum]:
        return [layer for layer in self.layers if layer.fit is None]

    def summary(self) -> dict[str, Any]:
        fitted = self.fitted
        params = sum(layer.params for layer in fitted)
        kept = sum(layer.lowrank_params or 0 for layer in fitted)
        singular_total = sum(layer.fit.rank for layer in fitted)  # type: ignore[union-attr]
        spikes_total = sum(layer.fit.n_spikes for layer in fitted)  # type: ignore[union-attr]
        return {
            "layers": len(self.layers),
            "fitted": len(fitted),
            "skipped": len(self.skipped),
            "matrix_params_fitted": params,
            "singular_values": singular_total,
            "spikes": spikes_total,
            "noise_fraction": 1 - spikes_total / singular_total if singular_total else None,
            "median_gof": float(np.median([lay.fit.gof for lay in fitted])) if fitted else None,
            "edge_truncation_params": kept,
            "edge_truncation_saving": 1 - kept / params if params else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "alpha": self.alpha,
            "beta": self.beta,
            "min_dim": self.min_dim,
            "summary": self.summary(),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpectrum:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise RmtDeployError(
                f"spectrum file has schema version {data.get('schema_version')!r}, "
                f"expected {SCHEMA_VERSION}"
            )
        return cls(
            model=data["model"],
            layers=[LayerSpectrum.from_dict(layer) for layer in data["layers"]],
            alpha=data["alpha"],
            beta=data["beta"],
            min_dim=data["min_dim"],
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelSpectrum:
        return cls.from_dict(read_json(path, "spectrum file", RmtDeployError))


def analyzable_layers(
    model: nn.Module, filter_fn: FilterFn | None = None
) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear/Conv with a weight, in definition order, after the filter."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, ANALYZED_TYPES)
        and getattr(module, "weight", None) is not None
        and (filter_fn is None or filter_fn(module, name))
    ]


def analyze(
    model: nn.Module,
    filter_fn: FilterFn | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    min_dim: int = DEFAULT_MIN_DIM,
    name: str | None = None,
    progress: bool = False,
) -> ModelSpectrum:
    """Fit the MP law to every Linear/Conv weight selected by `filter_fn(module, fqn)`.

    Layers that cannot be fitted (too small, rank-deficient, grouped convolutions) are kept
    with the reason in `skipped`; NaN/Inf weights raise NonFiniteWeightsError naming the layer.
    """
    spectrum = ModelSpectrum(
        model=name or type(model).__name__, alpha=alpha, beta=beta, min_dim=min_dim
    )
    layers = analyzable_layers(model, filter_fn)
    for fqn, module in tqdm(layers, desc="analyze", unit="layer", disable=not progress):
        weight = module.weight.detach()
        matrix = weight.reshape(weight.shape[0], -1)
        layer = LayerSpectrum(
            name=fqn,
            kind=type(module).__name__.lower(),
            weight_shape=tuple(weight.shape),
            shape=(int(matrix.shape[0]), int(matrix.shape[1])),
        )
        spectrum.layers.append(layer)
        groups = getattr(module, "groups", 1)
        if groups != 1:
            layer.skipped = f"grouped convolution (groups={groups}) is not one matrix"
            continue
        if not torch.isfinite(matrix).all():
            raise NonFiniteWeightsError(f"layer {fqn!r}: weight holds NaN/Inf values")
        svals = singular_values(matrix)
        try:
            layer.fit = fit_mp_spectrum(svals, layer.shape, alpha, beta, min_dim)
        except MatrixTooSmallError as exc:
            layer.skipped = str(exc)
    return spectrum
