"""Which width each channel group gets: measured damage and measured latency, one DP.

For every group and every candidate width (multiples of the runtime's block from the group's
spectral floor up), a copy of the model with only that group narrowed is timed on the
deployment inside its neighbours: the smallest module that holds the whole group (a residual
block for the channels inside a block, the model for a residual stage's channels), the widths
of one group timed interleaved. Its damage is either (`importance`, the default) the share of
the model's channel importance the width removes — additive across groups, the saliency of
HALP's latency knapsack (Shen et al. 2022) and of DepGraph's global ranking — or (`output`) the
relative output error of that one-group copy on calibration images. The per-group (damage,
latency) options go to the same multiple-choice knapsack as low-rank ranks
(`planner.allocate`); the least damaging allocation predicted to reach the speedup asked for
is chosen (`uniform`: every group at the same share of its channels, for comparison).

Measured on ResNet-56 (benchmarks/channel_ablation.py): one-shot output error sums badly — it
spends the whole budget on a few groups cut to 8–16 channels, which recovery does not repair.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..channels.graph import ChannelGraph, channel_graph
from ..channels.importance import IMPORTANCE, channel_scores
from ..channels.prune import keep_top, prune_channels_
from ..channels.widths import WidthFloor, spectral_floors, width_options
from ..errors import RmtDeployError
from ..progress import tqdm
from .allocate import COST_BINS, DAMAGE_CAPS, allocate, relative_output_error
from .joint import (
    LowRankOptions,
    exclusive,
    lowrank_options,
    on_output_scale,
    output_scale,
    split,
    table_summary,
)
from .layer_table import LayerEntry, LayerOption
from .timing import capture_input_shapes, spread, time_interleaved

DAMAGES = ("importance", "output")


@dataclass
class ChannelSearchConfig:
    """The `channels` strategy's settings, with their ranges."""

    importance: str = "magnitude"  # magnitude | bn
    floor: str = "spectrum"  # spectrum: no width below the MP spike count | none
    allocation: str = "dp"  # dp | uniform
    damage: str = "importance"  # importance: share of channel importance removed | output
    multiple: int = 8  # widths are multiples of this (the CPU kernels' block)
    max_options: int = 8  # widths timed per group at most (evenly spread from the floor up)
    speedup: float = 1.5  # the least damaging widths predicted this much faster
    deployment: str = "auto"  # the deployment widths are timed on (auto: the target's first)
    calib_images: int = 256
    rounds: int = 3
    runs: int = 10
    finalists: int = 3  # DP allocations reaching the speedup, each briefly recovered
    probe_steps: int = 40  # recovery steps per finalist before held-out top-1 picks one (0: off)
    lowrank: bool = False  # also each layer's low-rank ranks, in the same table (planner.joint)

    def __post_init__(self) -> None:
        choices = {"importance": IMPORTANCE, "floor": ("spectrum", "none")}
        choices["allocation"] = ("dp", "uniform")
        choices["damage"] = DAMAGES
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise RmtDeployError(
                    f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}"
                )
        if self.lowrank and self.allocation != "dp":
            raise RmtDeployError("lowrank options need allocation: dp (uniform widths only)")
        if int(self.probe_steps) < 0:
            raise RmtDeployError(f"probe_steps must be at least 0, got {self.probe_steps}")
        for key in ("multiple", "max_options", "calib_images", "rounds", "runs", "finalists"):
            if int(getattr(self, key)) < 1:
                raise RmtDeployError(f"{key} must be at least 1, got {getattr(self, key)}")
        if not self.speedup > 1.0:
            raise RmtDeployError(f"speedup must be above 1 (× over dense), got {self.speedup}")


@dataclass
class GroupChoice:
    """A group's chosen width and why: the floor, whether it bound, damage and latency."""

    name: str
    channels: int
    width: int
    floor: WidthFloor
    floor_bound: bool  # the narrowest option was taken and the floor set it above the block
    damage: float
    saving_ms: float
    keep: torch.Tensor


@dataclass
class Candidate:
    """One allocation of widths, what the table predicts for it and, once probed, its score
    on held-out images after a short recovery."""

    choices: list[GroupChoice]
    predicted_ms: float
    predicted_damage: float
    heldout: float | None = None
    lowrank: dict[str, LayerOption] = field(default_factory=dict)  # layer → rank (joint table)

    def widths(self) -> dict[str, int]:
        return {c.name: c.width for c in self.choices}


@dataclass
class ChannelSearch:
    """What the search measured and the candidates it found, the least damaging first."""

    candidates: list[Candidate]
    dense_ms: float
    skipped: list
    deployment: str
    chosen: int = 0
    factors: dict = field(default_factory=dict)  # whitened factors of low-rank layers
    table: dict = field(default_factory=dict)  # per form: entries, faster than dense, saving

    @property
    def candidate(self) -> Candidate:
        return self.candidates[self.chosen]


def block_of(names: list[str]) -> str:
    """The smallest module holding every layer in `names` ("" is the model)."""
    parts = [n.split(".") for n in names]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common[: min(len(p) for p in parts) - 1])


def called_block(model: nn.Module, name: str) -> str:
    """`name`, or its nearest ancestor that the forward calls: a ModuleList or ModuleDict
    (EfficientNet's `_blocks`) is iterated by its parent, never called itself."""
    while name and isinstance(model.get_submodule(name), nn.ModuleList | nn.ModuleDict):
        name = name.rpartition(".")[0]
    return name


def narrowed_copy(model: nn.Module, example: torch.Tensor, keep: dict[str, torch.Tensor]):
    """A copy of `model` (shortcuts exposed) with the groups in `keep` narrowed; the groups
    come from the search's own graph, whose forward check ran once, not once per copy."""
    clone = copy.deepcopy(model)
    prune_channels_(clone, keep, example, channel_graph(clone, example, check_forward=False))
    return clone.eval()


@torch.no_grad()
def measure_group(
    model: nn.Module,
    cg: ChannelGraph,
    name: str,
    widths: list[int],
    scores: torch.Tensor,
    ctx: MeasureContext,
) -> LayerEntry:
    """The group's options: dense and each width, damage on `ctx.images`, time in context."""
    block = called_block(model, block_of(cg.groups[name].layers))
    shape = ctx.shapes.setdefault(block, _input_shape(model, block, ctx))
    copies = {w: narrowed_copy(model, ctx.example, {name: keep_top(scores, w)}) for w in widths}
    runners = {0: ctx.runner(model.get_submodule(block), shape, f"{name}-dense")}
    runners.update(
        {w: ctx.runner(m.get_submodule(block), shape, f"{name}-{w}") for w, m in copies.items()}
    )
    inputs = {k: ctx.batch(shape) for k in runners}
    samples = time_interleaved(runners, inputs, ctx.rounds, ctx.runs)
    options = [LayerOption("dense", **_timing(samples[0]))]
    for w, m in copies.items():
        options.append(LayerOption("channels", w, ctx.damage(m), **_timing(samples[w])))
    channels = cg.groups[name].channels
    return LayerEntry(name, "channels", list(shape), [channels, 0], 0, options, sensitivity=1.0)


def _timing(samples: list[float]) -> dict[str, float]:
    s = spread(samples)
    return {"ms": s["median_ms"], "q1_ms": s["q1_ms"], "q3_ms": s["q3_ms"]}


def _input_shape(model: nn.Module, block: str, ctx: MeasureContext) -> tuple[int, ...]:
    if not block:
        return (ctx.batch_size, *ctx.example.shape[1:])
    seen = capture_input_shapes(model, {block: model.get_submodule(block)}, ctx.example)
    return (ctx.batch_size, *seen[block][1:])


@dataclass
class MeasureContext:
    """What measuring needs: calibration images and the dense outputs on them, an example
    input, the deployment's runner factory and timing settings."""

    images: torch.Tensor
    reference: torch.Tensor | None  # the dense outputs (None: output damage not measured)
    example: torch.Tensor
    deployment: object  # runtimes.Deployment
    folder: Path
    batch_size: int
    rounds: int
    runs: int
    threads: int
    shapes: dict

    def outputs(self, model: nn.Module) -> torch.Tensor:
        return torch.cat([model(self.images[i : i + 64]) for i in range(0, len(self.images), 64)])

    def damage(self, model: nn.Module) -> float:
        """`model`'s relative output error on the images (NaN: not measured, no reference)."""
        if self.reference is None:
            return float("nan")
        return relative_output_error(self.reference, self.outputs(model))

    def runner(self, module: nn.Module, shape: tuple[int, ...], tag: str):
        from ..runtimes import RUNTIMES

        run = RUNTIMES[self.deployment.runtime].layer_runner(
            self.deployment, copy.deepcopy(module), shape, self.folder, tag.replace(".", "_"),
            self.threads,
        )  # fmt: skip
        if run is None:
            raise RmtDeployError(f"deployment {self.deployment.name} cannot run a pruned block")
        return run

    def batch(self, shape: tuple[int, ...]):
        return torch.randn(shape, generator=torch.Generator().manual_seed(0)).numpy()


def group_options(
    cg: ChannelGraph, spikes: dict[str, int | None], config: ChannelSearchConfig
) -> dict[str, tuple[WidthFloor, list[int]]]:
    """Each group's floor and candidate widths (floor 0 everywhere with `floor: none`)."""
    floors = spectral_floors(cg, spikes if config.floor == "spectrum" else {})
    return {
        name: (
            floors[name],
            spaced(
                width_options(g.channels, floors[name].floor, config.multiple), config.max_options
            ),
        )
        for name, g in cg.groups.items()
    }


def spaced(widths: list[int], count: int) -> list[int]:
    """At most `count` of `widths`, evenly spread, the narrowest always kept."""
    if len(widths) <= count:
        return widths
    step = (len(widths) - 1) / (count - 1) if count > 1 else 0
    return sorted({widths[round(i * step)] for i in range(count)})


def measure_table(
    model: nn.Module,
    cg: ChannelGraph,
    options: dict[str, tuple[WidthFloor, list[int]]],
    ctx: MeasureContext,
    importance: str,
    progress: bool = False,
) -> tuple[list[LayerEntry], dict[str, torch.Tensor]]:
    """One entry per group with at least one candidate width, and every group's scores."""
    scores = {name: channel_scores(cg, name, importance) for name in cg.groups}
    entries = []
    for name in tqdm(list(options), desc="channel widths", unit="group", disable=not progress):
        widths = options[name][1]
        if widths:
            entries.append(measure_group(model, cg, name, widths, scores[name], ctx))
    return entries, scores


def importance_damage(
    entries: list[LayerEntry], scores: dict[str, torch.Tensor]
) -> list[LayerEntry]:
    """The entries with each width's damage set to the share of the model's channel
    importance it removes: the scores of the channels a group drops (its lowest), over the
    sum of every group's scores. Additive, so the DP's sum is the model's loss of importance;
    a channel of a coupled group scores once per layer it spans, so wide couplings cost more."""
    total = sum(float(s.sum()) for s in scores.values())
    out = []
    for e in entries:
        ranked = scores[e.name].sort(descending=True).values
        options = [e.dense] + [
            replace(o, error=float(ranked[o.rank :].sum()) / total) for o in e.options[1:]
        ]
        out.append(replace(e, options=options))
    return out


def damage_caps(entries: list[LayerEntry], count: int = 48) -> list[float]:
    """Damage caps for the DP, spread geometrically over the table's own range: from its
    smallest option's damage to every group at its narrowest (at most 16), with room for the
    DP's rounding up of each group's damage to its bins."""
    errors = [_damage(e, o) for e in entries for o in e.options[1:] if _damage(e, o) > 0]
    if not errors:
        return list(DAMAGE_CAPS)
    top = sum(max((_damage(e, o) for o in e.options[1:]), default=0.0) for e in entries)
    top = min(top * (1 + len(entries) / COST_BINS), 16.0)
    return list(np.geomspace(min(errors), max(top, min(errors)), count))


def _damage(entry: LayerEntry, option: LayerOption) -> float:
    """What the DP counts for an option: its error times its entry's sensitivity."""
    return (entry.sensitivity or 0.0) * option.error


def choose_dp(entries: list[LayerEntry], dense_ms: float, speedup: float, count: int = 1):
    """The `count` least damaging DP allocations predicted to reach `speedup` (else the
    fastest one), least damaging first."""
    allocations = allocate(entries, damage_caps(entries), min_gain=0.0)
    goal = dense_ms - dense_ms / speedup
    reaching = sorted((a for a in allocations if a.saving_ms >= goal), key=lambda a: a.damage)
    return reaching[:count] or [max(allocations, key=lambda a: a.saving_ms)]


def choose_uniform(entries: list[LayerEntry], dense_ms: float, speedup: float, count: int = 1):
    """Every group at the same share of its channels (its nearest measured width), the
    largest share predicted to reach `speedup` (else the smallest share); one allocation."""
    return [_uniform(entries, dense_ms, speedup)]


def _uniform(entries: list[LayerEntry], dense_ms: float, speedup: float):
    from .allocate import Allocation

    def at(share: float):
        choices = {}
        for e in entries:
            want = share * e.matrix_shape[0]
            fits = [o for o in e.options[1:] if o.rank >= want] or [e.options[-1]]
            pick = min(fits, key=lambda o: o.rank) if share < 1 else e.dense
            choices[e.name] = pick
        saving = sum(e.saving_ms(choices[e.name]) for e in entries)
        damage = sum(choices[e.name].error for e in entries)
        return Allocation(choices, saving, damage)

    shares = [s / 64 for s in range(64, 0, -1)]
    goal = dense_ms - dense_ms / speedup
    for share in shares:
        allocation = at(share)
        if allocation.saving_ms >= goal:
            return allocation
    return at(shares[-1])


def search_widths(
    model: nn.Module,
    images: torch.Tensor,
    spikes: dict[str, int | None],
    config: ChannelSearchConfig,
    deployment,
    batch_size: int = 8,
    progress: bool = False,
) -> ChannelSearch:
    """Measure every group's widths on `deployment` and choose them (model left unchanged)."""
    work = copy.deepcopy(model).eval()
    example = images[:1]
    with torch.enable_grad():
        cg = channel_graph(work, example)
    options = group_options(cg, spikes, config)
    with tempfile.TemporaryDirectory(prefix="rmt-channels-") as folder, torch.no_grad():
        ctx = MeasureContext(
            images, None, example, deployment, Path(folder), batch_size,
            config.rounds, config.runs, torch.get_num_threads(), {},
        )  # fmt: skip
        if config.damage == "output" or config.lowrank:
            ctx.reference = ctx.outputs(work)
        entries, scores = measure_table(work, cg, options, ctx, config.importance, progress)
        shape = (batch_size, *example.shape[1:])
        whole = time_interleaved({0: ctx.runner(work, shape, "model")}, {0: ctx.batch(shape)})
    dense_ms = spread(whole[0])["median_ms"]
    measured = entries
    if config.damage == "importance":
        entries = importance_damage(entries, scores)
    lowrank = LowRankOptions([], {})
    if config.lowrank:  # one table: widths on low rank's output-error scale, then its ranks
        if config.damage == "importance":
            entries = on_output_scale(entries, output_scale(measured, entries))
        settings = {"calib_images": config.calib_images, "rank_multiple": config.multiple}
        settings.update(rounds=config.rounds, runs=config.runs)
        lowrank = lowrank_options(model, images, deployment, batch_size, settings, progress)
    by_name = {e.name: e for e in entries}
    candidates = [
        _candidate(cg, allocation, by_name, options, scores, config, dense_ms)
        for allocation in _allocations(entries + lowrank.entries, cg, dense_ms, config)
    ]
    summary = table_summary(entries + lowrank.entries)
    return ChannelSearch(
        candidates, dense_ms, cg.skipped, deployment.name, 0, lowrank.factors, summary
    )


def _allocations(entries: list[LayerEntry], cg: ChannelGraph, dense_ms: float, config):
    """The candidate allocations: uniform widths, or the DP's, no layer narrowed and
    factorized at once."""
    if config.allocation == "uniform":
        return choose_uniform(entries, dense_ms, config.speedup)
    members = {name: set(group.layers) for name, group in cg.groups.items()}
    return exclusive(
        lambda table: choose_dp(table, dense_ms, config.speedup, config.finalists), entries, members
    )


def _candidate(cg, allocation, entries, options, scores, config, dense_ms: float) -> Candidate:
    groups, layers = split(allocation.choices)
    choices = [
        _choice(cg, entries[n], option, options[n], scores[n], config)
        for n, option in groups.items()
    ]
    return Candidate(choices, dense_ms - allocation.saving_ms, allocation.damage, lowrank=layers)


def _choice(cg, entry, option, options, scores, config) -> GroupChoice:
    floor, widths = options
    bound = option.rank == widths[0] and widths[0] > config.multiple
    return GroupChoice(
        entry.name, cg.groups[entry.name].channels, option.rank, floor, bound, option.error,
        entry.saving_ms(option), keep_top(scores, option.rank),
    )  # fmt: skip
