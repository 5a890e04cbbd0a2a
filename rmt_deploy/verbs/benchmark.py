"""The benchmark verb: latency (percentiles after warm-up), memory and accuracy of model
variants on backends, written as bench.md/json/csv with plots."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class BenchSettings:
    """What to measure: `backends` at `batches`, on `device` (the torch and CUDA backends)."""

    backends: list[str]
    batches: list[int]
    device: str = "cpu"
    runs: int = 60
    warmup_s: float = 1.0
    power: bool = False  # Jetson: tegrastats / jtop


def backend_options(device: str) -> dict:
    """The options every backend runs with on `device`: on CUDA the torch backends run in fp16
    with the 2:4 layers on the sparse kernels the planner timed; on the CPU in fp32."""
    cuda = device.startswith("cuda")
    return {"device": device, "precision": "fp16" if cuda else "fp32", "sparse24": True}


def auto_backends(device: str, calibrated: bool = True) -> tuple[list[str], dict[str, str]]:
    """`auto`: every deployment `device` runs here, and those left out with the reason; without
    calibration images (`calibrated` false) the INT8 ones are left out, never failed."""
    from ..deploy import resolve

    chosen, skipped = resolve("auto", device)
    names = [d.name for d in chosen]
    if not calibrated:
        for d in chosen:
            if d.quantized:
                skipped[d.name] = "INT8 needs --calib images to calibrate on"
        names = [d.name for d in chosen if not d.quantized]
    return names, skipped


def benchmark_variants(
    variants: dict[str, dict],
    settings: BenchSettings,
    input_shape: tuple[int, ...],
    out: str | os.PathLike[str],
    title: str,
    *,
    data=None,
    reference: str | None = None,
    progress: bool = False,
):
    """(the BenchSuite of `variants` — name → {"model", "onnx", INT8 files, "engine"}, each
    optional — on `settings`, the report files written into `out`). Top-1 or agreement is read
    on `data` when given; speedups are against `reference` (default: the first variant)."""
    from ..bench import benchmark, write_report

    suite = benchmark(
        variants,
        settings.backends,
        settings.batches,
        tuple(input_shape),
        data=data,
        reference=reference or next(iter(variants)),
        warmup_s=settings.warmup_s,
        runs=settings.runs,
        power=settings.power,
        progress=progress,
        backend_options=backend_options(settings.device),
    )
    return suite, write_report(suite, Path(out), title)
