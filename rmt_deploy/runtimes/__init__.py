"""Runtimes, one file per family (ONNX Runtime, OpenVINO, PyTorch, TensorRT), in one registry:
each knows its deployments and their artifacts, whether this machine runs them, how to prepare
a model variant and how to time one layer. The planner, the benchmark and `targets: auto` all
read it, so a new runtime or precision is one file here."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import RmtDeployError
from . import onnxruntime, openvino, pytorch, tensorrt  # noqa: F401  (registers the families)
from .base import BackendUnavailable, Deployment, Prepared, Runtime, Variant
from .registry import BACKENDS, DEPLOYMENTS, RUNTIMES, register_runtime, runtime_for

__all__ = [
    "BACKENDS",
    "DEPLOYMENTS",
    "RUNTIMES",
    "BackendUnavailable",
    "Deployment",
    "Prepared",
    "Runtime",
    "Variant",
    "prepare",
    "register_runtime",
    "runtime_for",
    "unavailable",
]


def unavailable(deployment: Deployment) -> str | None:
    """Why `deployment` cannot run on this machine (None when it can)."""
    return RUNTIMES[deployment.runtime].unavailable(deployment)


def prepare(
    name: str,
    model: nn.Module | None,
    onnx_path: Path | None,
    engine: Path | None = None,
    onnx_int8: Path | None = None,
    openvino_int8: Path | None = None,
    **options,
) -> Prepared:
    """The runner of backend `name` for a variant: its PyTorch model, its fp32 ONNX, its INT8
    (QDQ) ONNX, NNCF's IR, its TensorRT engine — each backend takes the one it runs."""
    runtime = runtime_for(name)
    if runtime is None:
        raise RmtDeployError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    variant = Variant(model, onnx_path, onnx_int8, openvino_int8, engine)
    return runtime.prepare(name, variant, options)
