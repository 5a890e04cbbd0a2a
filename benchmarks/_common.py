"""Helpers shared by the benchmark scripts: environment facts and result files."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def result_stem(name: str, tag: str = "") -> Path:
    """`results/<name>[_<tag>]`, the tag's dots and other odd characters made `_`: the caller
    adds `.json`/`.md` with `with_suffix`, which would eat a tag's `.3` (`x1.3`)."""
    import re

    clean = re.sub(r"[^A-Za-z0-9_-]", "_", tag)
    return RESULTS / f"{name}{'_' + clean if clean else ''}"


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
