"""Linear/Conv2d whose weight is multiplied by a fixed 0/1 mask in every forward pass.

Because the forward uses weight·mask, pruned entries get zero gradient and can never come
back, whatever the optimizer (momentum, weight decay) does to the stored weight: masks hold
through fine-tuning and DDP by construction. `fold_()` writes the mask into the weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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

    @torch.no_grad()
    def _take_from(self, dense: nn.Module, mask: torch.Tensor):
        """Copy the dense layer's weight and bias, install `mask`, zero the pruned entries."""
        self.weight.copy_(dense.weight)
        if dense.bias is not None:
            self.bias.copy_(dense.bias)
        self.weight_mask.copy_(mask)
        self.fold_()
        return self.to(dense.weight.device)


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

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: torch.Tensor) -> MaskedLinear:
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            mask=torch.ones_like(linear.weight),
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.weight_mask.copy_(mask)
        layer.fold_()
        return layer.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.3f}"


class MaskedConv2d(_MaskedMixin, nn.Conv2d):
    def __init__(self, *args, mask: torch.Tensor | None = None, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_mask(mask)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, mask: torch.Tensor) -> MaskedConv2d:
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )
        return layer._take_from(conv, mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.3f}"


MASKED_TYPES = (MaskedLinear, MaskedConv2d)


def masked_from_dense(module: nn.Module, mask: torch.Tensor) -> nn.Module:
    if isinstance(module, nn.Linear):
        return MaskedLinear.from_dense(module, mask)
    if isinstance(module, nn.Conv2d):
        return MaskedConv2d.from_dense(module, mask)
    raise TypeError(f"cannot mask a {type(module).__name__}: only Linear and Conv2d")
