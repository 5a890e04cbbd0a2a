"""A DeiT-Tiny-like ViT for 32×32 CIFAR-10 images (timm `VisionTransformer`, patch 4).

No pretrained ViT can be downloaded here, so rmt-deploy trains this one itself
(`benchmarks/train_vit.py`) and ships the checkpoint in `weights/`: a transformer benchmark
model with real accuracy, like the CIFAR ResNets.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .cifar_resnet import cifar_pretrained_cfg

VIT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "cifar_vit_tiny.safetensors"

# 192 wide, 3 heads (as DeiT-Tiny), 6 blocks instead of 12: ~2.7 M parameters, 65 tokens.
VIT_TINY = dict(
    img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0, num_classes=10
)


def cifar_vit_tiny(**overrides: object) -> nn.Module:
    """The CIFAR-10 ViT architecture (random init); `load_model` adds the trained weights."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(**{**VIT_TINY, **overrides})
    model.pretrained_cfg = cifar_pretrained_cfg(int(model.num_classes))
    return model
