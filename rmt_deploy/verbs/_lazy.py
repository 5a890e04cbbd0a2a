"""An argument given as a value or as a zero-argument callable that makes it."""

from __future__ import annotations


def made(value):
    """`value` itself, or what calling it makes: a training folder or a spectrum that costs
    something to make is made only by the verb that uses it (datasets and spectra are not
    callable)."""
    return value() if callable(value) else value
