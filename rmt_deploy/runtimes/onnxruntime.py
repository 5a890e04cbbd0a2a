"""ONNX Runtime: fp32 and static INT8 (QDQ) on the CPU; its CUDA and TensorRT providers as
benchmark-only backends."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .base import (
    BackendUnavailable,
    Deployment,
    Prepared,
    Runtime,
    Variant,
    need_file,
    threads_of,
)
from .registry import register_runtime

PROVIDERS = {
    "onnxruntime": "CPUExecutionProvider",
    "onnxruntime-int8": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-trt": "TensorrtExecutionProvider",
}


def need_int8(path: Path | None, backend: str) -> Path:
    return need_file(
        path,
        f"backend {backend} needs the INT8 model (model.int8.onnx: the pipeline's export "
        "stage writes it when an int8 deployment is benchmarked)",
    )


@register_runtime
class OnnxRuntime(Runtime):
    family = "onnxruntime"
    deployments = (
        Deployment("onnxruntime", "onnxruntime", "fp32", "cpu", "onnx", "ONNX Runtime fp32"),
        Deployment(
            "onnxruntime-int8",
            "onnxruntime",
            "int8",
            "cpu",
            "onnx_int8",
            "ONNX Runtime static INT8 (QDQ, per-channel weights)",
        ),
    )
    extra_backends = ("onnxruntime-cuda", "onnxruntime-trt")

    def unavailable(self, deployment: Deployment) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return super().unavailable(deployment)

    def prepare(self, backend: str, variant: Variant, options: dict) -> Prepared:
        if backend == "onnxruntime-int8":
            path = need_int8(variant.onnx_int8, backend)
            return session(PROVIDERS[backend], path, options, " int8")
        return session(PROVIDERS[backend], variant.onnx, options)


def session(provider: str, onnx_path, options: dict, label: str = "") -> Prepared:
    """An ONNX Runtime session on `provider` (threads from `options`, spinning off)."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)")
    path = need_file(onnx_path, "backend onnxruntime needs an exported model.onnx")
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        raise BackendUnavailable(
            f"{provider} is not available in this onnxruntime "
            f"({', '.join(ort.get_available_providers())})"
        )
    from ..exporters.onnx_export import ort_session

    threads = threads_of(options)
    try:
        made = ort_session(path, threads, provider)
    except Exception as exc:
        raise BackendUnavailable(f"onnxruntime cannot load {onnx_path}: {exc}") from exc
    name = made.get_inputs()[0].name
    return Prepared(
        lambda b: made.run(None, {name: b})[0], f"onnxruntime {provider}{label}", threads
    )
