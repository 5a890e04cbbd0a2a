"""Build a model by name: CIFAR ResNets with their real checkpoints, timm models, or user code.

Names:
- `cifar_resnet20|32|44|56`: the CIFAR-10 ResNets; the pretrained checkpoint from the shared
  assets is loaded unless `checkpoint` is given or `pretrained=False`;
- `cifar_vit_tiny`: a small ViT trained here on CIFAR-10 (checkpoint shipped in the package);
- any timm model name (random init; no hub download is attempted), with an optional local
  checkpoint;
- `package.module:callable`: a function returning an `nn.Module`.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, UnknownModelError
from ..paths import assets_dir
from .checkpoint import (
    check_finite,
    load_checkpoint_into,
    read_plan_metadata,
    read_state_dict,
    save_checkpoint,
)
from .cifar_resnet import DEPTHS, CifarResNet
from .cifar_vit import VIT_CHECKPOINT, cifar_vit_tiny

__all__ = [
    "CifarResNet",
    "DataConfig",
    "check_finite",
    "cifar_checkpoint",
    "load_model",
    "read_state_dict",
    "save_checkpoint",
]

_CIFAR_NAME = re.compile(r"^cifar_resnet(\d+)$")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def cifar_checkpoint(depth: int, assets: str | os.PathLike[str] | None = None) -> Path:
    """The real pretrained checkpoint `weights/resnet{depth}-<sha>.th` in the shared assets."""
    matches = sorted((assets_dir(assets) / "weights").glob(f"resnet{depth}-*.th"))
    if not matches:
        raise CheckpointError(
            f"no pretrained CIFAR ResNet-{depth} checkpoint (weights/resnet{depth}-*.th) in "
            f"{assets_dir(assets)}"
        )
    return matches[0]


def load_model(
    name: str,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    pretrained: bool = True,
    assets: str | os.PathLike[str] | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build the model `name` on CPU in eval mode, loading `checkpoint` if given.

    A compressed checkpoint (written by `rmt-deploy compress`) carries its plan: the layers are
    rewritten to the compressed structure before the weights are loaded.
    """
    model = _build(name, **kwargs)
    cifar = _CIFAR_NAME.match(name)
    if checkpoint is None and cifar and pretrained:
        checkpoint = cifar_checkpoint(int(cifar.group(1)), assets)
    if checkpoint is None and name == "cifar_vit_tiny" and pretrained:
        if not VIT_CHECKPOINT.is_file():
            raise CheckpointError(
                f"the trained CIFAR ViT checkpoint {VIT_CHECKPOINT} is missing: train it with "
                "benchmarks/train_vit.py or pass pretrained=False"
            )
        checkpoint = VIT_CHECKPOINT
    if checkpoint is not None:
        plan_json = read_plan_metadata(checkpoint)
        if plan_json is not None:
            import json

            from ..compress import compress_
            from ..plan import CompressionPlan

            compress_(model, CompressionPlan.from_dict(json.loads(plan_json)), structure_only=True)
        load_checkpoint_into(model, checkpoint)
    else:
        check_finite(model, source=name)
    return model.eval()


def _build(name: str, **kwargs: object) -> nn.Module:
    cifar = _CIFAR_NAME.match(name)
    if cifar:
        depth = int(cifar.group(1))
        if depth not in DEPTHS:
            raise UnknownModelError(
                f"unknown model {name!r}: CIFAR ResNets exist in depths {sorted(DEPTHS)}"
            )
        return CifarResNet(depth, **kwargs)  # type: ignore[arg-type]
    if name == "cifar_vit_tiny":
        return cifar_vit_tiny(**kwargs)
    if ":" in name:
        return _from_callable(name, **kwargs)
    import timm

    if not timm.is_model(name):
        choices = timm.list_models() + [f"cifar_resnet{d}" for d in DEPTHS] + ["cifar_vit_tiny"]
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}: not a timm model, a CIFAR ResNet (cifar_resnet20|32|44|56) "
            f"or 'package.module:callable'{hint}"
        )
    return timm.create_model(name, pretrained=False, **kwargs)


def _from_callable(spec: str, **kwargs: object) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownModelError(f"cannot import model factory {spec!r}: {exc}") from exc
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise UnknownModelError(f"{spec!r} returned a {type(model).__name__}, not an nn.Module")
    return model


@dataclass(frozen=True)
class DataConfig:
    """How a model expects its images: size, normalization, resize-and-crop."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = _IMAGENET_MEAN
    std: tuple[float, ...] = _IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    @classmethod
    def from_model(cls, model: nn.Module) -> DataConfig:
        """Read timm's `pretrained_cfg` (our CIFAR ResNets carry the same keys), else defaults."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        default = cls()
        return cls(
            input_size=tuple(cfg.get("input_size", default.input_size)),  # type: ignore[arg-type]
            mean=tuple(cfg.get("mean", default.mean)),
            std=tuple(cfg.get("std", default.std)),
            crop_pct=float(cfg.get("crop_pct", default.crop_pct)),
            interpolation=str(cfg.get("interpolation", default.interpolation)),
        )
