"""TW₁ quantiles against published moments and a Wishart simulation."""

import numpy as np
import pytest
import torch

from rmt_deploy.spectral import tw1_quantile


def test_tw1_moments_match_literature():
    # Mean −1.2065, variance 1.6078 (Tracy & Widom 1996; Bornemann 2010, Table 4).
    levels = np.linspace(0.0005, 0.9995, 2000)
    quantiles = np.array([tw1_quantile(float(u)) for u in levels])
    assert quantiles.mean() == pytest.approx(-1.2065, abs=0.01)
    assert quantiles.var() == pytest.approx(1.6078, rel=0.03)  # tails beyond 0.05 % cut off
    assert np.all(np.diff(quantiles) > 0)


def test_tw1_describes_largest_wishart_eigenvalue():
    # Johnstone (2001): (λ_max − μ)/σ → TW₁ for white Wishart; check the 20 % and 50 % levels.
    gen = torch.Generator().manual_seed(7)
    n, p, reps = 400, 100, 300
    lam = np.array(
        [
            torch.linalg.eigvalsh(
                (w := torch.randn(p, n, generator=gen, dtype=torch.float64)) @ w.T
            )[-1].item()
            for _ in range(reps)
        ]
    )
    mu = (np.sqrt(n - 1) + np.sqrt(p)) ** 2
    sigma = (np.sqrt(n - 1) + np.sqrt(p)) * (1 / np.sqrt(n - 1) + 1 / np.sqrt(p)) ** (1 / 3)
    scaled = (lam - mu) / sigma
    for level in (0.2, 0.5):
        assert np.mean(scaled <= tw1_quantile(level)) == pytest.approx(level, abs=0.08)


def test_bad_level():
    with pytest.raises(ValueError):
        tw1_quantile(1.0)
