"""CIFAR-10 ResNets (He et al. 2016, Sec. 4.2) with "option A" shortcuts.

Matches the layout of the pretrained checkpoints in the shared assets (akamaster's
pytorch_resnet_cifar10): conv1/bn1, layer{1,2,3}.{i}.conv1/bn1/conv2/bn2, linear.
Written from the paper's description: 3x3 conv 3→16, three stages of n basic blocks with
16/32/64 channels, stride 2 at the start of stages 2 and 3, parameter-free shortcuts that
subsample and zero-pad channels, global average pooling, a 64→10 linear layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9}
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)
# CIFAR-10's classes in the order of its label indices (the checkpoints' output order).
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def cifar_pretrained_cfg(num_classes: int = 10) -> dict:
    """32×32 inputs, no resize: the same keys as timm's pretrained_cfg, so one data-config
    reader serves timm models and the CIFAR models alike. `label_names` (10 classes) lets a
    test folder holding only some class sub-folders be labelled by name, not by position."""
    cfg = {
        "input_size": (3, 32, 32),
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "num_classes": num_classes,
    }
    if num_classes == len(CIFAR10_CLASSES):
        cfg["label_names"] = CIFAR10_CLASSES
    return cfg


class PadShortcut(nn.Module):
    """Option-A shortcut: take every other pixel and zero-pad the new channels on both sides."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}"


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = PadShortcut(planes - in_planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))  # add the shortcut, then ReLU


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 56, num_classes: int = 10) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"CIFAR ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        blocks = DEPTHS[depth]
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.linear = nn.Linear(64, num_classes)
        self.pretrained_cfg = cifar_pretrained_cfg(num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
