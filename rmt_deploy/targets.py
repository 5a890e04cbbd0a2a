"""Which layers of a model can be compressed, and why each of the others cannot.

Every module whose computation is a Linear or a 2-D convolution is a candidate, subclasses
included. A candidate becomes a target when its view (`layers/views.py`) describes what it
computes. With an example input, every view is checked against the module's own forward inside
the real model, which also finds layers whose forward is never called (the `out_proj` of a
fused nn.MultiheadAttention). The rest are listed as skipped, each with a short code (for
counting) and a reason a user can act on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import RmtDeployError
from .layers.masked import MASKED_TYPES
from .layers.views import LayerView, adapter_for, layer_view, overrides_forward, view_mismatch

FilterFn = Callable[[nn.Module, str], bool]


@dataclass
class SkippedLayer:
    """A Linear/Conv-like module no compressed form is offered for, and why."""

    name: str
    kind: str  # the module's class name
    code: str  # never_called | forward_differs | unverified | fused_attention | conv_nd | …
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkippedLayer:
        return cls(data["name"], data["kind"], data["code"], data["reason"])


@dataclass
class Targets:
    """The layers a strategy may plan (as views, in model order) and the skipped ones."""

    views: dict[str, LayerView] = field(default_factory=dict)
    skipped: list[SkippedLayer] = field(default_factory=list)

    def items(self) -> list[tuple[str, nn.Module]]:
        return [(name, view.module) for name, view in self.views.items()]

    def skipped_by_code(self) -> dict[str, int]:
        return dict(Counter(s.code for s in self.skipped))


def _candidate_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear | nn.Conv2d):
        return "target"
    if isinstance(module, nn.Conv1d | nn.Conv3d):
        return "conv_nd"
    return None


@torch.no_grad()
def _run_example(
    model: nn.Module, modules: dict[str, nn.Module], example: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of each module's first call while `model` runs on `example`."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name: str):
        def hook(_module, args, output) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = (args[0].detach(), output.detach())

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in modules.items()]
    was_training = model.training
    try:
        model.eval()(example)
    except Exception as exc:  # the user's model on the user's input: say which, not where
        raise RmtDeployError(
            f"the model fails on an input of shape {tuple(example.shape)}: "
            f"{type(exc).__name__}: {exc} (check the input size / preprocessing)"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return seen


def find_targets(
    model: nn.Module,
    filter_fn: FilterFn | None = None,
    example: torch.Tensor | None = None,
) -> Targets:
    """Every Linear/Conv2d-like module of `model`: planned as a view, or skipped with a reason.

    `example`: a small input batch; with it, each view is checked against the module's own
    output in the model, and modules never called are found. Without it, a subclass that
    overrides `forward` and has no adapter of its own is skipped as unverified.
    """
    targets = Targets()
    candidates: dict[str, nn.Module] = {}
    parents = {
        child: type(parent).__name__
        for pname, parent in model.named_modules()
        for cname, child in parent.named_children()
        if isinstance(parent, nn.MultiheadAttention)
    }
    for name, module in model.named_modules():
        kind = _candidate_kind(module)
        if kind is None or getattr(module, "weight", None) is None:
            continue
        cls = type(module).__name__
        if kind == "conv_nd":
            targets.skipped.append(
                SkippedLayer(
                    name, cls, "conv_nd", f"{cls}: only Linear and Conv2d have compressed forms"
                )
            )
        elif isinstance(module, MASKED_TYPES):
            targets.skipped.append(
                SkippedLayer(name, cls, "compressed", "already masked by an earlier plan")
            )
        elif module in parents:
            targets.skipped.append(
                SkippedLayer(
                    name,
                    cls,
                    "fused_attention",
                    "nn.MultiheadAttention reads this weight in its fused kernel and never calls "
                    "the module; rmt_deploy.layers.unfuse_attention_(model) makes it a layer "
                    "(plan() does so; add_bias_kv/add_zero_attn attentions stay fused)",
                )
            )
        elif filter_fn is not None and not filter_fn(module, name):
            targets.skipped.append(SkippedLayer(name, cls, "filtered", "excluded by the filter"))
        else:
            candidates[name] = module
    observed = _run_example(model, candidates, example) if example is not None else None
    for name, module in candidates.items():
        cls = type(module).__name__
        registered, _adapter = adapter_for(module)  # type: ignore[misc]
        if observed is None:
            if overrides_forward(module, registered):
                targets.skipped.append(
                    SkippedLayer(
                        name,
                        cls,
                        "unverified",
                        f"{cls} overrides forward and no adapter describes it; give an example "
                        "input to check it, or register one (rmt_deploy.layers."
                        "register_layer_adapter)",
                    )
                )
                continue
            targets.views[name] = layer_view(module)
            continue
        if name not in observed:
            targets.skipped.append(
                SkippedLayer(
                    name, cls, "never_called", "its forward is never called by the model's forward"
                )
            )
            continue
        view = layer_view(module)
        x, y = observed[name]
        gap = view_mismatch(view, x, y)
        if gap is not None:
            targets.skipped.append(
                SkippedLayer(
                    name,
                    cls,
                    "forward_differs",
                    f"{cls} computes something else than its {registered} view (relative max "
                    f"|Δ| {gap:.2g}); register an adapter for it "
                    "(rmt_deploy.layers.register_layer_adapter)",
                )
            )
            continue
        targets.views[name] = view
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    targets.skipped.sort(key=lambda s: order.get(s.name, 0))
    return targets
