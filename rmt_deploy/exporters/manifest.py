"""What the target kit needs to run an exported model exactly as it was measured, written by
the `export` verb and the pipeline's export stage alike: where the model came from, its
preprocessing, the classes its outputs stand for, and the plan it was compressed with."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..data import model_label_names, model_num_outputs


def manifest_extra(
    model: nn.Module,
    config,  # models.DataConfig
    source: dict[str, Any],
    plan: dict | None = None,
) -> dict[str, Any]:
    """The manifest fields beyond the ONNX file's own (see `export(manifest_extra=…)`)."""
    return {
        "source": source,
        "preprocessing": {
            "input_size": list(config.input_size),
            "mean": list(config.mean),
            "std": list(config.std),
            "crop_pct": config.crop_pct,
            "interpolation": config.interpolation,
        },
        # Class sub-folders are labelled by these names (as `rmt-deploy eval` does); without
        # them only a folder with one sub-folder per output can be labelled, by position.
        "classes": model_label_names(model),
        "num_outputs": model_num_outputs(model, tuple(config.input_size)),
        "plan": plan,
    }
