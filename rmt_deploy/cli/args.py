"""The arguments verbs share: checked number types (one-line errors naming the valid range),
the model argument, preprocessing overrides, `--set KEY=VALUE`, devices."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..errors import RmtDeployError

MODEL_HELP = (
    "cifar_resnet20|32|44|56, cifar_vit_tiny, a timm model name, package.module:callable, or "
    "a `rmt-deploy compress` output (its folder or its model.safetensors)"
)


def number(
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
):
    """An argparse type: a finite float in the given range; the error names the valid range
    (NaN and inf pass no comparison honestly, so they are refused first)."""
    if low is not None and high is not None:
        valid = f"lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        valid = f"be a finite number {'>' if low_open else '≥'} {low:g}"
    else:
        valid = "be a finite number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"{name} must {valid}, got {text}")
        return value

    return parse


def fraction(low: float, high: float, name: str):
    return number(name, low, high, low_open=True, high_open=True)


def int_at_least(minimum: int, name: str = ""):
    def parse(text: str) -> int:
        what = f"{name} must be an integer" if name else "expected an integer"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} ≥ {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} ≥ {minimum}, got {value}")
        return value

    return parse


def device(text: str) -> str:
    """cpu, cuda or cuda:N, refused while parsing: an unknown device found after the other
    stages ran wastes their time."""
    from ..devices import DEVICE_PATTERN

    if not DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            f"--device must be cpu, cuda or cuda:N (N a GPU index), got {text!r}"
        )
    return text


def check_device(name: str, flag: str = "--device") -> None:
    """A CUDA device that is not there: said before any work, not by a crash later."""
    if name == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise RmtDeployError(f"{flag} {name}: no CUDA device is visible here; use {flag} cpu")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise RmtDeployError(
            f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
            f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})"
        )


def float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def size_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 240 or 3,240,240, got {text!r}"
        ) from None


def positive_ints(text: str, what: str) -> list[int]:
    """Positive integers from a comma list (`--batches 1,8,64`)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise RmtDeployError(f"{what} takes a comma list of integers, got {text!r}") from exc
    if not values or min(values) <= 0:
        raise RmtDeployError(f"{what} takes positive integers, got {text!r}")
    return values


def settings(pairs: list[str]) -> dict[str, object]:
    """`--set KEY=VALUE` pairs: each value parsed as JSON where it is JSON, else a string."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise RmtDeployError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
        if isinstance(out[key], float) and not math.isfinite(out[key]):
            raise RmtDeployError(f"--set {key} must be a finite number, got {raw}")
    return out


def add_model_args(
    parser: argparse.ArgumentParser, checkpoint: bool = True, random_init: bool = True
) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    if checkpoint:
        parser.add_argument(
            "--checkpoint", type=Path, help="weights: .safetensors or .pth/.pt state dict"
        )
    if random_init:
        parser.add_argument(
            "--random-init",
            action="store_true",
            help="do not load the pretrained CIFAR ResNet checkpoint from the shared assets",
        )


def add_preprocess_args(parser: argparse.ArgumentParser) -> None:
    """Preprocessing for any model (each overrides the model's own pretrained_cfg)."""
    group = parser.add_argument_group("preprocessing (default: the model's own)")
    group.add_argument("--input-size", type=size_list, help="H,W or C,H,W (e.g. 240,240)")
    group.add_argument("--mean", type=float_list, help="per-channel mean, e.g. 0.5,0.5,0.5")
    group.add_argument("--std", type=float_list, help="per-channel std, e.g. 0.5,0.5,0.5")
    group.add_argument("--interpolation", help="resize interpolation: bilinear, bicubic, …")
    group.add_argument(
        "--crop-pct",
        type=number("--crop-pct", 0.0, 1.0, low_open=True),
        help="resize to size/crop_pct, then crop",
    )


def preprocess_overrides(args: argparse.Namespace) -> dict[str, object]:
    size = args.input_size
    if size is not None and len(size) == 1:
        size = [size[0], size[0]]
    return {
        "input_size": size,
        "mean": args.mean,
        "std": args.std,
        "interpolation": args.interpolation,
        "crop_pct": args.crop_pct,
    }
