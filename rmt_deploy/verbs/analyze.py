"""The analyze verb: the MP fit of every Linear/Conv weight, written as a report."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..analysis import ModelSpectrum, analyze
from ..spectral.fit import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_MIN_DIM


def analyze_to(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    name: str,
    plots: bool = True,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    min_dim: int = DEFAULT_MIN_DIM,
    progress: bool = False,
) -> tuple[ModelSpectrum, list[Path]]:
    """(the spectrum of `model`, the files written into `out`: spectrum.json, spectrum.md and
    with `plots` one PNG per fitted layer)."""
    from ..report.spectrum import write_spectrum_report

    spectrum = analyze(model, alpha=alpha, beta=beta, min_dim=min_dim, name=name, progress=progress)
    written = write_spectrum_report(spectrum, out, plots=plots, progress=progress)
    return spectrum, written
