"""Benchmarks: latency percentiles, memory, FLOPs and accuracy over backends; reports."""

from ..runtimes import BACKENDS, BackendUnavailable
from .report import render_saved, write_report
from .runner import BenchResult, BenchSuite, benchmark
from .stats import LatencyStats, summarize

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "BenchResult",
    "BenchSuite",
    "LatencyStats",
    "benchmark",
    "render_saved",
    "summarize",
    "write_report",
]
