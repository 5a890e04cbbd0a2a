"""Channels and low rank as options of one table (the `channels` strategy's `lowrank: true`).

Besides each channel group's widths, the table holds each layer's low-rank options as the
latency planner builds them (ranks from the whitened SVD, never below the MP edge, timed in
context on the same deployment, damage = measured sensitivity × predicted output error). One
DP chooses among all of them. Two things make that sound:

- one damage scale: a width's importance share is turned into output-error units by one
  factor per model, the median over every measured width of its one-shot relative output
  error over its importance share — the ranking of widths stays the importance ranking
  (which recovers better, benchmarks/channel_ablation.py), the level becomes comparable with
  low rank's predicted output error;
- exclusivity: a layer inside a narrowed group keeps its full-rank weight (factors of the
  unpruned weight do not fit the pruned one, and the two savings were timed apart). Where the
  DP's allocation pairs them, the option saving less latency gives way — its layer or group
  loses its compressed options — and the DP is solved again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .allocate import Allocation, refine_sensitivity
from .config import SearchConfig
from .layer_table import LayerEntry, measure_options
from .prepare import prepare_model

# A layer's low-rank entry is named by this prefix and the layer (a channel group is named by
# its first producer, which is a layer too).
LOWRANK = "lowrank:"
SENSITIVITY_IMAGES = 32


@dataclass
class LowRankOptions:
    """Each layer's low-rank options (entries named LOWRANK + layer) and the whitened factors
    a chosen rank is cut from."""

    entries: list[LayerEntry]
    factors: dict


def lowrank_options(
    model: torch.nn.Module,
    images: torch.Tensor,
    deployment,
    batch: int,
    settings: dict,
    progress: bool = False,
) -> LowRankOptions:
    """The latency planner's low-rank options of every layer, timed on `deployment` in
    context, with each layer's sensitivity measured on the first calibration images."""
    config = SearchConfig(targets=[deployment.name], batch=batch, **settings)
    first = images[:batch]  # repeated up to the batch when there are fewer images
    example = first.repeat(-(-batch // len(first)), *([1] * (first.dim() - 1)))[:batch]
    data = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    prepared = prepare_model(model, data, example, config, progress=progress)
    views = prepared.found.views
    entries = [e for e in prepared.entries(deployment, config, nm24=False) if len(e.options) > 1]
    threads = torch.get_num_threads()
    measure_options(entries, views, deployment, threads, config.rounds, config.runs, progress)
    entries = [e for e in entries if len(e.options) > 1]
    sample = images[:SENSITIVITY_IMAGES]
    refine_sensitivity(model, entries, views, prepared.factors, sample, progress)
    named = [replace(e, name=LOWRANK + e.name) for e in entries if e.sensitivity is not None]
    return LowRankOptions(named, prepared.factors)


def output_scale(output: list[LayerEntry], share: list[LayerEntry]) -> float:
    """Output error per unit of importance share: the median, over every width measured in
    both tables (same entries, same order), of its one-shot output error over its share."""
    ratios = [
        o.error / s.error
        for e, f in zip(output, share, strict=True)
        for o, s in zip(e.options[1:], f.options[1:], strict=True)
        if s.error > 0 and np.isfinite(o.error)
    ]
    return float(np.median(ratios)) if ratios else 1.0


def on_output_scale(share: list[LayerEntry], scale: float) -> list[LayerEntry]:
    """The channel entries with their importance shares weighted into output-error units."""
    return [replace(e, sensitivity=scale) for e in share]


def conflicts(allocation: Allocation, members: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(low-rank entry, group) pairs where a factorized layer sits in a narrowed group."""
    narrowed = [n for n, o in allocation.choices.items() if o.form == "channels"]
    factorized = [n for n, o in allocation.choices.items() if o.form == "lowrank"]
    return [
        (entry, group)
        for group in narrowed
        for entry in factorized
        if entry.removeprefix(LOWRANK) in members.get(group, ())
    ]


def exclusive(pick, entries: list[LayerEntry], members: dict[str, set[str]]) -> list[Allocation]:
    """`pick(entries)`'s allocations with no layer both narrowed and factorized: while the
    first one pairs them, the option of the pair that saves less latency loses its entry's
    compressed options and the DP runs again (each round removes options, so it ends)."""
    entries = list(entries)
    for _ in range(len(entries) + 1):
        allocations = pick(entries)
        clash = conflicts(allocations[0], members)
        if not clash:
            return [a for a in allocations if not conflicts(a, members)]
        entry, group = clash[0]
        by_name = {e.name: e for e in entries}
        saves = {n: by_name[n].saving_ms(allocations[0].choices[n]) for n in (entry, group)}
        loser = entry if saves[entry] <= saves[group] else group
        entries = [replace(e, options=[e.dense]) if e.name == loser else e for e in entries]
    raise AssertionError("exclusive: options left after every entry was made dense")


def split(choices: dict) -> tuple[dict, dict]:
    """An allocation's choices as (group → width option, layer → low-rank option)."""
    groups = {n: o for n, o in choices.items() if o.form == "channels"}
    layers = {n.removeprefix(LOWRANK): o for n, o in choices.items() if o.form == "lowrank"}
    return groups, layers


def table_summary(entries: list[LayerEntry]) -> dict[str, dict]:
    """Per form (channels, lowrank): entries with options, how many have an option measured
    faster than dense in context, and the most all of them could save (ms) — why the DP took
    a form or did not."""
    summary: dict[str, dict] = {}
    for entry in entries:
        form = "lowrank" if entry.name.startswith(LOWRANK) else "channels"
        best = max((entry.saving_ms(o) for o in entry.options[1:]), default=0.0)
        row = summary.setdefault(form, {"entries": 0, "faster": 0, "most_saving_ms": 0.0})
        row["entries"] += 1
        row["faster"] += best > 0
        row["most_saving_ms"] += max(best, 0.0)
    return summary
