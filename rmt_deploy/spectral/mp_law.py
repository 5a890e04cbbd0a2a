"""The Marchenko–Pastur law for the eigenvalues of W Wᵀ / N (W is p×N noise, p ≤ N).

For i.i.d. entries of variance σ² and ratio γ = p/N ∈ (0, 1], the eigenvalues fill
[σ²(1−√γ)², σ²(1+√γ)²] with density √((λ₊−x)(x−λ₋)) / (2πγσ²x) (Marchenko & Pastur 1967).

The CDF has no simple closed form that stays stable for every γ (the density diverges at 0 when
γ = 1), so it is integrated numerically in the angle x = λ₋ + c(1 − cos θ), c = (λ₊−λ₋)/2,
where the integrand c² sin²θ / (2πγ x) is smooth on [0, π] even at γ = 1. The tabulated CDF is
cached per γ, which makes quantiles of a whole spectrum a single interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_GRID = 8193  # points in θ; the trapezoid rule on this smooth integrand is accurate to ~1e-8


def _check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(
            f"aspect ratio must be in (0, 1] (p = min dim over N = max dim), got {ratio}"
        )
    return ratio


@lru_cache(maxsize=256)
def _tabulated_cdf(ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """θ grid on [0, π] and the unit-variance MP CDF at x(θ)."""
    lower, upper = (1 - np.sqrt(ratio)) ** 2, (1 + np.sqrt(ratio)) ** 2
    half_width = (upper - lower) / 2
    theta = np.linspace(0.0, np.pi, _GRID)
    x = lower + half_width * (1 - np.cos(theta))
    with np.errstate(divide="ignore", invalid="ignore"):
        integrand = half_width**2 * np.sin(theta) ** 2 / (2 * np.pi * ratio * x)
    if lower == 0.0:  # γ = 1: the limit at θ → 0 is finite (2cos²(θ/2)/π → 2/π)
        integrand[0] = 2 / np.pi
    steps = (integrand[1:] + integrand[:-1]) * (theta[1] - theta[0]) / 2
    cdf = np.concatenate([[0.0], np.cumsum(steps)])
    cdf /= cdf[-1]  # total is 1 to ~1e-8; make the top exact
    return theta, cdf


@dataclass(frozen=True)
class MarchenkoPastur:
    """MP law with aspect ratio γ = p/N ∈ (0, 1] and per-entry noise variance σ²."""

    ratio: float
    sigma2: float = 1.0

    def __post_init__(self) -> None:
        _check_ratio(self.ratio)
        if not self.sigma2 > 0:
            raise ValueError(f"sigma2 must be positive, got {self.sigma2}")

    @property
    def lower_edge(self) -> float:
        return self.sigma2 * (1 - np.sqrt(self.ratio)) ** 2

    @property
    def upper_edge(self) -> float:
        return self.sigma2 * (1 + np.sqrt(self.ratio)) ** 2

    def pdf(self, x: np.ndarray | float) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        lo, hi = self.lower_edge, self.upper_edge
        inside = (x > lo) & (x < hi)
        out = np.zeros_like(x)
        xi = x[inside]
        out[inside] = np.sqrt((hi - xi) * (xi - lo)) / (2 * np.pi * self.ratio * self.sigma2 * xi)
        return out

    def _theta(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.lower_edge, self.upper_edge
        cos_theta = 1 - (np.clip(x, lo, hi) - lo) / ((hi - lo) / 2)
        return np.arccos(np.clip(cos_theta, -1.0, 1.0))

    def cdf(self, x: np.ndarray | float) -> np.ndarray:
        theta_grid, cdf_grid = _tabulated_cdf(self.ratio)
        return np.interp(self._theta(np.asarray(x, dtype=float)), theta_grid, cdf_grid)

    def ppf(self, q: np.ndarray | float) -> np.ndarray:
        """Quantile function (inverse CDF) for q ∈ [0, 1]."""
        q = np.asarray(q, dtype=float)
        if np.any((q < 0) | (q > 1)):
            raise ValueError("quantile levels must lie in [0, 1]")
        theta_grid, cdf_grid = _tabulated_cdf(self.ratio)
        theta = np.interp(q, cdf_grid, theta_grid)
        lo, hi = self.lower_edge, self.upper_edge
        return lo + (hi - lo) / 2 * (1 - np.cos(theta))
