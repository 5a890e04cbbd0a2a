"""CompressionPlan: what to do with each layer and why, as plain data that round-trips JSON.

Masks and factors that a strategy computed from data ride along in memory (`payload`); the
JSON keeps the description (action, rank, density, reason), and the compressed checkpoint
keeps the tensors.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from .errors import RmtDeployError
from .paths import read_json, write_json_atomic
from .targets import SkippedLayer


class Factorization(Protocol):
    """What a low-rank entry takes its factors from (calibration.WhitenedFactors)."""

    def factors(self, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]: ...


ACTIONS = ("dense", "lowrank", "mask", "nm24", "channels")
PLAN_SCHEMA = 1
# How the coverage line names each compressed form.
FORM_LABELS = (
    ("lowrank", "low-rank"),
    ("nm24", "2:4"),
    ("mask", "masked"),
    ("channels", "narrowed"),
)


class PlanError(RmtDeployError):
    """A plan is malformed or does not fit the model it is applied to."""


@dataclass
class LayerPlan:
    name: str
    action: str  # one of ACTIONS
    weight_shape: tuple[int, ...]
    params_before: int
    params_after: int
    rank: int | None = None
    density: float | None = None  # share of weights kept (mask / nm24)
    reason: str = ""
    # channels: the output channels its group keeps (the group is named by this layer)
    width: int | None = None
    stats: dict[str, float] = field(default_factory=dict)  # e.g. output error, spikes
    # Why a layer stays dense, as a short code for counting (grouped_conv, not_faster, …).
    category: str = ""
    # Tensors computed by the strategy (mask, factors, new weight); not part of the JSON.
    payload: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise PlanError(f"layer {self.name!r}: unknown action {self.action!r} (use {ACTIONS})")
        if self.action == "lowrank" and not (self.rank and self.rank > 0):
            raise PlanError(f"layer {self.name!r}: low-rank needs a positive rank")
        if self.action == "channels" and not (self.width and self.width > 0):
            raise PlanError(f"layer {self.name!r}: channel pruning needs a positive width")
        if self.action == "mask" and not (self.density is not None and 0 <= self.density <= 1):
            raise PlanError(f"layer {self.name!r}: a mask needs a density in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "weight_shape": list(self.weight_shape),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "rank": self.rank,
            "density": self.density,
            "width": self.width,
            "reason": self.reason,
            "category": self.category,
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerPlan:
        try:
            return cls(
                name=data["name"],
                action=data["action"],
                weight_shape=tuple(data["weight_shape"]),
                params_before=int(data["params_before"]),
                params_after=int(data["params_after"]),
                rank=data.get("rank"),
                density=data.get("density"),
                width=data.get("width"),
                reason=data.get("reason", ""),
                stats=dict(data.get("stats", {})),
                category=data.get("category", ""),
            )
        except KeyError as exc:
            raise PlanError(f"plan layer entry lacks the field {exc}") from exc


@dataclass
class CompressionPlan:
    strategy: str
    config: dict[str, Any]
    layers: list[LayerPlan]
    model: str = ""
    # Non-target parameters and buffers a strategy changed while planning (hybrid's fine-tuned
    # norms and biases), keyed as in the uncompressed model; in memory only, like payloads.
    extra_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    # Linear/Conv-like modules no compressed form was offered for, with the reason.
    skipped: list[SkippedLayer] = field(default_factory=list)
    # A strategy's search report (the latency planner's), in memory only.
    search: Any = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        before = sum(layer.params_before for layer in self.layers)
        after = sum(layer.params_after for layer in self.layers)
        counts = {a: sum(layer.action == a for layer in self.layers) for a in ACTIONS}
        dense_by = Counter(
            layer.category or "other" for layer in self.layers if layer.action == "dense"
        )
        return {
            "layers": len(self.layers),
            **{f"{a}_layers": n for a, n in counts.items()},
            "dense_by_reason": dict(dense_by),
            "skipped_layers": len(self.skipped),
            "skipped_by_reason": dict(Counter(s.code for s in self.skipped)),
            "params_before": before,
            "params_after": after,
            "sparsity": 1 - after / before if before else 0.0,
        }

    @property
    def compressed(self) -> bool:
        """True when at least one layer changes form."""
        return any(layer.action != "dense" for layer in self.layers)

    def coverage_line(self) -> str:
        """One line for the CLI and the report: planned / skipped counts by reason."""
        s = self.summary()
        forms = ", ".join(
            f"{s[f'{a}_layers']} {label}" for a, label in FORM_LABELS if s[f"{a}_layers"]
        )
        dense = s["dense_layers"]
        why = ", ".join(f"{n} {code}" for code, n in sorted(s["dense_by_reason"].items()))
        line = f"{s['layers']} layers planned: {forms + ', ' if forms else ''}{dense} dense"
        line += f" ({why})" if dense and why else ""
        if s["skipped_layers"]:
            skipped = ", ".join(f"{n} {code}" for code, n in sorted(s["skipped_by_reason"].items()))
            line += f"; {s['skipped_layers']} skipped ({skipped})"
        return line

    def layer(self, name: str) -> LayerPlan:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": PLAN_SCHEMA,
            "model": self.model,
            "strategy": self.strategy,
            "config": self.config,
            "summary": self.summary(),
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [s.to_dict() for s in self.skipped],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionPlan:
        if not isinstance(data, dict) or data.get("schema_version") != PLAN_SCHEMA:
            raise PlanError(f"not a compression plan (schema_version {PLAN_SCHEMA} expected)")
        return cls(
            strategy=data["strategy"],
            config=data.get("config", {}),
            layers=[LayerPlan.from_dict(layer) for layer in data["layers"]],
            model=data.get("model", ""),
            skipped=[SkippedLayer.from_dict(s) for s in data.get("skipped", [])],
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CompressionPlan:
        return cls.from_dict(read_json(path, "plan", PlanError))

    def save_payloads(self, path: str | os.PathLike[str]) -> Path:
        """The in-memory tensors (factors, masks, changed state) as safetensors, so that a
        plan made in one process can be applied in another without planning again."""
        from safetensors.torch import save_file

        from .paths import write_with_atomic

        tensors = {
            f"layer::{layer.name}::{key}": value.detach().contiguous().clone()
            for layer in self.layers
            for key, value in layer.payload.items()
        }
        tensors.update(
            {f"extra::{k}": v.detach().contiguous().clone() for k, v in self.extra_state.items()}
        )
        return write_with_atomic(path, lambda tmp: save_file(tensors, str(tmp)))

    def load_payloads(self, path: str | os.PathLike[str]) -> CompressionPlan:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise PlanError(f"cannot read plan tensors {path}: {exc}") from exc
        by_name = {layer.name: layer for layer in self.layers}
        for key, value in tensors.items():
            kind, _, rest = key.partition("::")
            if kind == "extra":
                self.extra_state[rest] = value
                continue
            name, _, field_name = rest.rpartition("::")
            if name not in by_name:
                raise PlanError(f"{path} holds tensors for layer {name!r}, which the plan lacks")
            by_name[name].payload[field_name] = value
        return self


# What a strategy or the planner says about one layer: the LayerPlan builders.


def example_batch(data: Dataset, size: int = 2) -> torch.Tensor:
    """The first `size` images of `data`, stacked: the input that layers are checked on."""
    if len(data) == 0:
        raise PlanError("the calibration data is empty")
    return torch.stack([data[i][0] for i in range(min(size, len(data)))])


def weight_params(module: nn.Module) -> int:
    return module.weight.numel()


def dense_entry(
    name: str, module: nn.Module, reason: str, category: str = "", **stats: float
) -> LayerPlan:
    """A layer kept as it is; `category` is the short code the summary counts it under."""
    n = weight_params(module)
    return LayerPlan(
        name,
        "dense",
        tuple(module.weight.shape),
        n,
        n,
        reason=reason,
        stats=stats,
        category=category,
    )


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


def factorized_entry(
    name: str,
    module: nn.Module,
    factors: Factorization,
    rank: int,
    reason: str,
    stats: dict[str, float],
) -> LayerPlan:
    """A low-rank LayerPlan carrying the whitened factors truncated to `rank`."""
    left, right = factors.factors(rank, module.weight.dtype)
    return lowrank_entry(name, module, rank, reason, stats, {"left": left, "right": right})


def lowrank_entry(
    name: str,
    module: nn.Module,
    rank: int,
    reason: str,
    stats: dict[str, float] | None = None,
    payload: dict[str, torch.Tensor] | None = None,
) -> LayerPlan:
    """A layer factorized at `rank` (factors in `payload`, or truncated SVD at compress time)."""
    m, n = module.weight.shape[0], module.weight[0].numel()
    return LayerPlan(
        name,
        "lowrank",
        tuple(module.weight.shape),
        m * n,
        rank * (m + n),
        rank=rank,
        reason=reason,
        stats=stats or {},
        payload=payload or {},
    )


def channels_entry(
    name: str,
    module: nn.Module,
    width: int,
    reason: str,
    stats: dict[str, float] | None = None,
    keep: torch.Tensor | None = None,
) -> LayerPlan:
    """A channel group narrowed to `width` output channels, named by its first producer
    `module`; its parameters are that layer's (the rest of the group shrinks alike)."""
    n = module.weight.numel()
    return LayerPlan(
        name,
        "channels",
        tuple(module.weight.shape),
        n,
        n * width // module.weight.shape[0],
        width=width,
        reason=reason,
        stats=stats or {},
        payload={} if keep is None else {"keep": keep},
    )
