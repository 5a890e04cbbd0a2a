"""OpenVINO on the CPU: its default precision (bf16 where the CPU has it), f32, bf16, the QDQ
INT8 model and NNCF's INT8 IR."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..machine import openvino_capabilities
from .base import BackendUnavailable, Deployment, Prepared, Runtime, Variant, need_file, threads_of
from .onnxruntime import need_int8
from .registry import register_runtime

HINTS = {"openvino": None, "openvino-f32": "f32", "openvino-bf16": "bf16"}


def default_precision() -> str | None:
    """What OpenVINO's CPU plugin runs without a hint: bf16 where the CPU has it, else f32."""
    caps = openvino_capabilities()
    if not caps:
        return None
    return "bf16" if "BF16" in caps else "f32"


@register_runtime
class OpenVino(Runtime):
    family = "openvino"
    deployments = (
        Deployment("openvino", "openvino", "default", "cpu", "onnx", "OpenVINO, its default"),
        Deployment("openvino-f32", "openvino", "f32", "cpu", "onnx", "OpenVINO f32"),
        Deployment("openvino-bf16", "openvino", "bf16", "cpu", "onnx", "OpenVINO bf16"),
        Deployment("openvino-int8", "openvino", "int8", "cpu", "onnx_int8", "OpenVINO INT8 (QDQ)"),
        Deployment(
            "openvino-nncf-int8",
            "openvino",
            "int8",
            "cpu",
            "openvino_int8",
            "OpenVINO INT8 by NNCF (nncf.quantize, default preset)",
        ),
    )

    def unavailable(self, deployment: Deployment) -> str | None:
        default = default_precision()
        if default is None:
            return "OpenVINO is not installed (pip install openvino)"
        if deployment.precision == "bf16" and default != "bf16":
            return "this CPU has no bf16 in OpenVINO (it needs AVX512_BF16 or AMX)"
        if deployment.precision == "int8" and "INT8" not in openvino_capabilities():
            return "OpenVINO reports no INT8 kernels on this CPU"
        if deployment.artifact == "openvino_int8" and importlib.util.find_spec("nncf") is None:
            return "NNCF is not installed (pip install nncf)"
        return super().unavailable(deployment)

    def prepare(self, backend: str, variant: Variant, options: dict) -> Prepared:
        if backend == "openvino-int8":
            return compile_cpu(need_int8(variant.onnx_int8, backend), None, options, " int8")
        if backend == "openvino-nncf-int8":
            path = need_file(
                variant.openvino_int8,
                "backend openvino-nncf-int8 needs the NNCF INT8 model (model.nncf.xml: the export "
                "stage writes it when that deployment is benchmarked)",
            )
            return compile_cpu(path, None, options, " int8 (NNCF)")
        path = need_file(variant.onnx, f"backend {backend} needs an exported model.onnx")
        return compile_cpu(path, HINTS[backend], options, "")


def compile_cpu(path: Path, hint: str | None, options: dict, label: str) -> Prepared:
    """The model compiled for OpenVINO's CPU plugin for latency (one stream), at `hint`."""
    if importlib.util.find_spec("openvino") is None:
        raise BackendUnavailable("OpenVINO is not installed (pip install openvino)")
    if hint == "bf16" and "BF16" not in openvino_capabilities():
        raise BackendUnavailable(
            "this CPU has no bf16 support in OpenVINO (it needs AVX512_BF16 or AMX)"
        )
    import openvino as ov

    threads = threads_of(options)
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if hint is not None:
        config["INFERENCE_PRECISION_HINT"] = hint
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
    except Exception as exc:
        raise BackendUnavailable(f"OpenVINO cannot compile {path}: {exc}") from exc
    request = compiled.create_infer_request()
    output = compiled.output(0)
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))

    def run(batch: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: batch})[output], copy=True)

    return Prepared(run, f"OpenVINO {ov.__version__} CPU {precision}{label}", threads)
