"""Whole-channel pruning: the `channels` form.

Output channels are removed together with the matching inputs of every consumer through
Torch-Pruning's dependency graph (`graph.py`), so residual additions, depthwise convolutions and
BatchNorm stay consistent; parameter-free shortcuts that couple channels (ResNet's option A) are
first made explicit (`shortcuts.py`); channels are ranked by an importance score
(`importance.py`); the spectrum sets each group's smallest width (`widths.py`); `prune.py` applies
a choice of kept channels, the same way at planning and at compress time.
"""

from .graph import ChannelError, ChannelGraph, ChannelGroup, channel_graph
from .importance import IMPORTANCE, channel_scores
from .prune import keep_top, prune_channels_
from .shortcuts import ShortcutSelect, register_shortcut
from .widths import WidthFloor, spectral_floors, width_options

__all__ = [
    "IMPORTANCE",
    "ChannelError",
    "ChannelGraph",
    "ChannelGroup",
    "ShortcutSelect",
    "WidthFloor",
    "channel_graph",
    "channel_scores",
    "keep_top",
    "prune_channels_",
    "register_shortcut",
    "spectral_floors",
    "width_options",
]
