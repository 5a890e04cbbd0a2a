"""INT8 for CPU runtimes: static QDQ quantization of an exported ONNX with ONNX Runtime's tools.

`onnxruntime.quantization` pre-processing first (shape inference and graph optimization;
without it an INT8 EfficientNet-Lite measured 50 ms against 33 ms fp32 here, with it 18 ms),
then static quantization in QDQ format with ONNX Runtime's own defaults for what to quantize
(every op it has an INT8 kernel for: restricting it to Conv/MatMul/Gemm, as this module once
did, cost EfficientNet-Lite1 5.85 pp on a VNNI CPU against 0.31 pp with the default set),
weights int8 per output channel, activations uint8 per tensor, ranges calibrated on real
images. An `Int8Recipe` names the choices that matter per model (calibration method,
activation symmetry); `choose_recipe` picks among a few by their measured output error on
calibration images the ranges were not fitted on. The QDQ file runs in ONNX Runtime and in
OpenVINO alike.
"""

from __future__ import annotations

import contextlib
import io
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
from ..layout import INT8_NAMES
from ..paths import write_with_atomic

# The fewest calibration images an INT8 model is made from: ranges fitted on fewer than this
# follow the images rather than the data (ONNX Runtime's examples and NNCF use 100–300).
MIN_CALIBRATION_IMAGES = 32


class QuantizationError(RmtDeployError):
    """A model could not be quantized (no onnxruntime, an unreadable graph, too few images)."""


@dataclass(frozen=True)
class Int8Recipe:
    """How ONNX Runtime quantizes: `method` minmax | percentile | entropy (its calibrators),
    symmetric or asymmetric activations, `op_types` None for ONNX Runtime's default set."""

    method: str = "minmax"
    activation_symmetric: bool = False
    per_channel: bool = True
    op_types: tuple[str, ...] | None = None
    reduce_range: bool | None = None  # None: 7-bit weights only on x86 CPUs without VNNI

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise QuantizationError(
                f"unknown INT8 calibration method {self.method!r}: "
                f"use {', '.join(CALIBRATION_METHODS)}"
            )

    @property
    def label(self) -> str:
        ops = "default ops" if self.op_types is None else "+".join(self.op_types)
        act = "symmetric" if self.activation_symmetric else "asymmetric"
        return f"{self.method}, {act} activations, {ops}"

    def to_dict(self) -> dict:
        return {**asdict(self), "op_types": None if self.op_types is None else list(self.op_types)}

    @classmethod
    def from_dict(cls, data: dict) -> Int8Recipe:
        ops = data.get("op_types")
        return cls(**{**data, "op_types": None if ops is None else tuple(ops)})


CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_RECIPE = Int8Recipe()
# What `choose_recipe` tries, the default first (a tie keeps it).
RECIPES = (
    DEFAULT_RECIPE,
    Int8Recipe(activation_symmetric=True),
    Int8Recipe(method="percentile"),
)


@dataclass
class QuantizeReport:
    source: str
    output: str
    calibration_images: int
    excluded: list[str] = field(default_factory=list)
    seconds: float = 0.0
    recipe: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def needs_reduced_range() -> bool:
    """True on x86 CPUs without VNNI: ONNX Runtime's u8×s8 kernels there use VPMADDUBSW, whose
    16-bit sums saturate with full-range int8 weights (its documentation recommends 7-bit
    weights, reduce_range, on such machines). Measured here on an AVX2-only AMD EPYC:
    EfficientNet-Lite1 in full-range INT8 agreed with fp32 on 77 % of top-1 predictions."""
    import platform

    from ..machine import cpu_flags

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = cpu_flags()
    return flags is None or not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def calibration_batches(data: Dataset, images: int, batch: int = 16) -> list[np.ndarray]:
    """Up to `images` calibration images as float32 NCHW batches (in order: deterministic)."""
    batches, seen = [], 0
    for x, _ in DataLoader(data, batch_size=batch, shuffle=False):
        x = x[: images - seen]
        batches.append(x.numpy().astype(np.float32))
        seen += len(x)
        if seen >= images:
            break
    check_calibration(batches)
    return batches


def check_calibration(batches: list[np.ndarray]) -> int:
    """The number of calibration images, or a QuantizationError when too few to quantize."""
    count = int(sum(len(b) for b in batches))
    if count < MIN_CALIBRATION_IMAGES:
        raise QuantizationError(
            f"INT8 calibration needs at least {MIN_CALIBRATION_IMAGES} images, got {count}: "
            "give more calibration images (data.calib_images / --calib) or leave the int8 "
            "deployments out"
        )
    return count


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


def input_name(path: Path) -> str:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


def preprocess(onnx_path: Path, out_path: Path) -> Path:
    """onnxruntime.quantization's pre-processing (symbolic shape inference, optimization)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(onnx_path), str(out_path), skip_symbolic_shape=False)
    return out_path


# Histogram calibrators (percentile, entropy) hold every activation of every calibration image
# in memory (EfficientNet-Lite1: about 60 MB an image): they see at most this many.
HISTOGRAM_IMAGES = 64


def _first_images(batches: list[np.ndarray], count: int) -> list[np.ndarray]:
    kept, seen = [], 0
    for batch in batches:
        if seen >= count:
            break
        kept.append(batch[: count - seen])
        seen += len(kept[-1])
    return kept


def _calibrate_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[name]


def quantize_int8(
    onnx_path: str | Path,
    out_path: str | Path,
    batches: list[np.ndarray],
    *,
    recipe: Int8Recipe = DEFAULT_RECIPE,
    exclude: list[str] | tuple[str, ...] = (),
) -> QuantizeReport:
    """Write the static INT8 (QDQ) version of `onnx_path` to `out_path`, atomically.

    `exclude`: node names kept in float (quantized around, recalibrated)."""
    try:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    except ImportError as exc:
        raise QuantizationError("INT8 needs onnxruntime (pip install onnxruntime)") from exc
    count = check_calibration(batches)
    if recipe.method != "minmax":  # histograms: ONNX Runtime keeps every activation in memory
        batches = _first_images(batches, HISTOGRAM_IMAGES)
    began = time.perf_counter()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    logging.getLogger("root").setLevel(logging.ERROR)  # the quantizer's per-node chatter
    reduce_range = needs_reduced_range() if recipe.reduce_range is None else recipe.reduce_range
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        prepared = preprocess(onnx_path, Path(tmp) / "prepared.onnx")
        reader = _reader(input_name(prepared), batches)

        def write(target: Path) -> None:
            with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
                _quantize_static(target)

        def _quantize_static(target: Path) -> None:
            quantize_static(
                str(prepared),
                str(target),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=recipe.per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=None if recipe.op_types is None else list(recipe.op_types),
                nodes_to_exclude=list(exclude),
                calibrate_method=_calibrate_method(recipe.method),
                extra_options={
                    "ActivationSymmetric": recipe.activation_symmetric,
                    "WeightSymmetric": True,
                },
            )

        write_with_atomic(out_path, write)
    return QuantizeReport(
        str(onnx_path),
        str(out_path),
        count,
        list(exclude),
        time.perf_counter() - began,
        recipe.to_dict(),
    )


def onnx_outputs(path: Path, batches: list[np.ndarray], threads: int | None = None) -> np.ndarray:
    """The first output of `path` on every batch (ONNX Runtime, CPU), concatenated."""
    from .onnx_export import ort_session

    session = ort_session(Path(path), threads or torch.get_num_threads())
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: b})[0] for b in batches])


def output_error(reference: np.ndarray, outputs: np.ndarray) -> float:
    """Relative squared error ‖y − ŷ‖² / ‖y‖² over all outputs: the INT8 proxy loss."""
    ref = reference.astype(np.float64)
    return float(((outputs.astype(np.float64) - ref) ** 2).sum() / max((ref**2).sum(), 1e-30))


@dataclass
class RecipeChoice:
    recipe: Int8Recipe
    path: Path  # its INT8 model
    errors: dict[str, float]  # recipe label → output error on the check images

    def to_dict(self) -> dict:
        return {"recipe": self.recipe.to_dict(), "label": self.recipe.label, "errors": self.errors}


def choose_recipe(
    onnx_path: Path,
    folder: Path,
    calib: list[np.ndarray],
    check: list[np.ndarray],
    candidates: tuple[Int8Recipe, ...] = RECIPES,
) -> RecipeChoice:
    """Quantize with each candidate on `calib` and keep the one whose outputs on `check` (other
    images) move least from fp32; the first wins a tie. Every model is written in `folder`."""
    reference = onnx_outputs(onnx_path, check)
    errors, paths = {}, {}
    for i, recipe in enumerate(candidates):
        paths[recipe] = folder / f"recipe{i}.int8.onnx"
        quantize_int8(onnx_path, paths[recipe], calib, recipe=recipe)
        errors[recipe] = output_error(reference, onnx_outputs(paths[recipe], check))
    best = min(candidates, key=lambda r: errors[r])
    return RecipeChoice(best, paths[best], {r.label: e for r, e in errors.items()})


# INT8 images out of a calibration set: ranges are fitted on 128 (as ONNX Runtime's examples),
# and recipes and layers are judged on 64 others, all evenly spaced (a folder sorted by class
# keeps every class in both).
RANGE_IMAGES, CHECK_IMAGES = 128, 64


def int8_images(calib: Dataset) -> tuple[list[int], list[int]]:
    """(range indices, check indices) into `calib`: disjoint, evenly spaced, every third image
    of 192 for the checks; with fewer images the checks shrink first."""
    count = min(len(calib), RANGE_IMAGES + CHECK_IMAGES)
    step = len(calib) / max(count, 1)
    picked = [int(i * step) for i in range(count)]
    checks = max(0, min(CHECK_IMAGES, count - RANGE_IMAGES))
    every = count // checks if checks else 0
    check = [picked[i] for i in range(every - 1, count, every)][:checks] if checks else []
    return [i for i in picked if i not in set(check)], check


def int8_model(
    onnx_path: Path,
    out_path: Path,
    batches: list[np.ndarray],
    recipe: Int8Recipe = DEFAULT_RECIPE,
    float_nodes: list[str] | tuple[str, ...] = (),
) -> QuantizeReport:
    """The QDQ model the planner chose: `recipe`, then `float_nodes` (those the graph has) put
    back in float by a graph edit, exactly as they were measured (`qdq.keep_float`)."""
    from .qdq import keep_float_present

    out_path = Path(out_path)
    if not float_nodes:
        return quantize_int8(onnx_path, out_path, batches, recipe=recipe)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        full, prepared = Path(tmp) / "full.onnx", Path(tmp) / "prepared.onnx"
        report = quantize_int8(onnx_path, full, batches, recipe=recipe)
        preprocess(Path(onnx_path), prepared)
        nodes = keep_float_present(full, prepared, float_nodes, out_path)
    report.output, report.excluded = str(out_path), nodes
    return report



def int8_artifacts(
    onnx_path: Path,
    artifacts: set[str],
    batches: list[np.ndarray],
    recipe: Int8Recipe = DEFAULT_RECIPE,
    float_nodes: list[str] | tuple[str, ...] = (),
    nncf_within: tuple[list, float] | None = None,
) -> dict[str, QuantizeReport]:
    """Write beside `onnx_path` the INT8 files `artifacts` name: QDQ by `recipe` with
    `float_nodes` in float, NNCF's IR (by its accuracy control when `nncf_within` gives the
    validation pairs and the allowed drop); stale ones of the others are removed."""
    from .nncf_int8 import nncf_int8, nncf_int8_within

    folder = Path(onnx_path).parent
    reports = {}
    for artifact, name in INT8_NAMES.items():
        path = folder / name
        path.unlink(missing_ok=True)
        if name.endswith(".xml"):
            path.with_suffix(".bin").unlink(missing_ok=True)
        if artifact not in artifacts:
            continue
        if artifact == "onnx_int8":
            reports[artifact] = int8_model(onnx_path, path, batches, recipe, float_nodes)
        elif nncf_within is not None:
            reports[artifact] = nncf_int8_within(onnx_path, path, batches, *nncf_within)
        else:
            reports[artifact] = nncf_int8(onnx_path, path, batches)
    return reports


def to_batches(images: torch.Tensor, batch: int = 16) -> list[np.ndarray]:
    return [images[i : i + batch].numpy().astype(np.float32) for i in range(0, len(images), batch)]
