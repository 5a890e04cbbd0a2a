"""The compress verb: a plan applied to a copy of the dense model, recovered, saved with the
plan in its metadata (what `rmt-deploy eval`, `export` and the pipeline's later stages read)."""

from __future__ import annotations

import copy
import dataclasses
import os
from functools import partial
from pathlib import Path

from torch import nn

from ..compress import compress_
from ._lazy import made
from .recover import RecoveryOptions, recover_


def compress_and_recover(
    dense: nn.Module,
    plan,
    options: RecoveryOptions,
    *,
    calib=None,
    train=None,
    spectrum=None,
    device: str = "cpu",
    progress: bool = False,
    check=None,
    teacher: nn.Module | None = None,
) -> tuple[nn.Module, dict]:
    """(`plan` applied to a copy of `dense` and recovered by `options`, what recovery did).

    `teacher` (default `dense`) is the model distilled from, e.g. the dense model after the
    same recovery. With `check` (held-out images, never the test part), the record also holds
    the compressed model's top-1 there before and after recovery (agreement with `dense` where
    unlabelled).

    Fine-tuning distils from `dense` when `options.distill_alpha` > 0; the seed's group-lasso
    scales come from `spectrum`, the MP analysis of `dense` (analyzed here when not given and
    the recipe needs it). A plan that compresses nothing is not recovered: the dense model
    ships as it is. `calib`, `train` and `spectrum` may be callables, made only when used."""
    model = compress_(copy.deepcopy(dense), plan)
    if not plan.compressed:
        return model, {}
    if spectrum is None:  # analyzed only if the regularizers use it
        spectrum = partial(_analysis, dense)
    if options.bn_recal_images == 0 and any(la.action == "channels" for la in plan.layers):
        # a narrowed layer's consumers see other inputs: their BatchNorm statistics are stale
        options = dataclasses.replace(options, bn_recal_images=2000)
    teacher = (teacher or dense) if options.distill_alpha > 0 else None
    before = _score(model, dense, made(check), device) if check is not None else None
    info = recover_(
        model,
        options,
        calib=calib,
        train=train,
        teacher=teacher,
        spectrum=spectrum,
        device=device,
        progress=progress,
    )
    if before is not None:
        info["check"] = {**before, "after": _score(model, dense, made(check), device)["after"]}
    return model, info


def _score(model: nn.Module, dense: nn.Module, data, device: str) -> dict:
    """Top-1 % on `data` (or top-1 agreement % with `dense` where it has no labels), under the
    keys `before` and `after` alike, so that one call serves either side of recovery."""
    from ..budget import model_outputs, top1

    outputs, labels = model_outputs(model, data, device=device)
    model.cpu()
    metric = "top1"
    if labels is None:
        reference, _ = model_outputs(dense, data, device=device)
        dense.cpu()
        labels, metric = reference.argmax(1), "agreement"
    value = top1(outputs, labels)
    return {"metric": metric, "images": len(data), "before": value, "after": value}


def _analysis(dense: nn.Module):
    from ..analysis import analyze

    return analyze(dense)


def save_compressed(model: nn.Module, plan, model_name: str, path: str | os.PathLike[str]) -> Path:
    """The checkpoint at `path` (safetensors) with the plan and the model's name in its
    metadata, so that `rmt-deploy eval DIR` and the pipeline load it by itself."""
    from ..models import save_checkpoint
    from ..models.checkpoint import PLAN_METADATA_KEY

    meta = {PLAN_METADATA_KEY: plan.to_json(), "rmt_deploy.model": model_name}
    return save_checkpoint(model, path, meta)
