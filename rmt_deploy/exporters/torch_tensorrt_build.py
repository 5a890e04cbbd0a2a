"""Torch-TensorRT path: compile the PyTorch model with `torch_tensorrt.compile` (dynamo IR)
and save it as an ExportedProgram, for deployments that stay in PyTorch.

Thin by design: it needs an NVIDIA GPU and the torch-tensorrt package matching the installed
torch; where that is missing it raises TensorRTUnavailable with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import RmtDeployError
from ..paths import atomic_path
from .tensorrt_build import PRECISIONS, SINGLE_BATCH, BatchProfile, TensorRTUnavailable

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def compile_torch_tensorrt(
    model: nn.Module,
    out_path: str | os.PathLike[str],
    input_shape: tuple[int, int, int],
    *,
    precision: str = "fp16",
    batch: BatchProfile = SINGLE_BATCH,
    sparse_weights: bool = True,
    workspace_mb: int = 2048,
) -> Path:
    """Compile with Torch-TensorRT and save the ExportedProgram atomically to `out_path`."""
    if precision not in PRECISIONS:
        raise RmtDeployError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "torch-tensorrt is not installed (it needs an NVIDIA GPU and a build matching "
            f"torch {torch.__version__})"
        ) from exc
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("Torch-TensorRT needs a CUDA device; none is visible")
    model = model.eval().cuda()
    spec = torch_tensorrt.Input(
        min_shape=(batch.minimum, *input_shape),
        opt_shape=(batch.optimum, *input_shape),
        max_shape=(batch.maximum, *input_shape),
        dtype=torch.float32,
    )
    compiled = torch_tensorrt.compile(
        model,
        ir="dynamo",
        inputs=[spec],
        enabled_precisions={_DTYPES[precision]},
        sparse_weights=sparse_weights,
        workspace_size=workspace_mb << 20,
    )
    example = torch.randn(batch.optimum, *input_shape, device="cuda")
    with atomic_path(out_path) as tmp:
        target = Path(str(tmp) + ".ep")  # torch_tensorrt.save wants the .ep suffix
        try:
            torch_tensorrt.save(compiled, str(target), inputs=[example])
            os.replace(target, tmp)
        finally:
            target.unlink(missing_ok=True)
    return Path(out_path)
