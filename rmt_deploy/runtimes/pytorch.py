"""PyTorch: eager on the CPU, fp16/bf16 on CUDA (2:4 layers on the sparse tensor cores), and
torch.compile as a benchmark-only backend. Layers are timed as modules, not exported."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import BackendUnavailable, Deployment, Prepared, Runtime, Variant
from .registry import register_runtime

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CUDA_PRECISIONS = {"torch-cuda-fp16": "fp16", "torch-cuda-bf16": "bf16"}


@register_runtime
class PyTorch(Runtime):
    family = "torch"
    deployments = (
        Deployment("torch", "torch", "fp32", "cpu", "model", "PyTorch eager"),
        Deployment("torch-cuda-fp16", "torch", "fp16", "cuda", "model", "PyTorch CUDA fp16"),
        Deployment("torch-cuda-bf16", "torch", "bf16", "cuda", "model", "PyTorch CUDA bf16"),
    )
    extra_backends = ("torch-compile",)

    def prepare(self, backend: str, variant: Variant, options: dict) -> Prepared:
        if backend == "torch-compile":
            return compiled(variant.model, options)
        if backend in CUDA_PRECISIONS:
            precision = CUDA_PRECISIONS[backend]
            options = {**options, "device": "cuda", "precision": precision, "sparse24": True}
        return eager(variant.model, backend, options)

    def layer_runner(self, deployment: Deployment, module: nn.Module, shape, folder: Path,
                     tag: str, threads: int):  # fmt: skip
        options = {"threads": threads, "device": deployment.device,
                   "precision": deployment.precision}  # fmt: skip
        return eager(module, "torch", options).run


def _need_model(model, name: str) -> nn.Module:
    if model is None:
        raise BackendUnavailable(f"backend {name} needs the PyTorch model")
    return model


def _device(options: dict) -> str:
    device = options.get("device", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA device is visible")
    return device


def runner(module: nn.Module, device: str, dtype: torch.dtype) -> Prepared:
    """A module run on `device` in `dtype`, outputs back as float32 numpy."""

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device, dtype)
            return module(x).float().cpu().numpy()

    cuda = device.startswith("cuda")
    label = torch.cuda.get_device_name() if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dtype_name = str(dtype).replace("torch.", "")
    return Prepared(run, f"torch {label} {dtype_name}", torch.get_num_threads(), sync, cuda)


def eager(model, backend: str, options: dict) -> Prepared:
    """A copy of the model (the caller's stays on the CPU) at the options' device/precision."""
    module = copy.deepcopy(_need_model(model, backend)).eval()
    device = _device(options)
    dtype = DTYPES[options.get("precision", "fp32")]
    module = module.to(device, dtype)
    if options.get("sparse24") and device.startswith("cuda") and dtype != torch.float32:
        from ..layers import semi_structured_

        semi_structured_(module, dtype)  # 2:4 masked layers onto the sparse tensor cores
    return runner(module, device, dtype)


def compiled(model, options: dict) -> Prepared:
    module = copy.deepcopy(_need_model(model, "torch-compile")).eval()
    device = _device(options)
    try:
        made = torch.compile(module.to(device))
    except Exception as exc:
        raise BackendUnavailable(f"torch.compile cannot compile this model: {exc}") from exc
    return runner(made, device, torch.float32)
