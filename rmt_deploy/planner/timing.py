"""Timing for the planner: input shapes captured in the real model, ONNX files of small
modules, and runners of any deployment timed interleaved over rounds (so a drift of the
machine hits every form alike)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import RmtDeployError


@torch.no_grad()
def capture_input_shapes(
    model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor
) -> dict[str, tuple[int, ...]]:
    """The input shape each layer sees when `model` runs on `example`."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module, args) -> None:  # returning None keeps the input unchanged
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in layers.items()]
    try:
        model.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in shapes]
    if missing:
        raise RmtDeployError(f"layers never called in a forward pass: {', '.join(missing[:5])}")
    return shapes


def median_ms(fn: Callable[[], object], runs: int, cuda: bool = False) -> float:
    return statistics.median(sample_ms(fn, runs, cuda))


def sample_ms(
    fn: Callable[[], object], runs: int, cuda: bool = False, warmup: int = 3
) -> list[float]:
    """Milliseconds of `runs` calls of `fn` after `warmup` calls (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def time_interleaved(
    runners: dict, inputs: dict, rounds: int = 5, runs: int = 10, cuda: bool = False
) -> dict[object, list[float]]:
    """Milliseconds per call of every runner (key → callable(np.ndarray)): `rounds` × `runs`
    samples each, the runners called in turn — one call each, then the next sweep in the
    reverse order — so that the slow spells of a shared machine (medians of one model moved
    27 → 42 ms within minutes here) hit every runner alike and their ratios stay put."""
    keys = list(runners)
    for key in keys:  # warm-up: first calls allocate, compile and tune
        for _ in range(3):
            runners[key](inputs[key])
    if cuda:
        torch.cuda.synchronize()
    samples: dict[object, list[float]] = {key: [] for key in keys}
    for sweep in range(rounds * runs):
        for key in keys if sweep % 2 == 0 else reversed(keys):
            samples[key].append(sample_ms(lambda k=key: runners[k](inputs[k]), 1, cuda, 0)[0])
    return samples


def spread(samples: list[float]) -> dict[str, float]:
    """Median and the interquartile range of a list of timings."""
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {"median_ms": float(median), "q1_ms": float(q1), "q3_ms": float(q3)}


@dataclass
class SpeedupEstimate:
    """The speedup of a candidate over a reference timed interleaved: the median of the paired
    per-sweep ratios (reference ms / candidate ms of the same sweep, so a slow spell of the
    machine cancels) with a bootstrap interval of that median."""

    median: float
    low: float  # one-sided 95 % lower bound
    high: float  # one-sided 95 % upper bound
    pairs: int

    def to_dict(self) -> dict:
        return {"median": self.median, "low": self.low, "high": self.high, "pairs": self.pairs}


def paired_speedup(
    reference: list[float], candidate: list[float], resamples: int = 2000, seed: int = 0
) -> SpeedupEstimate:
    """`reference` and `candidate` are samples from `time_interleaved` (same sweeps, same
    order). Seeded, so the same samples give the same bounds."""
    if len(reference) != len(candidate) or not reference:
        raise RmtDeployError(
            f"paired timings need equally many samples, got {len(reference)} and {len(candidate)}"
        )
    ratios = np.asarray(reference, dtype=float) / np.asarray(candidate, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ratios), size=(resamples, len(ratios)))
    medians = np.median(ratios[picks], axis=1)
    low, high = np.percentile(medians, [5, 95])
    return SpeedupEstimate(float(np.median(ratios)), float(low), float(high), len(ratios))
