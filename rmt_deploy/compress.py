"""compress_(model, plan): apply a CompressionPlan in place through one replacement helper."""

from __future__ import annotations

import torch
from torch import nn

from .layers import (
    LowRankConv2d,
    LowRankLinear,
    is_nm_sparse,
    magnitude_mask,
    masked_from_dense,
    nm_mask,
)
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


def _lowrank(module: nn.Module, left: torch.Tensor, right: torch.Tensor) -> nn.Module:
    if isinstance(module, nn.Linear):
        return LowRankLinear.from_factors(left, right, module.bias)
    if module.groups != 1:
        raise PlanError("a grouped convolution cannot be factorized")
    return LowRankConv2d.from_factors(module, left, right)


@torch.no_grad()
def compress_(model: nn.Module, plan: CompressionPlan, structure_only: bool = False) -> nn.Module:
    """Rewrite the layers of `model` as `plan` says. Returns the model.

    With `structure_only`, only the module types and shapes change (weights are left to a
    later `load_state_dict`): that is how a compressed checkpoint is loaded.
    """
    modules = [(layer, _target(model, layer)) for layer in plan.layers]  # validate everything first
    if plan.extra_state and not structure_only:
        unknown = set(plan.extra_state) - set(model.state_dict())
        if unknown:
            raise PlanError(f"plan state names tensors the model lacks: {sorted(unknown)[:5]}")
        model.load_state_dict(plan.extra_state, strict=False)
    for layer, module in modules:
        if "weight" in layer.payload and not structure_only:
            module.weight.copy_(layer.payload["weight"])
        if layer.action == "dense":
            continue
        if layer.action == "lowrank":
            if structure_only:
                left = torch.zeros(module.weight.shape[0], layer.rank)
                right = torch.zeros(layer.rank, module.weight[0].numel())
            elif "left" in layer.payload:
                left, right = layer.payload["left"], layer.payload["right"]
            else:
                left, right = truncated_svd(module.weight, layer.rank)
            new = _lowrank(module, left, right).to(module.weight.device, module.weight.dtype)
            replace_module(model, layer.name, new)
            continue
        if structure_only:
            mask = torch.ones_like(module.weight)
        elif "mask" in layer.payload:
            mask = layer.payload["mask"]
        elif layer.action == "nm24":
            mask = nm_mask(module.weight)
        else:
            mask = magnitude_mask(module.weight, layer.density)
        if layer.action == "nm24" and not structure_only and not is_nm_sparse(mask):
            raise PlanError(f"layer {layer.name!r}: the mask is not 2:4")
        replace_module(model, layer.name, masked_from_dense(module, mask))
    return model
