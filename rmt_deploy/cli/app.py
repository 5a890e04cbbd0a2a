"""The `rmt-deploy` command: its parser (one subcommand per verb, each in its own module) and
`main`, which turns the user's errors into one line and exit status 2."""

from __future__ import annotations

import argparse
import errno
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ..errors import RmtDeployError, one_line
from ..machine import keep_large_allocations
from . import analyze, bench, build, compress, export, report, run
from . import eval as evaluate

VERBS = (analyze, compress, export, build, bench, run, report, evaluate)

# Errors of the machine or the file system, not of rmt-deploy: one line, like bad input.
_ENVIRONMENT_ERRNOS = {
    errno.ENAMETOOLONG,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
}


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in the CLI's one-line form (`rmt-deploy: error: …`, exit 2):
    a deployment log gets the problem, not a usage block; `--help` still shows the usage."""

    def error(self, message: str):  # type: ignore[override]
        verb = self.prog.removeprefix("rmt-deploy").strip()
        where = f"{verb}: " if verb else ""
        message = re.sub(r"^argument (\S+): (?=\1 )", "", message)  # our types name the flag
        self.exit(2, f"rmt-deploy: error: {where}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rmt-deploy",
        description="Random-matrix-theory guided compression of vision models for deployment.",
    )
    parser.add_argument(
        "--assets",
        type=Path,
        help="shared assets folder (default: $RMT_DEPLOY_ASSETS, else ../shared/assets)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in VERBS:
        verb.add_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it unwinds as for Ctrl-C: stage processes
    stopped, the output lock released, nothing half-written, the run resumable."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def _sigterm_as_interrupt():
    """Handle SIGTERM like Ctrl-C (from the main thread only, where signals are delivered)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _rerun(args) -> str:
    if args.command == "run":
        return "rerun the same command to resume — finished stages are kept"
    return "rerun the same command — no output was left half-written"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad option (exit 2, said in one line) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    keep_large_allocations()
    previous = _sigterm_as_interrupt()
    try:
        return args.func(args)
    except Terminated:
        print(f"rmt-deploy: terminated (SIGTERM); {_rerun(args)}", file=sys.stderr)
        return 143
    except RmtDeployError as exc:
        print(f"rmt-deploy: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rmt-deploy: interrupted; {_rerun(args)}", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"rmt-deploy: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
