"""Apply a choice of kept channels: the same code at planning and at compress time."""

from __future__ import annotations

import torch
from torch import nn

from .graph import ChannelError, ChannelGraph, channel_graph


def keep_top(scores: torch.Tensor, width: int) -> torch.Tensor:
    """The `width` highest-scoring channel indices, in channel order (ties: lower index)."""
    if not 1 <= width <= len(scores):
        raise ChannelError(f"width {width} is outside 1..{len(scores)}")
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:width]), dtype=torch.long)


def _removed(cg: ChannelGraph, name: str, kept: torch.Tensor) -> list[int]:
    if name not in cg.groups:
        raise ChannelError(
            f"the plan prunes channel group {name!r}, which this model does not have "
            "(the plan was made for another model)"
        )
    channels = cg.groups[name].channels
    keep = {int(i) for i in kept.flatten()}
    if not keep or len(keep) != kept.numel() or min(keep) < 0 or max(keep) >= channels:
        raise ChannelError(
            f"channel group {name!r}: the kept channels must be distinct indices in "
            f"0..{channels - 1}, at least one"
        )
    return [i for i in range(channels) if i not in keep]


@torch.no_grad()
def prune_channels_(
    model: nn.Module,
    keep: dict[str, torch.Tensor],
    example: torch.Tensor,
    cg: ChannelGraph | None = None,
) -> ChannelGraph:
    """Keep only channels `keep[group]` of each named group (in place, every consumer too);
    `cg` is the model's graph when the caller already built it."""
    cg = cg if cg is not None else channel_graph(model, example)
    removals = {name: _removed(cg, name, kept) for name, kept in keep.items()}  # check all first
    for name, removed in removals.items():
        if removed:
            cg.pruning_group(name, removed).prune(record_history=False)
            cg.groups[name].channels -= len(removed)
    return cg
