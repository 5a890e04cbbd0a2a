"""Factorized layers: W (m×n) ≈ L·R with L m×r and R r×n, run as two plain layers.

They are ordinary nn.Modules (two Linear or two Conv2d) so they train, print and export to
ONNX as two MatMul/Conv nodes without custom ops.
"""

from __future__ import annotations

import torch
from torch import nn


class LowRankLinear(nn.Module):
    """in → rank → out: `first` (no bias) then `second` (with the original bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        if not rank > 0:
            raise ValueError(f"rank must be positive, got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @classmethod
    def from_factors(
        cls, left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None
    ) -> LowRankLinear:
        """left: out×r, right: r×in (so W ≈ left @ right)."""
        layer = cls(right.shape[1], left.shape[0], left.shape[1], bias=bias is not None)
        with torch.no_grad():
            layer.first.weight.copy_(right)
            layer.second.weight.copy_(left)
            if bias is not None:
                layer.second.bias.copy_(bias)
        return layer

    def dense_weight(self) -> torch.Tensor:
        return self.second.weight @ self.first.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class LowRankConv2d(nn.Module):
    """k×k conv C_in → rank (same stride/padding/dilation), then 1×1 conv rank → C_out."""

    def __init__(self, conv: nn.Conv2d, rank: int):
        super().__init__()
        if conv.groups != 1:
            raise ValueError("grouped convolutions cannot be factorized as one matrix")
        if not rank > 0:
            raise ValueError(f"rank must be positive, got {rank}")
        self.in_channels, self.out_channels, self.rank = conv.in_channels, conv.out_channels, rank
        self.first = nn.Conv2d(
            conv.in_channels,
            rank,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=False,
            padding_mode=conv.padding_mode,
        )
        self.second = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @classmethod
    def from_factors(
        cls, conv: nn.Conv2d, left: torch.Tensor, right: torch.Tensor
    ) -> LowRankConv2d:
        """left: C_out×r, right: r×(C_in·kh·kw); the bias comes from `conv`."""
        layer = cls(conv, left.shape[1])
        with torch.no_grad():
            layer.first.weight.copy_(right.reshape(layer.first.weight.shape))
            layer.second.weight.copy_(left.reshape(layer.second.weight.shape))
            if conv.bias is not None:
                layer.second.bias.copy_(conv.bias)
        return layer

    def dense_weight(self) -> torch.Tensor:
        left = self.second.weight.flatten(1)
        return (left @ self.first.weight.flatten(1)).reshape(
            self.out_channels, self.in_channels, *self.first.kernel_size
        )

    def extra_repr(self) -> str:
        k = self.first.kernel_size
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={k}, rank={self.rank}, "
            f"stride={self.first.stride}, padding={self.first.padding}"
        )
