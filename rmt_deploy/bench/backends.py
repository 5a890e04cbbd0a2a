"""Benchmark backends in a registry: each turns a model (or an exported file) into a callable
on numpy/torch inputs, or says why it cannot run here."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import RmtDeployError


class BackendUnavailable(RmtDeployError):
    """The backend is not installed or cannot run this model on this machine."""


@dataclass
class Prepared:
    run: Callable[[np.ndarray], np.ndarray]  # float32 NCHW batch → logits
    device: str
    threads: int
    synchronize: Callable[[], None] = lambda: None
    cuda: bool = False


BACKENDS: dict[str, Callable[..., Prepared]] = {}


def register_backend(name: str):
    def wrap(fn):
        BACKENDS[name] = fn
        return fn

    return wrap


def prepare(name: str, model: nn.Module | None, onnx_path: Path | None, **options) -> Prepared:
    if name not in BACKENDS:
        raise RmtDeployError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    return BACKENDS[name](model=model, onnx_path=onnx_path, **options)


def _need_model(model, name):
    if model is None:
        raise BackendUnavailable(f"backend {name} needs the PyTorch model")
    return model


def _torch_runner(module: nn.Module, device: str, dtype: torch.dtype) -> Prepared:
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device, dtype)
            return module(x).float().cpu().numpy()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    label = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return Prepared(
        run,
        f"torch {label} {str(dtype).replace('torch.', '')}",
        torch.get_num_threads(),
        sync,
        device.startswith("cuda"),
    )


def _device(options) -> str:
    device = options.get("device", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA device is visible")
    return device


@register_backend("torch")
def torch_eager(model=None, onnx_path=None, **options) -> Prepared:
    module = copy.deepcopy(_need_model(model, "torch")).eval()  # the caller's stays on CPU
    device = _device(options)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        options.get("precision", "fp32")
    ]
    return _torch_runner(module.to(device, dtype), device, dtype)


@register_backend("torch-compile")
def torch_compiled(model=None, onnx_path=None, **options) -> Prepared:
    module = copy.deepcopy(_need_model(model, "torch-compile")).eval()
    device = _device(options)
    try:
        compiled = torch.compile(module.to(device))
    except Exception as exc:
        raise BackendUnavailable(f"torch.compile cannot compile this model: {exc}") from exc
    return _torch_runner(compiled, device, torch.float32)


@register_backend("onnxruntime")
def onnxruntime_backend(model=None, onnx_path=None, **options) -> Prepared:
    if importlib.util.find_spec("onnxruntime") is None:
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)")
    if onnx_path is None or not Path(onnx_path).is_file():
        raise BackendUnavailable("backend onnxruntime needs an exported model.onnx")
    import onnxruntime as ort

    provider = options.get("provider", "CPUExecutionProvider")
    if provider not in ort.get_available_providers():
        raise BackendUnavailable(
            f"{provider} is not available in this onnxruntime "
            f"({', '.join(ort.get_available_providers())})"
        )
    so = ort.SessionOptions()
    threads = int(options.get("threads") or torch.get_num_threads())
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(onnx_path), so, providers=[provider])
    except Exception as exc:
        raise BackendUnavailable(f"onnxruntime cannot load {onnx_path}: {exc}") from exc
    name = session.get_inputs()[0].name
    return Prepared(lambda b: session.run(None, {name: b})[0], f"onnxruntime {provider}", threads)
