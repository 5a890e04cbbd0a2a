"""Parameter-free shortcuts made explicit, so the dependency graph sees how they couple channels.

ResNet's option-A shortcut subsamples the input and zero-pads new channels on both sides. Traced
as it is, the padding looks like an element-wise op between tensors of different widths and the
coupling between the stages' residual channels is lost. Written as a fixed 1×1 convolution
whose weight is a 0/1 selection matrix (input channel i → output channel pad + i, stride 2), it
computes exactly the same thing and Torch-Pruning prunes it like any convolution: removing a
residual channel of a stage removes that row, removing one of the stage before removes that
column. Its weight is frozen (recovery does not train it). Exposers are registered by class
name so a model package needs no import from here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..surgery import replace_module

# class name → (module, input channels) → an equivalent module the graph can prune
EXPOSERS: dict[str, Callable[[nn.Module, int], nn.Module]] = {}


class ShortcutSelect(nn.Conv2d):
    """A frozen 0/1 channel-selection convolution standing for a parameter-free shortcut."""

    def __init__(self, selection: torch.Tensor, stride: int) -> None:
        out_channels, in_channels = selection.shape
        super().__init__(in_channels, out_channels, 1, stride=stride, bias=False)
        self.weight.data = selection.reshape(out_channels, in_channels, 1, 1).clone()
        self.weight.requires_grad_(False)


def register_shortcut(class_name: str):
    """Decorator: `fn(module, in_channels) -> nn.Module` exposes shortcuts of that class."""

    def wrap(fn: Callable[[nn.Module, int], nn.Module]):
        EXPOSERS[class_name] = fn
        return fn

    return wrap


@register_shortcut("PadShortcut")
def _option_a(module: nn.Module, in_channels: int) -> nn.Module:
    extra = int(module.extra_channels)
    selection = torch.zeros(in_channels + extra, in_channels)
    pad = extra // 2
    selection[pad + torch.arange(in_channels), torch.arange(in_channels)] = 1.0
    return ShortcutSelect(selection, stride=2)


def forward_with_hooks(model: nn.Module, example: torch.Tensor, hooks: dict) -> None:
    """Run `model` once on `example` with forward hooks (module → hook), removed afterwards:
    how the channel code learns what a forward does (input widths, layer order)."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()


def expose_shortcuts_(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Replace every registered shortcut by its explicit form (in place); their names."""
    found = {n: m for n, m in model.named_modules() if type(m).__name__ in EXPOSERS}
    widths: dict[str, int] = {}
    hooks = {
        m: (lambda mod, args, out, n=n: widths.__setitem__(n, args[0].shape[1]))
        for n, m in found.items()
    }
    forward_with_hooks(model, example, hooks)
    for name, module in found.items():
        if name in widths:
            new = EXPOSERS[type(module).__name__](module, widths[name])
            replace_module(model, name, new.to(example.device))
    return sorted(widths)
