"""Run a stage in a process of its own.

Planning, export and benchmarking load the runtimes they measure — OpenVINO with its TBB
thread pool, ONNX Runtime sessions, INT8 quantizers, TensorRT — and they stay loaded.
Training in the same process afterwards died here with a segmentation fault (ResNet-56: plan,
then BatchNorm re-estimation and the first training step; and a second `rd.run` in one
process after a benchmark stage had loaded OpenVINO); runtimes also keep threads that slow
PyTorch. Stages read what they need from the output folder, so these stages run in a fresh
child process and the parent, which trains, never loads those runtimes. Log lines, the result
and the user's errors come back through a pipe; a crash of the child is reported, not hidden.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from pathlib import Path

from ..errors import RmtDeployError


class StageCrashedError(RmtDeployError):
    """A stage's process died without a result (a crash in a native library)."""


def run_isolated(
    stage: str,
    config,
    out: Path,
    assets: Path,
    progress: bool,
    log: Callable[[str], None],
):
    """`STAGE_FUNCTIONS[stage]` on a fresh RunContext in a spawned process: (artifacts, summary)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(
        target=_child,
        args=(stage, config.to_dict(), str(out), str(assets), progress, child),
    )
    process.start()
    child.close()
    result = error = bug = None
    try:
        while True:
            try:
                kind, payload = parent.recv()
            except EOFError:
                break
            if kind == "log":
                log(payload)
            elif kind == "done":
                result = payload
            elif kind == "error":
                error = payload
            else:
                bug = payload
    except BaseException:  # Ctrl-C in the parent: stop the child too, then re-raise
        process.terminate()
        process.join()
        raise
    process.join()
    if error is not None:
        raise error
    if bug is not None:
        raise RuntimeError(f"stage {stage} failed in its process:\n{bug}")
    if result is None:
        raise StageCrashedError(
            f"stage {stage} crashed (its process exited with code {process.exitcode}) and wrote "
            "nothing; rerun to retry it, the stages before it are kept"
        )
    return result


def _child(stage, config_dict, out, assets, progress, conn) -> None:
    from ..machine import keep_large_allocations
    from .config import RunConfig
    from .stages import STAGE_FUNCTIONS, RunContext

    keep_large_allocations()
    try:
        config = RunConfig.from_dict(config_dict)
        ctx = RunContext(
            config, Path(out), Path(assets), progress, lambda line: conn.send(("log", line))
        )
        conn.send(("done", STAGE_FUNCTIONS[stage](ctx)))
    except RmtDeployError as exc:
        try:
            conn.send(("error", exc))
        except Exception:  # an error that does not pickle: its message still comes back
            conn.send(("error", RmtDeployError(str(exc))))
    except BaseException:
        conn.send(("bug", traceback.format_exc()))
    finally:
        conn.close()
