"""The export verb: ONNX with its manifest (preprocessing, source, plan), verified in ONNX
Runtime, and the INT8 files the int8 deployments run, calibrated the one way."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn


def export_onnx(
    model: nn.Module,
    out: str | os.PathLike[str],
    data_config,
    *,
    source: dict[str, Any],
    plan: dict | None = None,
    name: str = "model",
    **options: Any,
):
    """`model` exported to `out`/model.onnx with manifest.json saying how to feed it
    (`data_config`'s preprocessing), where it came from (`source`) and its `plan`; `options`
    are `exporters.export`'s (opset, exporter, verify_data, n_verify, atol, rtol, …)."""
    from ..exporters import export
    from ..exporters.manifest import manifest_extra

    return export(
        model,
        out,
        tuple(data_config.input_size),
        name=name,
        manifest_extra=manifest_extra(model, data_config, source, plan),
        **options,
    )


def int8_calibration(images) -> list:
    """The INT8 calibration batches from `images`: the range images (`int8_images`) the
    planner measured its INT8 plans with."""
    from torch.utils.data import Subset

    from ..exporters.quantize import calibration_batches, int8_images

    ranges, _ = int8_images(images)
    return calibration_batches(Subset(images, ranges), len(ranges))


def export_int8(
    onnx_path: Path,
    artifacts: set[str],
    batches: list,
    *,
    recipe=None,
    float_nodes: list[str] | tuple[str, ...] = (),
    nncf_within: tuple[list, float] | None = None,
) -> dict[str, dict]:
    """Write beside `onnx_path` the INT8 files of `artifacts` (deployment artifact names; the
    float ones are ignored), by `recipe` (default: the default recipe) with `float_nodes` in
    float; returns per file written its float layer count and seconds."""
    from ..exporters.quantize import DEFAULT_RECIPE, int8_artifacts
    from ..layout import INT8_NAMES

    reports = int8_artifacts(
        onnx_path, artifacts, batches, recipe or DEFAULT_RECIPE, float_nodes, nncf_within
    )
    return {
        INT8_NAMES[a]: {"float_layers": len(r.excluded), "seconds": round(r.seconds, 1)}
        for a, r in reports.items()
    }


def variant_files(folder: Path, engine: Path | None = None) -> dict[str, Path]:
    """What an export left in `folder` for the benchmark: model.onnx and the INT8 files by
    artifact name (`layout.VariantFiles`), and `engine` when that file is there."""
    from ..layout import INT8_NAMES, VariantFiles

    files = VariantFiles(folder)
    found = {artifact: files.artifact(artifact) for artifact in ("onnx", *INT8_NAMES)}
    if engine is not None:
        found["engine"] = engine
    return {key: path for key, path in found.items() if path.is_file()}
