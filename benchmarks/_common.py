"""Helpers shared by the benchmark scripts: environment facts and result files."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def result_stem(name: str, tag: str = "") -> Path:
    """`results/<name>[_<tag>]`, the tag's dots and other odd characters made `_`: the caller
    adds `.json`/`.md` with `with_suffix`, which would eat a tag's `.3` (`x1.3`)."""
    import re

    clean = re.sub(r"[^A-Za-z0-9_-]", "_", tag)
    return RESULTS / f"{name}{'_' + clean if clean else ''}"


def log(message: str) -> None:
    """A progress line with the wall-clock time, flushed (long runs are followed by `tail`)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def hits(model: torch.nn.Module, images, batch_size: int = 64) -> np.ndarray:
    """1 where `model`'s top-1 on each labelled image is right (in-process: no workers, as
    OpenVINO may be loaded), the per-image input of `paired`."""
    from rmt_deploy.budget import model_outputs

    outputs, labels = model_outputs(model, images, batch_size=batch_size, workers=0)
    return (outputs.argmax(1) == labels).numpy()


def paired(a: np.ndarray, b: np.ndarray, resamples: int = 2000) -> tuple[float, float, float]:
    """Mean of (a − b) in pp over the same images (0/1 hits) and its 95 % bootstrap interval."""
    diff = (a.astype(float) - b.astype(float)) * 100
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def environment() -> dict:
    """What a reader needs to compare numbers: machine, threads, library versions."""
    from rmt_deploy.machine import cpu_name

    cpu = cpu_name()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
