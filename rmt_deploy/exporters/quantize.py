"""INT8 for CPU runtimes: static QDQ quantization of an exported ONNX with ONNX Runtime's tools.

`onnxruntime.quantization` pre-processing first (shape inference and graph optimization;
without it an INT8 EfficientNet-Lite measured 50 ms against 33 ms fp32 here, with it 18 ms),
then static quantization in QDQ format: weights int8 per output channel, activations uint8
per tensor with ranges calibrated (MinMax) on real calibration images. The QDQ file runs in
ONNX Runtime and in OpenVINO alike. `int8_sensitivity` ranks the quantized layers by the
signal-to-quantization-noise ratio of their outputs, so the layers whose quantization costs
most can be kept in float.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import RmtDeployError
from ..paths import write_with_atomic

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


class QuantizationError(RmtDeployError):
    """A model could not be quantized (no onnxruntime, an unreadable graph)."""


@dataclass
class QuantizeReport:
    source: str
    output: str
    calibration_images: int
    excluded: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def needs_reduced_range() -> bool:
    """True on x86 CPUs without VNNI: ONNX Runtime's u8×s8 kernels there use VPMADDUBSW, whose
    16-bit sums saturate with full-range int8 weights (its documentation recommends 7-bit
    weights, reduce_range, on such machines). Measured here on an AVX2-only AMD EPYC:
    EfficientNet-Lite1 in full-range INT8 agreed with fp32 on 77 % of top-1 predictions."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return True
    return not any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def calibration_batches(data: Dataset, images: int, batch: int = 16) -> list[np.ndarray]:
    """Up to `images` calibration images as float32 NCHW batches (in order: deterministic)."""
    batches, seen = [], 0
    for x, _ in DataLoader(data, batch_size=batch, shuffle=False):
        x = x[: images - seen]
        batches.append(x.numpy().astype(np.float32))
        seen += len(x)
        if seen >= images:
            break
    if not batches:
        raise QuantizationError("INT8 calibration needs images; the calibration data is empty")
    return batches


def _reader(input_name: str, batches: list[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items: Iterator = iter(batches)

        def get_next(self):
            batch = next(self._items, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self._items = iter(batches)

    return Reader()


def _input_name(path: Path) -> str:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


def preprocess(onnx_path: Path, out_path: Path) -> Path:
    """onnxruntime.quantization's pre-processing (symbolic shape inference, optimization)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(onnx_path), str(out_path), skip_symbolic_shape=False)
    return out_path


def quantize_int8(
    onnx_path: str | Path,
    out_path: str | Path,
    batches: list[np.ndarray],
    *,
    exclude: list[str] | tuple[str, ...] = (),
    per_channel: bool = True,
    reduce_range: bool | None = None,
) -> QuantizeReport:
    """Write the static INT8 (QDQ) version of `onnx_path` to `out_path`, atomically.

    `exclude`: node names kept in float (see `int8_sensitivity`)."""
    try:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    except ImportError as exc:
        raise QuantizationError("INT8 needs onnxruntime (pip install onnxruntime)") from exc
    began = time.perf_counter()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    logging.getLogger("root").setLevel(logging.ERROR)  # the quantizer's per-node chatter
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        prepared = preprocess(onnx_path, Path(tmp) / "prepared.onnx")
        reader = _reader(_input_name(prepared), batches)

        def write(target: Path) -> None:
            quantize_static(
                str(prepared),
                str(target),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=needs_reduced_range() if reduce_range is None else reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=list(exclude),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )

        write_with_atomic(out_path, write)
    return QuantizeReport(
        str(onnx_path),
        str(out_path),
        int(sum(len(b) for b in batches)),
        list(exclude),
        time.perf_counter() - began,
    )


def int8_sensitivity(
    float_path: str | Path, int8_path: str | Path, batches: list[np.ndarray]
) -> list[tuple[str, float]]:
    """(node name, SQNR in dB of its output) for every quantized Conv/MatMul/Gemm, worst first:
    the float and the QDQ model run on the same calibration images and their intermediate
    outputs are compared (onnxruntime.quantization.qdq_loss_debug)."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory() as tmp:
        augmented = {}
        for key, path in (("float", float_path), ("int8", int8_path)):
            augmented[key] = str(Path(tmp) / f"{key}.onnx")
            modify_model_output_intermediate_tensors(str(path), augmented[key], QUANTIZED_OPS)
        name = _input_name(Path(float_path))
        activations = {
            key: collect_activations(path, _reader(name, batches))
            for key, path in augmented.items()
        }
        graph = onnx.load(str(float_path), load_external_data=False).graph
    producers = {
        out: node.name
        for node in graph.node
        if node.op_type in QUANTIZED_OPS
        for out in node.output
    }
    ranked = []
    for tensor, node in producers.items():
        if tensor not in activations["int8"] or tensor not in activations["float"]:
            continue  # fused away in the quantized graph
        ref = np.concatenate([a.ravel() for a in activations["float"][tensor]]).astype(np.float64)
        got = np.concatenate([a.ravel() for a in activations["int8"][tensor]]).astype(np.float64)
        noise = float(((ref - got) ** 2).sum())
        ranked.append((node, 10 * np.log10(float((ref**2).sum()) / max(noise, 1e-30))))
    return sorted(ranked, key=lambda item: item[1])


def to_batches(images: torch.Tensor, batch: int = 16) -> list[np.ndarray]:
    return [images[i : i + batch].numpy().astype(np.float32) for i in range(0, len(images), batch)]
