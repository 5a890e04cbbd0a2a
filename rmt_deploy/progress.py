"""Progress that fits where it is shown: tqdm's bar on a terminal; in a log (a file, CI, a
pipe) no redrawn bar — one line when a step ends, saying what it did and how long it took."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


def on_terminal(stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LogLine:
    """tqdm's interface (iteration, update, set_postfix, close, context manager) that writes
    one line at close: `desc: N unit in S s`."""

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None,
                 total: int | None = None, unit: str = "it", stream: TextIO | None = None,
                 **_: Any):  # fmt: skip
        self.iterable, self.desc, self.total, self.unit = iterable, desc or "done", total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.n, self.postfix, self.closed = 0, "", False
        self.began = time.perf_counter()

    def __iter__(self) -> Iterator:
        for item in self.iterable if self.iterable is not None else ():
            yield item
            self.n += 1
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs: Any) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        seconds = time.perf_counter() - self.began
        extra = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n} {self.unit} in {seconds:.1f} s{extra}", file=self.stream)

    def __enter__(self) -> LogLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tqdm(iterable: Iterable | None = None, *args: Any, disable: bool = False, **kwargs: Any):
    """tqdm's bar on a terminal, a LogLine elsewhere, nothing when `disable`."""
    from tqdm.auto import tqdm as bar

    if disable or on_terminal(kwargs.get("file")):
        return bar(iterable, *args, disable=disable, **kwargs)
    return LogLine(iterable, *args, stream=kwargs.pop("file", None), **kwargs)
