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
    batch_range: tuple[int, int] | None = None  # an engine's optimization profile, MIN..MAX


BACKENDS: dict[str, Callable[..., Prepared]] = {}


def register_backend(name: str):
    def wrap(fn):
        BACKENDS[name] = fn
        return fn

    return wrap


def prepare(
    name: str,
    model: nn.Module | None,
    onnx_path: Path | None,
    engine: Path | None = None,
    **options,
) -> Prepared:
    if name not in BACKENDS:
        raise RmtDeployError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    return BACKENDS[name](model=model, onnx_path=onnx_path, engine=engine, **options)


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
    module = module.to(device, dtype)
    if options.get("sparse24") and device.startswith("cuda") and dtype != torch.float32:
        from ..layers import semi_structured_

        semi_structured_(module, dtype)  # 2:4 masked layers onto the sparse tensor cores
    return _torch_runner(module, device, dtype)


@register_backend("torch-compile")
def torch_compiled(model=None, onnx_path=None, **options) -> Prepared:
    module = copy.deepcopy(_need_model(model, "torch-compile")).eval()
    device = _device(options)
    try:
        compiled = torch.compile(module.to(device))
    except Exception as exc:
        raise BackendUnavailable(f"torch.compile cannot compile this model: {exc}") from exc
    return _torch_runner(compiled, device, torch.float32)


ORT_PROVIDERS = {
    "onnxruntime": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-trt": "TensorrtExecutionProvider",
}


def _onnxruntime(provider: str, onnx_path, options) -> Prepared:
    if importlib.util.find_spec("onnxruntime") is None:
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)")
    if onnx_path is None or not Path(onnx_path).is_file():
        raise BackendUnavailable("backend onnxruntime needs an exported model.onnx")
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        raise BackendUnavailable(
            f"{provider} is not available in this onnxruntime "
            f"({', '.join(ort.get_available_providers())})"
        )
    from ..exporters.onnx_export import ort_session

    threads = int(options.get("threads") or torch.get_num_threads())
    try:
        session = ort_session(Path(onnx_path), threads, provider)
    except Exception as exc:
        raise BackendUnavailable(f"onnxruntime cannot load {onnx_path}: {exc}") from exc
    name = session.get_inputs()[0].name
    return Prepared(lambda b: session.run(None, {name: b})[0], f"onnxruntime {provider}", threads)


def _register_ort(backend: str, provider: str) -> None:
    register_backend(backend)(
        lambda model=None, onnx_path=None, **o: _onnxruntime(provider, onnx_path, o)
    )


for _backend, _provider in ORT_PROVIDERS.items():
    _register_ort(_backend, _provider)


@register_backend("tensorrt")
def tensorrt_engine(model=None, onnx_path=None, engine=None, **options) -> Prepared:
    """A serialized TensorRT engine (`rmt-deploy build`), run on torch CUDA buffers."""
    if engine is None or not Path(engine).is_file():
        raise BackendUnavailable("backend tensorrt needs an engine file (rmt-deploy build)")
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(
            "TensorRT is not installed (it needs an NVIDIA GPU machine or a Jetson)"
        ) from exc
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs a CUDA device and none is visible")
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

    def torch_dtype(name: str) -> torch.dtype:
        return torch.from_numpy(np.zeros(1, trt.nptype(cuda_engine.get_tensor_dtype(name)))).dtype

    in_dtype, out_dtype = torch_dtype(inputs[0]), torch_dtype(outputs[0])
    stream = torch.cuda.Stream()  # not the legacy default stream: TensorRT syncs extra there

    def run(batch: np.ndarray) -> np.ndarray:
        check_engine_batch(Path(engine), batch.shape[0], (lowest[0], highest[0]))
        with torch.cuda.stream(stream):
            x = torch.from_numpy(batch).to("cuda", in_dtype)
            context.set_input_shape(inputs[0], tuple(x.shape))
            shape = tuple(context.get_tensor_shape(outputs[0]))
            y = torch.empty(shape, dtype=out_dtype, device="cuda")
            context.set_tensor_address(inputs[0], x.data_ptr())
            context.set_tensor_address(outputs[0], y.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise RmtDeployError(f"TensorRT failed to run {engine} at batch {batch.shape[0]}")
            out = y.float().cpu().numpy()
        return out

    return Prepared(
        run,
        f"TensorRT {trt.__version__} {torch.cuda.get_device_name()}",
        torch.get_num_threads(),
        torch.cuda.synchronize,
        cuda=True,
        batch_range=(int(lowest[0]), int(highest[0])),
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
