"""Deployments: a runtime and a precision on a device — what a model finally runs as.

Which one is fastest is a property of the model *and* the machine, settled only by measuring:
on an Intel Xeon with AMX OpenVINO's bf16 ran ResNet-56 ×2.9 (median of 5 runs) over ONNX
Runtime fp32; on this project's AVX2 AMD EPYC the same CPU plugin has no bf16 at all, and INT8 of
EfficientNet-Lite1 agrees with fp32 on fewer than 90 % of images. So every run measures the
dense model in every deployment this machine offers (the baselines) and plans for those that
keep the budget.

A deployment's name is the benchmark backend that runs it (`runtimes/`, one file per runtime
family); `artifact` says which file of a variant it runs (the fp32 ONNX, the INT8 QDQ ONNX,
NNCF's IR, the PyTorch model or a TensorRT engine).
"""

from __future__ import annotations

from .errors import RmtDeployError
from .runtimes import DEPLOYMENTS, Deployment, unavailable
from .runtimes.openvino import default_precision as openvino_default_precision

__all__ = [
    "AUTO",
    "DEPLOYMENTS",
    "Deployment",
    "DeploymentError",
    "openvino_default_precision",
    "resolve",
    "unavailable",
]


class DeploymentError(RmtDeployError):
    """An unknown deployment, or one this machine cannot run (named with the reason)."""


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
