"""Channel pruning as a strategy: whole output channels removed through Torch-Pruning's
dependency graph, each group's width no smaller than its spectrum's spike count, widths chosen
by a DP over damage and latency measured on the deployment (`rmt_deploy/channels/`)."""

from __future__ import annotations

import copy
from dataclasses import fields

import torch

from ..channels import ChannelError
from ..compress import compress_
from ..plan import CompressionPlan, LayerPlan, channels_entry, dense_entry, factorized_entry
from ..planner.channels import Candidate, ChannelSearch, ChannelSearchConfig, search_widths
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


def _layers(ctx: PlanContext, search: ChannelSearch, candidate: Candidate) -> list[LayerPlan]:
    """The plan's layers for one candidate: narrowed groups (named by their first producer),
    factorized layers (joint table), the rest kept."""
    chosen = {c.name: c for c in candidate.choices}
    skipped = {s.name: s for s in search.skipped}  # in no group: the head, a forward it breaks
    layers = []
    for name, module in ctx.targets:
        c, rank = chosen.get(name), candidate.lowrank.get(name)
        if rank is not None:
            layers.append(_factorized(name, module, rank, search))
            continue
        if name in skipped:
            skip = skipped[name]
            layers.append(dense_entry(name, module, f"kept: {skip.reason}", skip.code))
            continue
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


def _factorized(name: str, module, option, search: ChannelSearch) -> LayerPlan:
    reason = (
        f"rank {option.rank}: predicted output error {option.error:.3g}, measured "
        f"{option.ms:.4f} ms in context on {search.deployment} (its channel groups stay whole)"
    )
    stats = {"chosen_ms": option.ms or 0.0, "output_error": option.error}
    return factorized_entry(name, module, search.factors[name], option.rank, reason, stats)


def _probe(ctx: PlanContext, search: ChannelSearch, config: ChannelSearchConfig, size) -> None:
    """Recovery follows: each finalist is compressed, fine-tuned `probe_steps` steps on the
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
        plan = CompressionPlan("channels", {"input_size": size}, _layers(ctx, search, candidate))
        model = compress_(copy.deepcopy(ctx.model), plan)
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
        _probe(ctx, search, config, list(images.shape[1:]))
    except ChannelError as exc:
        raise StrategyError(str(exc)) from exc
    ctx.config["finalists_probed"] = [
        {"widths": c.widths(), "ranks": {n: o.rank for n, o in c.lowrank.items()},
         "predicted_ms": c.predicted_ms, "damage": c.predicted_damage,
         "heldout_after_probe": c.heldout} for c in search.candidates
    ]  # fmt: skip
    ctx.config["table"] = search.table  # per form: entries, faster than dense, most saving
    ctx.config["input_size"] = list(images.shape[1:])  # what compress traces the model with
    ctx.config["deployment"] = deployment.name  # what the widths were timed on: it ships
    return _layers(ctx, search, search.candidate)
