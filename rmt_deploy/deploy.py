"""Deployments: a runtime and a precision on a device — what a model finally runs as.

Which one is fastest is a property of the model *and* the machine, settled only by measuring:
on an Intel Xeon with AMX OpenVINO's bf16 ran ResNet-56 ×2.9 (median of 5 runs) over ONNX
Runtime fp32; on this project's AVX2 AMD EPYC the same CPU plugin has no bf16 at all, and INT8 of
EfficientNet-Lite1 agrees with fp32 on fewer than 90 % of images. So every run measures the
dense model in every deployment this machine offers (the baselines) and plans for those that
keep the budget.

A deployment's name is the benchmark backend that runs it (`bench/backends.py`); `artifact`
says which file of a variant it runs (the fp32 ONNX, the INT8 QDQ ONNX, the PyTorch model or a
TensorRT engine).
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

import torch

from .errors import RmtDeployError
from .machine import openvino_capabilities


class DeploymentError(RmtDeployError):
    """An unknown deployment, or one this machine cannot run (named with the reason)."""


@dataclass(frozen=True)
class Deployment:
    name: str  # the benchmark backend that runs it
    runtime: str  # onnxruntime | openvino | torch | tensorrt
    precision: str  # fp32 | f32 | bf16 | fp16 | int8 | default
    device: str  # cpu | cuda
    artifact: str  # onnx | onnx_int8 | openvino_int8 | model | engine
    summary: str = ""

    @property
    def quantized(self) -> bool:
        return self.artifact in ("onnx_int8", "openvino_int8")

    def to_dict(self) -> dict:
        return asdict(self)


DEPLOYMENTS: dict[str, Deployment] = {
    d.name: d
    for d in (
        Deployment("onnxruntime", "onnxruntime", "fp32", "cpu", "onnx", "ONNX Runtime fp32"),
        Deployment(
            "onnxruntime-int8",
            "onnxruntime",
            "int8",
            "cpu",
            "onnx_int8",
            "ONNX Runtime static INT8 (QDQ, per-channel weights)",
        ),
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
        Deployment("torch", "torch", "fp32", "cpu", "model", "PyTorch eager"),
        Deployment("torch-cuda-fp16", "torch", "fp16", "cuda", "model", "PyTorch CUDA fp16"),
        Deployment("torch-cuda-bf16", "torch", "bf16", "cuda", "model", "PyTorch CUDA bf16"),
        Deployment("tensorrt", "tensorrt", "fp16", "cuda", "engine", "TensorRT engine"),
    )
}
# What `targets: auto` and the baselines cover on each device.
AUTO = {
    "cpu": (
        "onnxruntime",
        "onnxruntime-int8",
        "openvino",
        "openvino-f32",
        "openvino-bf16",
        "openvino-int8",
        "openvino-nncf-int8",
    ),
    "cuda": ("torch-cuda-fp16", "torch-cuda-bf16", "tensorrt"),
}


def openvino_default_precision() -> str | None:
    """What OpenVINO's CPU plugin runs without a hint: bf16 where the CPU has it, else f32."""
    caps = openvino_capabilities()
    if not caps:
        return None
    return "bf16" if "BF16" in caps else "f32"


def unavailable(deployment: Deployment) -> str | None:
    """Why `deployment` cannot run on this machine (None when it can)."""
    if deployment.device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is visible"
    if deployment.runtime == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install onnxruntime)"
    if deployment.runtime == "openvino":
        default = openvino_default_precision()
        if default is None:
            return "OpenVINO is not installed (pip install openvino)"
        if deployment.precision == "bf16" and default != "bf16":
            return "this CPU has no bf16 in OpenVINO (it needs AVX512_BF16 or AMX)"
        if deployment.precision == "int8" and "INT8" not in openvino_capabilities():
            return "OpenVINO reports no INT8 kernels on this CPU"
        if deployment.artifact == "openvino_int8" and importlib.util.find_spec("nncf") is None:
            return "NNCF is not installed (pip install nncf)"
    if deployment.runtime == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    return None


def resolve(names: list[str] | str, device: str = "cpu") -> tuple[list[Deployment], dict]:
    """The deployments asked for (`auto`: all this device may offer) that run here, and the
    reasons for the others. Asking by name for one that cannot run is an error."""
    auto = names == "auto" or names == ["auto"]
    wanted = list(AUTO["cuda" if device.startswith("cuda") else "cpu"]) if auto else names
    unknown = [n for n in wanted if n not in DEPLOYMENTS]
    if unknown:
        raise DeploymentError(
            f"unknown deployment {', '.join(unknown)}; known: {', '.join(DEPLOYMENTS)}"
        )
    chosen, skipped = [], {}
    for name in wanted:
        why = unavailable(DEPLOYMENTS[name])
        if why is None:
            chosen.append(DEPLOYMENTS[name])
        else:
            skipped[name] = why
    if not auto and skipped:
        raise DeploymentError(
            "; ".join(f"deployment {n} cannot run here: {why}" for n, why in skipped.items())
        )
    # OpenVINO's default is one of its explicit precisions: measure it once.
    default = openvino_default_precision()
    if any(d.name == "openvino" for d in chosen) and default is not None:
        twin = f"openvino-{default}"
        if any(d.name == twin for d in chosen):
            chosen = [d for d in chosen if d.name != twin]
            skipped[twin] = f"the same as openvino (its default here is {default})"
    if not chosen:
        raise DeploymentError(
            "no deployment can run here: " + "; ".join(f"{n}: {why}" for n, why in skipped.items())
        )
    return chosen, skipped
