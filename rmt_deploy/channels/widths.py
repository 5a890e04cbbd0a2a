"""The spectrum sets how narrow a group may get; the runtime's block sets the steps.

A producer's weight (outputs × inputs·k·k) has `spikes` singular values above the
Marchenko–Pastur edge: that many output directions carry signal. Channels are axis-aligned, so
keeping `spikes` channels does not keep those directions — it is a floor, not a target: no
candidate width of a group goes below the largest spike count among its producers, as no
low-rank option goes below the MP-edge rank. Widths are multiples of the runtime's block (8)
so that pruned convolutions stay on the blocked kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .graph import ChannelGraph


@dataclass(frozen=True)
class WidthFloor:
    """A group's smallest width and where it comes from."""

    group: str
    floor: int
    source: str  # the producer whose spike count set it, or "none"


def spectral_floors(cg: ChannelGraph, spikes: dict[str, int | None]) -> dict[str, WidthFloor]:
    """Per group: the largest spike count among its producers (0 when none was fitted)."""
    floors = {}
    for name, group in cg.groups.items():
        counted = [(int(spikes[p]), p) for p in group.producers if spikes.get(p) is not None]
        floor, source = max(counted, default=(0, "none"))
        floors[name] = WidthFloor(name, floor, source)
    return floors


def width_options(channels: int, floor: int, multiple: int = 8) -> list[int]:
    """Narrower widths to try, ascending: multiples of `multiple` from the floor up."""
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    start = max(multiple, math.ceil(max(floor, 1) / multiple) * multiple)
    return list(range(start, channels, multiple))
