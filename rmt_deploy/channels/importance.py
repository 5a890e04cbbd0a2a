"""How much each channel of a group matters, so the least important ones go first.

`magnitude` sums, over every learned layer of the group, the L2 norm of the weights that the
channel owns (a producer's output row, a consumer's input column, a BatchNorm's scale), each
layer's norms divided by their mean so that no layer dominates by its scale (the group-level
magnitude criterion of DepGraph, Fang et al. 2023). `bn` uses only the BatchNorm scales |γ|
(Network Slimming, Liu et al. 2017). The frozen shortcut selections carry no information and
are left out.
"""

from __future__ import annotations

import torch
from torch import nn

from .graph import ChannelGraph
from .shortcuts import ShortcutSelect

IMPORTANCE = ("magnitude", "bn")


def _owned(module: nn.Module, local: list[int], out: bool, how: str) -> torch.Tensor | None:
    """The norm of what each channel owns in `module`, or None when it owns nothing scored."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
        return module.weight.detach().abs()[local]
    if how != "magnitude" or isinstance(module, ShortcutSelect):
        return None
    if not isinstance(module, nn.Conv2d | nn.Linear):
        return None
    weight = module.weight.detach()
    if out:
        return weight.flatten(1)[local].norm(dim=1)
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return None  # a grouped consumer's input columns are indexed per group
    return weight.transpose(0, 1).flatten(1)[local].norm(dim=1)


def channel_scores(cg: ChannelGraph, name: str, how: str = "magnitude") -> torch.Tensor:
    """One score per channel of group `name` (higher: keep longer)."""
    from torch_pruning._helpers import to_plain_idxs, to_root_idxs

    if how not in IMPORTANCE:
        raise ValueError(f"importance must be one of {IMPORTANCE}, got {how!r}")
    channels = cg.groups[name].channels
    score = torch.zeros(channels, dtype=torch.float64)
    for dep, idxs in cg.pruning_group(name, list(range(channels))):
        out = cg.graph.is_out_channel_pruning_fn(dep.handler)
        owned = _owned(dep.target.module, to_plain_idxs(idxs), out, how)
        if owned is None or owned.numel() == 0:
            continue
        owned = owned.double() / owned.double().mean().clamp_min(1e-12)
        score.index_add_(0, torch.as_tensor(to_root_idxs(idxs)), owned)
    return score
