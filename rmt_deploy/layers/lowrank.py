"""Factorized layers: W (m×n) ≈ L·R with L m×r and R r×n, run as two plain layers.

They are ordinary nn.Modules (two Linear or two Conv2d) so they train, print and export to
ONNX as two MatMul/Conv nodes without custom ops.
"""

from __future__ import annotations

import torch
from torch import nn

from .views import LayerView


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
    """[input transform] → k×k conv C_in → rank (the layer's stride/padding/dilation) → 1×1 conv
    rank → C_out. The input transform is what the original layer did in its forward before the
    conv (TF 'SAME' padding, a non-zero padding mode); it has no parameters."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        rank: int,
        *,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        bias: bool = True,
        pad: nn.Module | None = None,
    ):
        super().__init__()
        if not rank > 0:
            raise ValueError(f"rank must be positive, got {rank}")
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.pad = pad
        self.first = nn.Conv2d(
            in_channels, rank, kernel_size, stride=stride, padding=padding, dilation=dilation,
            bias=False,
        )  # fmt: skip
        self.second = nn.Conv2d(rank, out_channels, 1, bias=bias)

    @classmethod
    def like(cls, view: LayerView, rank: int) -> LowRankConv2d:
        """A factorized layer with the geometry and input transform of `view` (weights unset)."""
        if view.groups != 1:
            raise ValueError("grouped convolutions cannot be factorized as one matrix")
        return cls(
            view.weight.shape[1],
            view.weight.shape[0],
            view.kernel_size,
            rank,
            stride=view.stride,
            padding=view.padding,
            dilation=view.dilation,
            bias=view.bias is not None,
            pad=view.input_transform(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = self.pad(x)
        return self.second(self.first(x))

    @classmethod
    def from_factors(
        cls, view: LayerView, left: torch.Tensor, right: torch.Tensor
    ) -> LowRankConv2d:
        """left: C_out×r, right: r×(C_in·kh·kw); the bias comes from `view`."""
        layer = cls.like(view, left.shape[1])
        with torch.no_grad():
            layer.first.weight.copy_(right.reshape(layer.first.weight.shape))
            layer.second.weight.copy_(left.reshape(layer.second.weight.shape))
            if view.bias is not None:
                layer.second.bias.copy_(view.bias)
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


def lowrank_like(view: LayerView, rank: int) -> nn.Module:
    """A factorized layer of `view`'s shape and geometry (weights unset: for timing and for
    loading a compressed checkpoint)."""
    if view.kind == "linear":
        out_features, in_features = view.weight.shape
        return LowRankLinear(in_features, out_features, rank, view.bias is not None)
    return LowRankConv2d.like(view, rank)


def lowrank_from_view(view: LayerView, left: torch.Tensor, right: torch.Tensor) -> nn.Module:
    """The factorized replacement of `view`'s layer: W ≈ left @ right (matrix view)."""
    if view.kind == "linear":
        return LowRankLinear.from_factors(left, right, view.bias)
    return LowRankConv2d.from_factors(view, left, right)
