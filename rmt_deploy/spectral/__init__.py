"""Spectral core: the Marchenko–Pastur law, Tracy–Widom quantiles and the BEMA fit."""

from .fit import MatrixTooSmallError, MPFit, as_matrix, fit_mp, fit_mp_spectrum, singular_values
from .mp_law import MarchenkoPastur
from .tracy_widom import tw1_quantile

__all__ = [
    "MPFit",
    "MarchenkoPastur",
    "MatrixTooSmallError",
    "as_matrix",
    "fit_mp",
    "fit_mp_spectrum",
    "singular_values",
    "tw1_quantile",
]
