"""Latency statistics as trtexec reports them: percentiles after warm-up, never one timing."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class LatencyStats:
    runs: int
    batch: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    throughput: float  # images per second at the mean latency

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(ordered: list[float], q: float) -> float:
    """numpy's percentile (linear interpolation), the one the target kit reports too."""
    if not ordered:
        raise ValueError("no samples")
    return float(np.percentile(np.asarray(ordered, dtype=np.float64), q))


def summarize(samples_ms: list[float], batch: int) -> LatencyStats:
    ordered = sorted(samples_ms)
    mean = statistics.fmean(ordered)
    return LatencyStats(
        runs=len(ordered),
        batch=batch,
        min_ms=ordered[0],
        mean_ms=mean,
        median_ms=percentile(ordered, 50),
        p90_ms=percentile(ordered, 90),
        p95_ms=percentile(ordered, 95),
        p99_ms=percentile(ordered, 99),
        max_ms=ordered[-1],
        std_ms=statistics.pstdev(ordered),
        throughput=1e3 * batch / mean,
    )
