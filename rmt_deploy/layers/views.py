"""What a Linear/Conv2d-like layer computes, in plain terms, whatever its class.

Real models subclass nn.Conv2d and nn.Linear and do part of the work in `forward`: timm's
Conv2dSame and EfficientNet's Conv2dStaticSamePadding pad the input first, StdConv2d
standardizes its weight. A compressed form has to do the same, so planning and compression
read every target through a LayerView: an input transform (`pad`), the weight the computation
really multiplies by, the bias and the convolution geometry. Adapters turn a module into its
view; they are registered by class name (no import of timm or EfficientNet needed) and looked
up along the class's MRO. `verify_view` checks a view against the module's own forward on a
real input, so a subclass nobody registered is either proven plain or skipped with the reason.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class SamePad2d(nn.Module):
    """TensorFlow 'SAME' zero padding computed from the input size, as timm's Conv2dSame and
    EfficientNet's dynamic-padding convolutions do in their forward."""

    def __init__(self, kernel_size, stride, dilation):
        super().__init__()
        self.kernel_size, self.stride, self.dilation = (
            tuple(kernel_size),
            tuple(stride),
            tuple(dilation),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(
            x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True
        ):
            total = max((math.ceil(int(size) / s) - 1) * s + (k - 1) * d + 1 - int(size), 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}"


class ModePad2d(nn.Module):
    """Non-zero padding modes of nn.Conv2d (reflect, replicate, circular), done before the conv."""

    def __init__(self, pads: tuple[int, ...], mode: str):
        super().__init__()
        self.pads, self.mode = tuple(pads), mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads, mode=self.mode)

    def extra_repr(self) -> str:
        return f"pads={self.pads}, mode={self.mode!r}"


@dataclass
class LayerView:
    """A target layer as `y = op(pad(x), weight) + bias`, op a linear map or a 2-D conv."""

    module: nn.Module
    weight: torch.Tensor  # the weight the computation multiplies by (standardized, scaled …)
    bias: torch.Tensor | None
    pad: nn.Module | None = None  # input transform the module does in its forward
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def kind(self) -> str:
        return "linear" if self.weight.ndim == 2 else "conv2d"

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """m × n of the matrix view (a conv kernel is C_out × C_in·kh·kw)."""
        return int(self.weight.shape[0]), int(self.weight[0].numel())

    @property
    def kernel_size(self) -> tuple[int, int]:
        return tuple(self.weight.shape[-2:]) if self.kind == "conv2d" else (1, 1)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pad is None else self.pad(x)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's output computed from the view (with `weight` in place of its own)."""
        weight = self.weight if weight is None else weight
        x = self.transform_input(x)
        if self.kind == "linear":
            return F.linear(x, weight, self.bias)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def samples(self, x: torch.Tensor) -> torch.Tensor:
        """The input vectors the weight's matrix view multiplies, one row each: the last axis of
        a Linear's input, the im2col patches of a conv's (every spatial position a sample)."""
        x = self.transform_input(x)
        if self.kind == "linear":
            return x.reshape(-1, x.shape[-1])
        if self.kernel_size == (1, 1) and self.padding == (0, 0):  # pointwise: no im2col needed
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
            return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        x = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        return x.transpose(1, 2).reshape(-1, x.shape[1])

    def input_transform(self) -> nn.Module | None:
        """A copy of the input transform for a compressed form to run first."""
        return None if self.pad is None else copy.deepcopy(self.pad)


Adapter = Callable[[nn.Module], LayerView]
ADAPTERS: dict[str, Adapter] = {}


def register_layer_adapter(*class_names: str):
    """Decorator: `@register_layer_adapter("MyConv")` tells rmt-deploy what `MyConv` computes.

    Registered by class name so that timm and EfficientNet need not be imported; the name is
    matched along the MRO, and every view is checked against the module's own forward when a
    real input is at hand.
    """

    def wrap(fn: Adapter) -> Adapter:
        for name in class_names:
            ADAPTERS[name] = fn
        return fn

    return wrap


def adapter_for(module: nn.Module) -> tuple[str, Adapter] | None:
    """(class name the adapter was registered for, adapter), nearest along the MRO."""
    for cls in type(module).__mro__:
        if cls.__name__ in ADAPTERS:
            return cls.__name__, ADAPTERS[cls.__name__]
    return None


def overrides_forward(module: nn.Module, registered: str) -> bool:
    """True when a class below the one the adapter was registered for defines its own forward:
    the adapter then describes a parent's computation, which the module may not share."""
    for cls in type(module).__mro__:
        if cls.__name__ == registered:
            return False
        if "forward" in vars(cls):
            return True
    return False


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _same_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """nn.Conv2d's padding='same' as explicit (left, right, top, bottom): the extra pixel of an
    odd total goes right/bottom, as torch does."""
    pads: list[int] = []
    for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation), strict=True):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)  # type: ignore[return-value]


@register_layer_adapter("Linear")
def _linear_view(module: nn.Module) -> LayerView:
    return LayerView(module, module.weight, module.bias)


def _conv_view(module: nn.Module, weight: torch.Tensor | None = None) -> LayerView:
    """nn.Conv2d's own computation; a non-zero padding mode or a string padding becomes an
    explicit input transform so that every view has plain integer padding."""
    pad: nn.Module | None = None
    padding = module.padding
    if module.padding_mode != "zeros":
        pad, padding = ModePad2d(module._reversed_padding_repeated_twice, module.padding_mode), 0
    elif padding == "same":
        pad, padding = nn.ZeroPad2d(_same_padding(module)), 0
    elif padding == "valid":
        padding = 0
    return LayerView(
        module,
        module.weight if weight is None else weight,
        module.bias,
        pad,
        _pair(module.stride),
        _pair(padding),
        _pair(module.dilation),
        module.groups,
    )


register_layer_adapter("Conv2d")(_conv_view)


@register_layer_adapter("Conv2dSame", "Conv2dDynamicSamePadding", "Conv2dSameExport")
def _dynamic_same_view(module: nn.Module) -> LayerView:
    """timm's Conv2dSame(Export), EfficientNet's Conv2dDynamicSamePadding: TF 'SAME' padding
    computed from the input size in forward, then the conv with no padding."""
    view = _conv_view(module)
    view.pad = SamePad2d(view.kernel_size, view.stride, view.dilation)
    return view


@register_layer_adapter("Conv2dStaticSamePadding")
def _static_same_view(module: nn.Module) -> LayerView:
    """EfficientNet(-Lite)'s conv: `static_padding` (ZeroPad2d or identity) runs first."""
    view = _conv_view(module)
    view.pad = copy.deepcopy(module.static_padding)
    return view


def standardized_weight(module: nn.Module, gain: torch.Tensor | None = None) -> torch.Tensor:
    """Weight standardization (Qiao et al. 2019): each output filter to zero mean and unit
    (biased) variance, eps inside the root; times `gain` per filter (NFNets' scaled WS)."""
    w = module.weight.reshape(module.out_channels, -1)
    mean = w.mean(dim=1, keepdim=True)
    var = w.var(dim=1, unbiased=False, keepdim=True)
    w = (w - mean) / torch.sqrt(var + module.eps)
    if gain is not None:
        w = w * gain.reshape(-1, 1)
    return w.reshape_as(module.weight)


def _same_pad_if_asked(view: LayerView, module: nn.Module) -> LayerView:
    if getattr(module, "same_pad", False):
        view.pad = SamePad2d(view.kernel_size, view.stride, view.dilation)
    return view


@register_layer_adapter("StdConv2d", "StdConv2dSame")
def _std_conv_view(module: nn.Module) -> LayerView:
    """timm's weight-standardized convs (BiT ResNet-V2, ViT hybrids)."""
    return _same_pad_if_asked(_conv_view(module, standardized_weight(module)), module)


@register_layer_adapter("ScaledStdConv2d", "ScaledStdConv2dSame")
def _scaled_std_conv_view(module: nn.Module) -> LayerView:
    """timm's scaled weight standardization (NFNets): standardized, times gain·scale."""
    weight = standardized_weight(module, module.gain * module.scale)
    return _same_pad_if_asked(_conv_view(module, weight), module)


@torch.no_grad()
def layer_view(module: nn.Module) -> LayerView:
    """The view of a Linear/Conv2d module (its adapter's, or the plain one of its base)."""
    found = adapter_for(module)
    if found is None:
        raise TypeError(f"no layer adapter for {type(module).__name__}")
    view = found[1](module)
    view.weight = view.weight.detach()
    return view


@torch.no_grad()
def view_mismatch(view: LayerView, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Relative max |Δ| between the module's own output `y` on `x` and the view's, or None when
    they agree to float32 rounding."""
    mine = view(x)
    if mine.shape != y.shape:
        return float("inf")
    scale = float(y.abs().max()) + 1e-12
    gap = float((mine - y).abs().max()) / scale
    return None if gap <= 1e-4 else gap
