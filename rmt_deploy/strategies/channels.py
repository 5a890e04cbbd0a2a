"""Channel pruning as a strategy: whole output channels removed through Torch-Pruning's
dependency graph, each group's width no smaller than its spectrum's spike count, widths chosen
by a DP over damage and latency measured on the deployment (`rmt_deploy/channels/`)."""

from __future__ import annotations

import copy
from dataclasses import fields

import torch

from ..channels import ChannelError, prune_channels_
from ..plan import LayerPlan, channels_entry, dense_entry
from ..planner.channels import ChannelSearch, ChannelSearchConfig, search_widths
from .base import PlanContext, StrategyError, register_strategy

SETTINGS = {f.name: f.name for f in fields(ChannelSearchConfig)}


def _deployment(name: str, target):
    from ..deploy import DeploymentError, resolve

    wanted = target.deployments if name == "auto" else [name]
    try:
        chosen, _ = resolve(wanted, target.device)
    except DeploymentError as exc:
        raise StrategyError(f"strategy channels: {exc}") from exc
    return chosen[0]


def _layers(ctx: PlanContext, search: ChannelSearch) -> list[LayerPlan]:
    chosen = {c.name: c for c in search.choices}
    layers = []
    for name, module in ctx.targets:
        c = chosen.get(name)
        if c is None:
            layers.append(dense_entry(name, module, "kept: its channel group stays whole", "kept"))
            continue
        reason = (
            f"{c.width} of {c.channels} channels (floor {c.floor.floor} from "
            f"{c.floor.source}{', bound' if c.floor_bound else ''})"
        )
        stats = {
            "floor": float(c.floor.floor), "floor_bound": float(c.floor_bound),
            "damage": c.damage, "saving_ms": c.saving_ms,
        }  # fmt: skip
        layers.append(channels_entry(name, module, c.width, reason, stats, c.keep))
    return layers


def _probe(ctx: PlanContext, search: ChannelSearch, config: ChannelSearchConfig, example) -> None:
    """Recovery follows: each finalist is narrowed, fine-tuned `probe_steps` steps on the
    calibration images (distilled from the dense model) and scored on the held-out images;
    the best one is chosen. One-shot damage ranks candidates before recovery, not after."""
    if config.probe_steps == 0 or ctx.heldout is None or len(search.candidates) < 2:
        return
    from ..budget import model_outputs, top1
    from ..recovery import FinetuneConfig, finetune

    reference, labels = model_outputs(ctx.model, ctx.heldout)
    labels = reference.argmax(1) if labels is None else labels
    recipe = FinetuneConfig(
        max_steps=config.probe_steps, batch_size=32, lr=0.01, distill_alpha=0.7,
        warmup_steps=max(1, config.probe_steps // 10), workers=0,  # no fork: runtimes are loaded
    )  # fmt: skip
    for candidate in search.candidates:
        model = copy.deepcopy(ctx.model)
        prune_channels_(model, {c.name: c.keep for c in candidate.choices}, example)
        finetune(model, ctx.data, recipe, teacher=ctx.model, progress=False)
        candidate.heldout = top1(model_outputs(model, ctx.heldout)[0], labels)
    search.chosen = max(range(len(search.candidates)), key=lambda i: search.candidates[i].heldout)


@register_strategy("channels", needs_data=True, config=ChannelSearchConfig, settings=SETTINGS)
def channels(ctx: PlanContext):
    """Whole channels removed (Torch-Pruning), widths from the MP spikes up, by measured DP."""
    config = ChannelSearchConfig(**{k: ctx.config[k] for k in SETTINGS})
    count = min(config.calib_images, len(ctx.data))
    images = torch.stack([ctx.data[i][0] for i in range(count)])
    spikes = {layer.name: layer.edge_rank for layer in ctx.spectrum.layers}
    deployment = _deployment(config.deployment, ctx.target)
    try:
        search = search_widths(
            ctx.model, images, spikes, config, deployment, ctx.target.batch, progress=True
        )
        _probe(ctx, search, config, images[:1])
    except ChannelError as exc:
        raise StrategyError(str(exc)) from exc
    ctx.config["finalists_probed"] = [
        {"widths": c.widths(), "predicted_ms": c.predicted_ms, "damage": c.predicted_damage,
         "heldout_after_probe": c.heldout} for c in search.candidates
    ]  # fmt: skip
    ctx.config["input_size"] = list(images.shape[1:])  # what compress traces the model with
    ctx.config["deployment"] = deployment.name  # what the widths were timed on: it ships
    return _layers(ctx, search)
