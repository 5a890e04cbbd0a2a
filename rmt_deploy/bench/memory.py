"""Peak memory of one variant on one backend, measured in a process of its own.

A benchmark process holds every variant and runtime at once, so its peak RSS is the same
number for every row. Each (variant, backend) is therefore loaded and run in a fresh spawned
process at the largest batch, and that process's peak resident set (and CUDA peak) is the
row's figure: what the variant costs when deployed alone.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import signal
import threading
from collections.abc import Iterator

import numpy as np


def _peak_rss_mb() -> float:
    """This process's own high-water RSS in MiB.

    VmHWM belongs to the address space made at exec, whereas Linux carries ru_maxrss over
    fork+exec: a spawned child would report its parent's peak (every row the same).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(spec, backend, options, shape, runs, conn) -> None:
    try:
        import torch

        from ..runtimes import prepare

        runner = prepare(
            backend,
            spec.get("model"),
            spec.get("onnx"),
            spec.get("engine"),
            spec.get("onnx_int8"),
            **options,
        )
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for _ in range(runs):
            runner.run(x)
        runner.synchronize()
        cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        conn.send((_peak_rss_mb(), cuda))
    except Exception as exc:  # reported as a missing figure, with why
        conn.send(f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Start children with SIGINT blocked (the mask survives fork and exec): Ctrl-C reaches
    the whole process group, and a child that gets it dies printing its own traceback (45
    frames of torch's import). The parent alone takes it, once unblocked, and stops them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # started inside, it would unblock SIGINT on its way out
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def peak_memory_mb(
    spec: dict, backend: str, options: dict, shape: tuple[int, ...], runs: int = 3
) -> tuple[float | None, float | None, str | None]:
    """(peak RSS MiB, peak CUDA MiB, why not) of `spec` on `backend` in a spawned process."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    try:
        process = context.Process(target=_child, args=(spec, backend, options, shape, runs, child))
        with _sigint_blocked():
            process.start()
    except Exception as exc:  # e.g. a user's model class that does not pickle
        return None, None, f"cannot start a process for it: {exc}"
    child.close()
    try:
        answer = parent.recv()
    except EOFError:
        answer = f"the process died (exit code {process.exitcode})"
    except BaseException:  # Ctrl-C here: stop the child too, then let the CLI say one line
        process.terminate()
        process.join()
        raise
    process.join()
    if isinstance(answer, str):
        return None, None, answer
    return answer[0], answer[1], None
