"""Benchmark backends in a registry: each turns a model (or an exported file) into a callable
on numpy/torch inputs, or says why it cannot run here."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RmtDeployError
from ..machine import openvino_capabilities


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
    onnx_int8: Path | None = None,
    **options,
) -> Prepared:
    """The runner of backend `name` for a variant: its PyTorch model, its fp32 ONNX, its INT8
    (QDQ) ONNX, its TensorRT engine — each backend takes the one it runs."""
    if name not in BACKENDS:
        raise RmtDeployError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    return BACKENDS[name](
        model=model, onnx_path=onnx_path, engine=engine, onnx_int8=onnx_int8, **options
    )


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
def torch_eager(model=None, onnx_path=None, onnx_int8=None, **options) -> Prepared:
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


def _register_torch_cuda(backend: str, precision: str) -> None:
    def make(model=None, onnx_path=None, onnx_int8=None, **options) -> Prepared:
        options = {**options, "device": "cuda", "precision": precision, "sparse24": True}
        return torch_eager(model=model, **options)

    register_backend(backend)(make)


for _backend, _precision in (("torch-cuda-fp16", "fp16"), ("torch-cuda-bf16", "bf16")):
    _register_torch_cuda(_backend, _precision)


@register_backend("torch-compile")
def torch_compiled(model=None, onnx_path=None, onnx_int8=None, **options) -> Prepared:
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


def _onnxruntime(provider: str, onnx_path, options, label: str = "") -> Prepared:
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
    return Prepared(
        lambda b: session.run(None, {name: b})[0], f"onnxruntime {provider}{label}", threads
    )


def _register_ort(backend: str, provider: str) -> None:
    def make(model=None, onnx_path=None, onnx_int8=None, **o) -> Prepared:
        return _onnxruntime(provider, onnx_path, o)

    register_backend(backend)(make)


for _backend, _provider in ORT_PROVIDERS.items():
    _register_ort(_backend, _provider)


def _need_int8(onnx_int8, backend: str) -> Path:
    if onnx_int8 is None or not Path(onnx_int8).is_file():
        raise BackendUnavailable(
            f"backend {backend} needs the INT8 model (model.int8.onnx: the pipeline's export "
            "stage writes it when an int8 deployment is benchmarked)"
        )
    return Path(onnx_int8)


@register_backend("onnxruntime-int8")
def onnxruntime_int8(model=None, onnx_path=None, onnx_int8=None, **options) -> Prepared:
    """ONNX Runtime on the CPU running the static INT8 (QDQ, per-channel) model."""
    path = _need_int8(onnx_int8, "onnxruntime-int8")
    return _onnxruntime("CPUExecutionProvider", path, options, " int8")


OPENVINO_PRECISIONS = {"openvino": None, "openvino-f32": "f32", "openvino-bf16": "bf16"}


def _openvino(path: Path, hint: str | None, options, label: str) -> Prepared:
    if importlib.util.find_spec("openvino") is None:
        raise BackendUnavailable("OpenVINO is not installed (pip install openvino)")
    if hint == "bf16" and "BF16" not in openvino_capabilities():
        raise BackendUnavailable(
            "this CPU has no bf16 support in OpenVINO (it needs AVX512_BF16 or AMX)"
        )
    import openvino as ov

    threads = int(options.get("threads") or torch.get_num_threads())
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    if hint is not None:
        config["INFERENCE_PRECISION_HINT"] = hint
    core = ov.Core()
    try:
        compiled = core.compile_model(str(path), "CPU", config)
    except Exception as exc:
        raise BackendUnavailable(f"OpenVINO cannot compile {path}: {exc}") from exc
    request = compiled.create_infer_request()
    output = compiled.output(0)
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))

    def run(batch: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: batch})[output], copy=True)

    return Prepared(run, f"OpenVINO {ov.__version__} CPU {precision}{label}", threads)


def _register_openvino(backend: str, hint: str | None) -> None:
    def make(model=None, onnx_path=None, **options) -> Prepared:
        if onnx_path is None or not Path(onnx_path).is_file():
            raise BackendUnavailable(f"backend {backend} needs an exported model.onnx")
        return _openvino(Path(onnx_path), hint, options, "")

    register_backend(backend)(make)


for _backend, _hint in OPENVINO_PRECISIONS.items():
    _register_openvino(_backend, _hint)


@register_backend("openvino-int8")
def openvino_int8(model=None, onnx_path=None, onnx_int8=None, **options) -> Prepared:
    """OpenVINO on the CPU running the same QDQ model: it executes the quantized layers in int8."""
    return _openvino(_need_int8(onnx_int8, "openvino-int8"), None, options, " int8")


@register_backend("openvino-nncf-int8")
def openvino_nncf_int8(model=None, onnx_path=None, openvino_int8=None, **options) -> Prepared:
    """OpenVINO on the CPU running NNCF's INT8 model (OpenVINO IR, model.nncf.xml)."""
    if openvino_int8 is None or not Path(openvino_int8).is_file():
        raise BackendUnavailable(
            "backend openvino-nncf-int8 needs the NNCF INT8 model (model.nncf.xml: the export "
            "stage writes it when that deployment is benchmarked)"
        )
    return _openvino(Path(openvino_int8), None, options, " int8 (NNCF)")


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


def _tensorrt_cuda_run(opened: OpenedEngine, engine: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Run the engine on torch CUDA buffers (a batch inside the profile, checked by the caller)."""

    def torch_dtype(dtype: np.dtype) -> torch.dtype:
        return torch.from_numpy(np.zeros(1, dtype)).dtype

    in_dtype, out_dtype = torch_dtype(opened.input_dtype), torch_dtype(opened.output_dtype)
    context, (name_in, name_out) = opened.context, (opened.inputs[0], opened.outputs[0])
    stream = torch.cuda.Stream()  # not the legacy default stream: TensorRT syncs extra there

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.cuda.stream(stream):
            x = torch.from_numpy(batch).to("cuda", in_dtype)
            context.set_input_shape(name_in, tuple(x.shape))
            shape = tuple(context.get_tensor_shape(name_out))
            y = torch.empty(shape, dtype=out_dtype, device="cuda")
            context.set_tensor_address(name_in, x.data_ptr())
            context.set_tensor_address(name_out, y.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise RmtDeployError(f"TensorRT failed to run {engine} at batch {batch.shape[0]}")
            out = y.float().cpu().numpy()
        return out

    return run


@register_backend("tensorrt")
def tensorrt_engine(model=None, onnx_path=None, engine=None, onnx_int8=None, **options) -> Prepared:
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
    opened = open_tensorrt_engine(trt, Path(engine))
    cuda_run = _tensorrt_cuda_run(opened, Path(engine))

    def run(batch: np.ndarray) -> np.ndarray:
        check_engine_batch(Path(engine), batch.shape[0], opened.batch_range)
        return cuda_run(batch)

    return Prepared(
        run,
        f"TensorRT {trt.__version__} {torch.cuda.get_device_name()}",
        torch.get_num_threads(),
        torch.cuda.synchronize,
        cuda=True,
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
