"""Tracy–Widom (β = 1) quantiles, from the numerically solved tables of the TracyWidom package.

TW₁ is the limit law of the largest eigenvalue of a real Wishart matrix (Johnstone 2001); its
quantiles set the finite-size margin of the MP bulk edge.
"""

from __future__ import annotations

import warnings
from functools import lru_cache


@lru_cache(maxsize=64)
def tw1_quantile(level: float) -> float:
    """The `level` quantile of TW₁, e.g. tw1_quantile(0.5) ≈ −1.27 (the median)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"Tracy–Widom quantile level must be in (0, 1), got {level}")
    return float(_tw1().cdfinv(level))


@lru_cache(maxsize=1)
def _tw1():
    with warnings.catch_warnings():  # the package imports the deprecated scipy.misc
        warnings.simplefilter("ignore", DeprecationWarning)
        from TracyWidom import TracyWidom  # import costs ~0.5 s: pay it only when a fit needs it

    return TracyWidom(beta=1)
