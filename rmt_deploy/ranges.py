"""The valid values of a numeric or text setting, said the way an error message needs it:
one declaration per setting, used by the run config's checks and by the strategy registry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """The valid values of one numeric key, said the way an error message needs it."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    @property
    def two_sided(self) -> bool:
        return self.low is not None and self.high is not None

    def interval(self) -> str:
        return (
            f"{'(' if self.low_open else '['}{_num(self.low)}, "
            f"{_num(self.high)}{')' if self.high_open else ']'}"
        )

    def describe(self) -> str:
        if self.two_sided:
            return f"lie in {self.interval()}"
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'} {_num(self.low)}"
        return f"{'<' if self.high_open else '≤'} {_num(self.high)}"

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.high_open else value > self.high)
        )

    def message(self, key: str, value: float) -> str:
        if self.two_sided:
            return f"{key} must {self.describe()}, got {value}"
        kind = "an integer" if self.integer else "a finite number"
        return f"{key} must be {kind} {self.describe()}, got {value}"


def _num(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Choice:
    """The valid values of one text setting."""

    options: tuple[str, ...]

    def holds(self, value: Any) -> bool:
        return value in self.options

    def message(self, key: str, value: Any) -> str:
        return f"{key} must be one of {', '.join(self.options)}, got {value!r}"


AT_LEAST_0, AT_LEAST_1 = Range(0, integer=True), Range(1, integer=True)
NONNEG = Range(0.0)
BELOW_1 = Range(0.0, 1.0, high_open=True)
