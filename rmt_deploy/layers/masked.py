"""Linear/Conv2d whose weight is multiplied by a fixed 0/1 mask in every forward pass.

Because the forward uses weight·mask, pruned entries get zero gradient and can never come
back, whatever the optimizer (momentum, weight decay) does to the stored weight: masks hold
through fine-tuning and DDP by construction. `fold_()` writes the mask into the weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .views import LayerView


class _MaskedMixin:
    weight: nn.Parameter
    weight_mask: torch.Tensor

    def _init_mask(self, mask: torch.Tensor | None) -> None:
        if mask is None:
            mask = torch.ones_like(self.weight)
        if mask.shape != self.weight.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != weight {tuple(self.weight.shape)}")
        self.register_buffer("weight_mask", mask.to(self.weight.dtype).clone())
        with torch.no_grad():
            self.weight.mul_(self.weight_mask)

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.weight_mask

    @property
    def density(self) -> float:
        return float(self.weight_mask.mean())

    @torch.no_grad()
    def fold_(self) -> None:
        self.weight.mul_(self.weight_mask)


class MaskedLinear(_MaskedMixin, nn.Linear):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        mask: torch.Tensor | None = None,
    ):
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._init_mask(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.3f}"


class MaskedConv2d(_MaskedMixin, nn.Conv2d):
    """A masked conv; `pad` is the input transform the original layer did in its forward."""

    def __init__(self, *args, mask: torch.Tensor | None = None, pad=None, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self.pad = pad
        self._init_mask(mask)

    @classmethod
    def like(cls, view: LayerView) -> MaskedConv2d:
        """A masked conv with `view`'s geometry and input transform (all-ones mask)."""
        out_channels, in_per_group = view.weight.shape[:2]
        return cls(
            in_per_group * view.groups,
            out_channels,
            view.kernel_size,
            stride=view.stride,
            padding=view.padding,
            dilation=view.dilation,
            groups=view.groups,
            bias=view.bias is not None,
            pad=view.input_transform(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = self.pad(x)
        return self._conv_forward(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.3f}"


MASKED_TYPES = (MaskedLinear, MaskedConv2d)


def masked_like(view: LayerView) -> nn.Module:
    """A masked layer of `view`'s shape and geometry, all-ones mask (weights unset)."""
    if view.kind == "linear":
        out_features, in_features = view.weight.shape
        return MaskedLinear(in_features, out_features, view.bias is not None)
    return MaskedConv2d.like(view)


@torch.no_grad()
def masked_from_view(view: LayerView, mask: torch.Tensor) -> nn.Module:
    """The masked replacement of `view`'s layer: its effective weight and bias, `mask` applied."""
    layer = masked_like(view)
    layer.weight.copy_(view.weight)
    if view.bias is not None:
        layer.bias.copy_(view.bias)
    layer.weight_mask.copy_(mask)
    layer.fold_()
    return layer.to(view.weight.device)
