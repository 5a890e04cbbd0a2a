"""`rmt-deploy report`: re-render a benchmark's tables and plots from its bench.json."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    report = sub.add_parser("report", help="re-render tables and plots from saved results")
    report.add_argument("dir", type=Path, help="folder with bench.json")
    report.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from ..bench import render_saved

    written = render_saved(args.dir)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
