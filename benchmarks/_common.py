"""Helpers shared by the benchmark scripts: environment facts and result files."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


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
