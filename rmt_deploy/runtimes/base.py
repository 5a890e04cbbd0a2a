"""What every runtime family shares: the deployment record, a variant's files, a prepared
runner, and the Runtime interface — its deployments and their artifacts, whether this machine
runs them, how to prepare a model and how to time one layer."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import RmtDeployError


class BackendUnavailable(RmtDeployError):
    """The backend is not installed or cannot run this model on this machine."""


@dataclass(frozen=True)
class Deployment:
    """A runtime and a precision on a device — what a model finally runs as. Its name is the
    benchmark backend that runs it; `artifact` is the file of a variant it runs."""

    name: str
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


@dataclass
class Variant:
    """The files of one model variant, each runtime taking the one it runs: the PyTorch model,
    the fp32 ONNX, the INT8 QDQ ONNX, NNCF's OpenVINO IR, a TensorRT engine."""

    model: nn.Module | None = None
    onnx: Path | None = None
    onnx_int8: Path | None = None
    openvino_int8: Path | None = None
    engine: Path | None = None

    def artifact(self, name: str):
        """The file (or model) named by a deployment's `artifact`."""
        return getattr(self, name)


@dataclass
class Prepared:
    run: Callable[[np.ndarray], np.ndarray]  # float32 NCHW batch → logits
    device: str
    threads: int
    synchronize: Callable[[], None] = lambda: None
    cuda: bool = False
    batch_range: tuple[int, int] | None = None  # an engine's optimization profile, MIN..MAX


def threads_of(options: dict) -> int:
    return int(options.get("threads") or torch.get_num_threads())


def need_file(path: Path | None, message: str) -> Path:
    """`path` when it is a file, else BackendUnavailable(message)."""
    if path is None or not Path(path).is_file():
        raise BackendUnavailable(message)
    return Path(path)


def onnx_file(module: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    """`module` exported alone at a fixed input shape (weights do not matter for timing)."""
    with warnings.catch_warnings():  # the exporter's shape-inference chatter, once per form
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.cpu().float().eval(),
            (torch.randn(shape),),
            str(path),
            input_names=["input"],
            opset_version=17,
            dynamo=False,
        )
    return path


class Runtime:
    """One runtime family. A new runtime is one subclass in a file of its own, registered with
    `register_runtime`: the planner, the benchmark and `targets: auto` find it there."""

    family: ClassVar[str]
    deployments: ClassVar[tuple[Deployment, ...]] = ()
    # Benchmark-only backends (no deployment: not planned for), e.g. torch-compile.
    extra_backends: ClassVar[tuple[str, ...]] = ()

    @property
    def backends(self) -> tuple[str, ...]:
        return (*(d.name for d in self.deployments), *self.extra_backends)

    def unavailable(self, deployment: Deployment) -> str | None:
        """Why `deployment` cannot run on this machine (None when it can)."""
        if deployment.device == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None

    def prepare(self, backend: str, variant: Variant, options: dict) -> Prepared:
        raise NotImplementedError

    def layer_runner(
        self, deployment: Deployment, module: nn.Module, shape, folder: Path, tag: str,
        threads: int,
    ):  # fmt: skip
        """A callable running one layer's `module` as `deployment` would (None when it
        cannot): by default exported to ONNX (and quantized for an INT8 deployment)."""
        path = onnx_file(module, shape, folder / f"{tag}.onnx")
        int8 = None
        if deployment.quantized:
            from ..exporters.quantize import MIN_CALIBRATION_IMAGES, quantize_int8

            int8 = folder / f"{tag}.int8.onnx"
            batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            calibration = [batch] * -(-MIN_CALIBRATION_IMAGES // len(batch))  # timing only
            quantize_int8(path, int8, calibration)
        try:
            variant = Variant(onnx=path, onnx_int8=int8)
            return self.prepare(deployment.name, variant, {"threads": threads}).run
        except BackendUnavailable:
            return None
