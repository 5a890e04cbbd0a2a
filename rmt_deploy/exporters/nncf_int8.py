"""INT8 for OpenVINO the way its own toolkit makes it: NNCF post-training quantization of the
exported ONNX (`nncf.quantize`, default preset), saved as OpenVINO IR (model.nncf.xml + .bin)
that OpenVINO and the target kit load directly. `ignored` names nodes kept in float
(`nncf.IgnoredScope`); with a budget, `nncf.quantize_with_accuracy_control` keeps in float
the layers NNCF's own ranking says cost most, until the validation metric is within `max_drop`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .quantize import QuantizationError, QuantizeReport, check_calibration


def nncf_unavailable() -> str | None:
    """Why NNCF INT8 cannot be made here (None when it can)."""
    for module, package in (("openvino", "openvino"), ("nncf", "nncf")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install '.[openvino]')"
    return None


def _items(batches: list[np.ndarray]) -> list[np.ndarray]:
    """One image per item: NNCF's statistics are defined per sample."""
    return [image[None] for batch in batches for image in batch]


def save_ir(model, out_xml: Path) -> Path:
    """Save an OpenVINO model as IR beside `out_xml` atomically: .bin first, then the .xml."""
    import openvino as ov

    out_xml = Path(out_xml)
    with tempfile.TemporaryDirectory(dir=out_xml.parent, prefix=".ir-") as tmp:
        staged = Path(tmp) / "model.xml"
        ov.save_model(model, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), out_xml.with_suffix(".bin"))
        os.replace(staged, out_xml)
    return out_xml


def _quantize(
    onnx_path: Path, make: Callable, out_xml: Path, count: int, ignored
) -> QuantizeReport:
    why = nncf_unavailable()
    if why:
        raise QuantizationError(f"NNCF INT8: {why}")
    import logging

    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.ERROR)  # per-step chatter
    began = time.perf_counter()
    model = ov.Core().read_model(str(onnx_path))
    scope = nncf.IgnoredScope(names=list(ignored), validate=False) if ignored else None
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
        quantized = make(nncf, model, scope)
    save_ir(quantized, out_xml)
    return QuantizeReport(
        str(onnx_path),
        str(out_xml),
        count,
        list(ignored),
        time.perf_counter() - began,
        {"tool": f"nncf {nncf.__version__}", "preset": "default"},
    )


def nncf_int8(
    onnx_path: str | Path,
    out_xml: str | Path,
    batches: list[np.ndarray],
    *,
    ignored: list[str] | tuple[str, ...] = (),
) -> QuantizeReport:
    """`nncf.quantize` with its defaults on every calibration image; IR at `out_xml`."""
    count = check_calibration(batches)
    items = _items(batches)

    def make(nncf, model, scope):
        return nncf.quantize(model, nncf.Dataset(items), subset_size=count, ignored_scope=scope)

    return _quantize(Path(onnx_path), make, Path(out_xml), count, ignored)


def nncf_int8_within(
    onnx_path: str | Path,
    out_xml: str | Path,
    batches: list[np.ndarray],
    validation: list[tuple[np.ndarray, int]],
    max_drop_pp: float,
) -> QuantizeReport:
    """`nncf.quantize_with_accuracy_control`: INT8 whose top-1 on `validation` (image, label)
    pairs drops at most `max_drop_pp` points; the layers it keeps in float are NNCF's choice."""
    count = check_calibration(batches)
    items = _items(batches)

    def top1(compiled, data) -> tuple[float, list[float]]:
        output = compiled.output(0)
        hits = [float(np.argmax(compiled(image[None])[output]) == label) for image, label in data]
        return float(np.mean(hits)), hits

    def make(nncf, model, scope):
        return nncf.quantize_with_accuracy_control(
            model,
            nncf.Dataset(items),
            nncf.Dataset(validation),
            top1,
            max_drop=max_drop_pp / 100.0,
            subset_size=count,
            ignored_scope=scope,
        )

    return _quantize(Path(onnx_path), make, Path(out_xml), count, ())
