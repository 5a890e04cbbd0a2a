"""compress_(model, plan): apply a CompressionPlan in place through one replacement helper."""

from __future__ import annotations

import torch
from torch import nn

from .layers import (
    is_nm_sparse,
    layer_view,
    lowrank_from_view,
    lowrank_like,
    magnitude_mask,
    masked_from_view,
    masked_like,
    nm_mask,
    unfuse_attention_,
)
from .layers.views import LayerView
from .plan import CompressionPlan, LayerPlan, PlanError
from .surgery import replace_module


def truncated_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-r factors (left m×r, right r×n) of the matrix view of `weight`, split √S·√S."""
    matrix = weight.detach().reshape(weight.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(weight.dtype), (root[:, None] * vh[:rank]).to(weight.dtype)


def _target(model: nn.Module, layer: LayerPlan) -> nn.Module:
    try:
        module = model.get_submodule(layer.name)
    except AttributeError as exc:
        raise PlanError(f"plan names layer {layer.name!r}, which the model does not have") from exc
    weight = getattr(module, "weight", None)
    if not isinstance(module, nn.Linear | nn.Conv2d) or weight is None:
        raise PlanError(
            f"plan layer {layer.name!r} is a {type(module).__name__}, not Linear/Conv2d"
        )
    if tuple(weight.shape) != tuple(layer.weight_shape):
        raise PlanError(
            f"plan layer {layer.name!r} has weight shape {tuple(layer.weight_shape)} but the "
            f"model's is {tuple(weight.shape)}: the plan was made for another model"
        )
    return module


def _replacement(view: LayerView, layer: LayerPlan, structure_only: bool) -> nn.Module:
    """The compressed form of `view`'s layer as `layer` plans it."""
    if layer.action == "lowrank":
        if view.groups != 1:
            raise PlanError(f"layer {layer.name!r}: a grouped convolution cannot be factorized")
        if structure_only:
            return lowrank_like(view, layer.rank)
        if "left" in layer.payload:
            left, right = layer.payload["left"], layer.payload["right"]
        else:
            left, right = truncated_svd(view.weight, layer.rank)
        return lowrank_from_view(view, left, right)
    if structure_only:
        return masked_like(view)
    if "mask" in layer.payload:
        mask = layer.payload["mask"]
    elif layer.action == "nm24":
        mask = nm_mask(view.weight)
    else:
        mask = magnitude_mask(view.weight, layer.density)
    if layer.action == "nm24" and not is_nm_sparse(mask):
        raise PlanError(f"layer {layer.name!r}: the mask is not 2:4")
    return masked_from_view(view, mask)


@torch.no_grad()
def compress_(model: nn.Module, plan: CompressionPlan, structure_only: bool = False) -> nn.Module:
    """Rewrite the layers of `model` as `plan` says. Returns the model.

    Each compressed layer is built from the original's view (`layers/views.py`), so it keeps
    what the original did in its forward (TF 'SAME' padding, weight standardization).
    nn.MultiheadAttention modules are unfused first (same outputs), as `plan` did. With
    `structure_only`, only the module types and shapes change (weights are left to a later
    `load_state_dict`): that is how a compressed checkpoint is loaded.
    """
    unfuse_attention_(model)
    modules = [(layer, _target(model, layer)) for layer in plan.layers]  # validate everything first
    narrowed = [layer for layer in plan.layers if layer.action == "channels"]
    if narrowed:
        _narrow(model, plan, narrowed, structure_only)
    if plan.extra_state and not structure_only:
        unknown = set(plan.extra_state) - set(model.state_dict())
        if unknown:
            raise PlanError(f"plan state names tensors the model lacks: {sorted(unknown)[:5]}")
        model.load_state_dict(plan.extra_state, strict=False)
    for layer, module in modules:
        if "weight" in layer.payload and not structure_only:
            module.weight.copy_(layer.payload["weight"])
        if layer.action in ("dense", "channels"):
            continue
        view = layer_view(module)
        new = _replacement(view, layer, structure_only)
        replace_module(model, layer.name, new.to(module.weight.device, module.weight.dtype))
    return model


def _refuse_factorized_members(plan: CompressionPlan, cg, narrowed: list[LayerPlan]) -> None:
    """A layer is either in a narrowed group or factorized, never both."""
    factorized = {la.name for la in plan.layers if la.action == "lowrank"}
    for layer in narrowed:
        group = cg.groups.get(layer.name)
        both = factorized & set(group.layers) if group else set()
        if both:
            raise PlanError(
                f"layer {sorted(both)[0]!r} is factorized inside the narrowed channel group "
                f"{layer.name!r}: a layer is narrowed or low rank, not both (keep it dense)"
            )


def _narrow(
    model: nn.Module, plan: CompressionPlan, layers: list[LayerPlan], structure_only: bool
) -> None:
    """Remove channels as the plan's `channels` entries say (whole groups, every consumer):
    the kept channels from the plan's tensors, else the highest-magnitude ones; with
    `structure_only`, the first `width` (weights come from the checkpoint). Low rank may
    join them on layers outside every narrowed group (its factors fit the unpruned weight)."""
    from .channels import ChannelError, channel_graph, channel_scores, keep_top, prune_channels_

    others = sorted({la.action for la in plan.layers} - {"dense", "channels", "lowrank"})
    if others:
        raise PlanError(f"a plan that narrows channels cannot also use {', '.join(others)}")
    for layer in layers:
        floor = int(layer.stats.get("floor", 0))
        if layer.width < floor:
            raise PlanError(
                f"layer {layer.name!r}: width {layer.width} is below its spectral floor {floor} "
                "(the channels its spectrum says carry signal); raise the width, or plan with "
                "floor: none"
            )
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = plan.config.get("input_size") or cfg.get("input_size")
    if not size:
        raise PlanError("a channels plan needs config.input_size (the input it was traced with)")
    device = next(model.parameters()).device
    example = torch.zeros(1, *[int(v) for v in size], device=device)
    try:
        with torch.enable_grad():
            cg = channel_graph(model, example)
        _refuse_factorized_members(plan, cg, layers)
        keep = {}
        for layer in layers:
            if structure_only:
                keep[layer.name] = torch.arange(layer.width)
            elif "keep" in layer.payload:
                keep[layer.name] = layer.payload["keep"]
            elif layer.name in cg.groups:
                keep[layer.name] = keep_top(channel_scores(cg, layer.name), layer.width)
        prune_channels_(model, keep, example, cg)
    except ChannelError as exc:
        raise PlanError(str(exc)) from exc
