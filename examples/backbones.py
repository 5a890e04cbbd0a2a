"""Models that are not classifiers, for planning by fidelity (cosine of the outputs).

Used by `examples/backbone_cosine.yaml` as `model: examples/backbones.py:<function>`; any
`path/file.py:callable` or `package.module:callable` returning an nn.Module works the same way.
"""

from __future__ import annotations

from torch import nn


def efficientnet_lite1_features() -> nn.Module:
    """The pretrained EfficientNet-Lite1 without its classifier: 1280-d pooled features."""
    from rmt_deploy import load_model

    model = load_model("efficientnet_lite1")
    model._fc = nn.Identity()
    model.pretrained_cfg = {**model.pretrained_cfg, "num_classes": 0}
    return model


def vit_tiny_features() -> nn.Module:
    """The CIFAR ViT trained here as a timm backbone (num_classes=0): 192-d pooled tokens."""
    from rmt_deploy import load_model

    model = load_model("cifar_vit_tiny")
    model.reset_classifier(0)
    return model
