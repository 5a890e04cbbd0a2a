"""TensorRT: a serialized engine (`rmt-deploy build`) run on torch CUDA buffers. The engine
is opened without CUDA buffers first, and the run loop takes host buffers too (device="cpu"),
so the whole path is testable with a fake tensorrt module on a machine without a GPU."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RmtDeployError
from .base import BackendUnavailable, Deployment, Prepared, Runtime, Variant
from .registry import register_runtime


@register_runtime
class TensorRT(Runtime):
    family = "tensorrt"
    deployments = (Deployment("tensorrt", "tensorrt", "fp16", "cuda", "engine", "TensorRT engine"),)

    def unavailable(self, deployment: Deployment) -> str | None:
        why = super().unavailable(deployment)
        if why is None and importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed"
        return why

    def prepare(self, backend: str, variant: Variant, options: dict) -> Prepared:
        return tensorrt_engine(variant.engine)


@dataclass
class OpenedEngine:
    """A deserialized TensorRT engine and what the runner needs from it: found without CUDA
    buffers, so it is testable with a fake tensorrt module on a machine without a GPU."""

    engine: Any
    context: Any
    inputs: list[str]
    outputs: list[str]
    batch_range: tuple[int, int]  # optimization profile 0 of the first input, MIN..MAX
    input_dtype: np.dtype
    output_dtype: np.dtype


def open_tensorrt_engine(trt, engine: Path) -> OpenedEngine:
    """Deserialize `engine`, create its execution context and find its I/O and profile."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    cuda_engine = runtime.deserialize_cuda_engine(Path(engine).read_bytes())
    if cuda_engine is None:
        raise BackendUnavailable(
            f"TensorRT {trt.__version__} cannot load {engine}: engines only run on the TensorRT "
            "version and GPU they were built with; rebuild it here"
        )
    context = cuda_engine.create_execution_context()
    names = [cuda_engine.get_tensor_name(i) for i in range(cuda_engine.num_io_tensors)]
    inputs = [n for n in names if cuda_engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if cuda_engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    lowest, _, highest = cuda_engine.get_tensor_profile_shape(inputs[0], 0)
    return OpenedEngine(
        cuda_engine,
        context,
        inputs,
        outputs,
        (int(lowest[0]), int(highest[0])),
        np.dtype(trt.nptype(cuda_engine.get_tensor_dtype(inputs[0]))),
        np.dtype(trt.nptype(cuda_engine.get_tensor_dtype(outputs[0]))),
    )


def engine_runner(
    opened: OpenedEngine, engine: Path, device: str = "cuda"
) -> Callable[[np.ndarray], np.ndarray]:
    """Run the engine on torch buffers (a batch inside the profile, checked by the caller).

    `device` is where the buffers live: "cuda" for a real engine, on a side stream (not the
    legacy default stream: TensorRT syncs extra there). "cpu" puts them in host memory and
    passes stream 0, which only the fake tensorrt of the tests can run on: the same loop
    (shape, addresses, execute, read back) then runs in CI.
    """

    def torch_dtype(dtype: np.dtype) -> torch.dtype:
        return torch.from_numpy(np.zeros(1, dtype)).dtype

    in_dtype, out_dtype = torch_dtype(opened.input_dtype), torch_dtype(opened.output_dtype)
    context, (name_in, name_out) = opened.context, (opened.inputs[0], opened.outputs[0])
    if device == "cuda":
        stream = torch.cuda.Stream()
        scope, handle = (lambda: torch.cuda.stream(stream)), stream.cuda_stream
    else:
        scope, handle = contextlib.nullcontext, 0

    def run(batch: np.ndarray) -> np.ndarray:
        with scope():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(device, in_dtype)
            if not context.set_input_shape(name_in, tuple(x.shape)):
                raise RmtDeployError(
                    f"TensorRT refused input shape {tuple(x.shape)} for {name_in!r} of {engine}"
                )
            shape = tuple(context.get_tensor_shape(name_out))
            y = torch.empty(shape, dtype=out_dtype, device=device)
            context.set_tensor_address(name_in, x.data_ptr())
            context.set_tensor_address(name_out, y.data_ptr())
            if not context.execute_async_v3(handle):
                raise RmtDeployError(f"TensorRT failed to run {engine} at batch {batch.shape[0]}")
            out = y.float().cpu().numpy()  # .cpu() waits for the stream
        return out

    return run


def tensorrt_engine(engine: Path | None, *, device: str = "cuda") -> Prepared:
    """A serialized TensorRT engine (`rmt-deploy build`), run on torch CUDA buffers (`device`:
    see `engine_runner`)."""
    if engine is None or not Path(engine).is_file():
        raise BackendUnavailable("backend tensorrt needs an engine file (rmt-deploy build)")
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(
            "TensorRT is not installed (it needs an NVIDIA GPU machine or a Jetson)"
        ) from exc
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs a CUDA device and none is visible")
    opened = open_tensorrt_engine(trt, Path(engine))
    engine_run = engine_runner(opened, Path(engine), device)

    def run(batch: np.ndarray) -> np.ndarray:
        check_engine_batch(Path(engine), batch.shape[0], opened.batch_range)
        return engine_run(batch)

    return Prepared(
        run,
        f"TensorRT {trt.__version__} "
        + (torch.cuda.get_device_name() if cuda else "(host buffers)"),
        torch.get_num_threads(),
        torch.cuda.synchronize if cuda else (lambda: None),
        cuda=cuda,
        batch_range=opened.batch_range,
    )


class EngineProfileError(RmtDeployError):
    """A batch size outside the range the engine's optimization profile was built for."""


def check_engine_batch(engine: Path, batch: int, batch_range: tuple[int, int]) -> None:
    lo, hi = batch_range
    if not lo <= batch <= hi:
        raise EngineProfileError(
            f"batch {batch} is outside the optimization profile of {engine} (batch {lo} to {hi}): "
            f"rebuild it with `rmt-deploy build --batch {min(lo, batch)}:{batch}:{max(hi, batch)}`"
        )
