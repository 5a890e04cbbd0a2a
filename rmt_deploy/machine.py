"""Facts about this machine and this process that measurements depend on: the CPU's name and
instruction-set flags (read once from /proc/cpuinfo), what OpenVINO's CPU plugin can do here,
and the allocator setting the CLI and the pipeline's stage processes run with."""

from __future__ import annotations

import importlib.util
import platform
import sys
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's model name (Linux), else what `platform` says."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str] | None:
    """The CPU's instruction-set flags (avx512_vnni, amx_int8, …); None where unknown."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def keep_large_allocations() -> bool:
    """Let glibc reuse large freed blocks instead of returning them to the OS at once.

    PyTorch's CPU allocator gets activations from malloc; above glibc's mmap threshold every
    large tensor is a fresh mapping that page-faults in full on first touch. Measured here on
    EfficientNet-Lite1 at 240×240, batch 8, 2 cores: 0.65 s → 0.43 s per forward, system time
    5.4 s → 1.0 s. A process rmt-deploy owns (the CLI, a stage's child) sets this (as
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ would); the library leaves a caller's
    process alone."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
        return bool(libc.mallopt(mmap_threshold, 1 << 30) and libc.mallopt(trim_threshold, 1 << 31))
    except (OSError, AttributeError):  # not glibc
        return False


def openvino_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can do (FP32, BF16, INT8, …); [] without it."""
    if importlib.util.find_spec("openvino") is None:
        return []
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
