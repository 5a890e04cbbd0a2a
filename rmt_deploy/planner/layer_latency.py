"""Per-layer latency on the target backend, with the real input shapes of each layer.

The planner asks "is this layer faster as rank r, or as 2:4, than dense?" — a question about
the kernels of the backend that will run the model, not about FLOPs. Each candidate form is
built at the layer's real input shape (captured with hooks on calibration images at the
deployment batch size) and timed alone on that backend: torch (CPU or CUDA, with CUDA events)
or ONNX Runtime (the layer exported on its own). Measurements are memoized per (layer, form).
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import RmtDeployError
from ..layers import lowrank_like, nm_mask
from ..layers.views import LayerView

LATENCY_BACKENDS = ("torch", "onnxruntime")


@dataclass
class LayerTiming:
    """What was measured for one layer: dense and each candidate form, in milliseconds."""

    name: str
    input_shape: tuple[int, ...]
    dense_ms: float
    lowrank_ms: dict[int, float] = field(default_factory=dict)
    nm24_ms: float | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "dense_ms": self.dense_ms,
            "lowrank_ms": {str(r): ms for r, ms in sorted(self.lowrank_ms.items())},
            "nm24_ms": self.nm24_ms,
        }


@torch.no_grad()
def capture_input_shapes(
    model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor
) -> dict[str, tuple[int, ...]]:
    """The input shape each layer sees when `model` runs on `example`."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module, args) -> None:  # returning None keeps the input unchanged
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in layers.items()]
    try:
        model.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in shapes]
    if missing:
        raise RmtDeployError(f"layers never called in a forward pass: {', '.join(missing[:5])}")
    return shapes


class LayerLatency:
    """Times layer forms on one backend; `measure(name, form)` is memoized.

    `backend`: "torch" (device "cpu" or "cuda", dtype as given) or "onnxruntime" (CPU).
    """

    def __init__(
        self,
        views: dict[str, LayerView],
        input_shapes: dict[str, tuple[int, ...]],
        backend: str = "torch",
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        runs: int = 30,
        threads: int | None = None,
    ):
        self.check_backend(backend, device)
        self.views, self.input_shapes = views, input_shapes
        self.backend, self.device, self.dtype, self.runs = backend, device, dtype, runs
        self.threads = threads or torch.get_num_threads()
        self._cache: dict[tuple[str, str], float] = {}

    @staticmethod
    def check_backend(backend: str, device: str) -> None:
        """Refuse a backend or device the planner cannot measure on, before any work."""
        if backend not in LATENCY_BACKENDS:
            raise RmtDeployError(
                f"the latency planner measures on {' or '.join(LATENCY_BACKENDS)}, not {backend!r}"
            )
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RmtDeployError("the planner was asked to measure on CUDA but no GPU is visible")
        if backend == "onnxruntime" and device != "cpu":
            raise RmtDeployError("the onnxruntime planner backend measures on the CPU")

    def measure(self, name: str, form: str) -> float:
        """Median milliseconds of layer `name` as `form`: "dense", "rank:R" or "nm24"."""
        key = (name, form)
        if key not in self._cache:
            dtype = torch.float16 if form == "nm24" else self.dtype  # sparse kernels are fp16
            self._cache[key] = self._time(self._build(name, form), self.input_shapes[name], dtype)
        return self._cache[key]

    def cached(self, name: str, form: str) -> float | None:
        return self._cache.get((name, form))

    def timing(self, name: str) -> LayerTiming:
        """Everything measured so far for layer `name`."""
        forms = {form: ms for (layer, form), ms in self._cache.items() if layer == name}
        return LayerTiming(
            name,
            self.input_shapes[name],
            self.measure(name, "dense"),
            {int(f.split(":")[1]): ms for f, ms in forms.items() if f.startswith("rank:")},
            forms.get("nm24"),
        )

    def _build(self, name: str, form: str) -> nn.Module | Callable:
        view = self.views[name]
        if form == "dense":
            return copy.deepcopy(view.module)  # timing moves it to the device: never the caller's
        if form.startswith("rank:"):
            return lowrank_like(view, int(form.split(":")[1]))
        if form == "nm24":
            return _semi_structured(view.module, self.device)
        raise RmtDeployError(f"unknown layer form {form!r}")

    def _time(self, module, shape: tuple[int, ...], dtype: torch.dtype) -> float:
        if self.backend == "onnxruntime":
            return time_onnxruntime(module, shape, self.runs, self.threads)
        module = module.to(self.device, dtype).eval()
        x = torch.randn(shape, device=self.device, dtype=dtype)
        with torch.inference_mode():
            return median_ms(lambda: module(x), self.runs, cuda=self.device.startswith("cuda"))


def median_ms(fn: Callable[[], object], runs: int, cuda: bool = False) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(runs):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def time_onnxruntime(module: nn.Module, shape: tuple[int, ...], runs: int, threads: int) -> float:
    from ..exporters.onnx_export import ort_session

    x = torch.randn(shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the exporter's shape-inference chatter, once per layer
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.cpu().float().eval(),
            (x,),
            buffer,
            input_names=["x"],
            opset_version=17,
            dynamo=False,
        )
    session = ort_session(buffer.getvalue(), threads)
    feed = {"x": x.numpy().astype(np.float32)}
    return median_ms(lambda: session.run(None, feed), runs)


def _semi_structured(module: nn.Module, device: str) -> Callable:
    """A Linear whose 2:4-masked weight runs on sparse tensor cores (CUDA, fp16)."""
    from ..layers.semi_structured import semi_structured_incompatibility

    why = semi_structured_incompatibility(module)
    if why is not None or not device.startswith("cuda"):
        raise RmtDeployError(f"no 2:4 kernel for this layer: {why or 'it needs a CUDA device'}")
    from torch.sparse import to_sparse_semi_structured

    weight = module.weight.detach().to(device, torch.float16)
    sparse = to_sparse_semi_structured(weight * nm_mask(weight.float()).to(weight.dtype))
    bias = None if module.bias is None else module.bias.detach().to(device, torch.float16)

    class _Sparse(nn.Module):
        def forward(self, x):
            return torch.nn.functional.linear(x, sparse, bias)

    return _Sparse()
