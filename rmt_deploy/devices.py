"""Where tensors live: one place that resolves a device name and checks it exists, so that
calibration, BatchNorm re-estimation, fine-tuning, evaluation and planning all run where the
config says — and say so clearly when it is not there."""

from __future__ import annotations

import re

import torch
from torch import nn

from .errors import RmtDeployError

# A device name as the CLI and configs take it: cpu, cuda or cuda:N.
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")


def resolve_device(device: str | torch.device | None, model: nn.Module | None = None):
    """`device`, or the device of `model`'s parameters when None; CUDA must be visible."""
    if device is None:
        param = next(model.parameters(), None) if model is not None else None
        return param.device if param is not None else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise RmtDeployError(f"unknown device {device!r}: use cpu or cuda[:N]") from exc
    if resolved.type not in ("cpu", "cuda"):
        raise RmtDeployError(f"unsupported device {device!r}: use cpu or cuda[:N]")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RmtDeployError(f"device {device!r} asked for but no CUDA device is visible")
    return resolved


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training on `device`: bf16 where the GPU has it, else fp16; none
    on the CPU (fp32 there)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
