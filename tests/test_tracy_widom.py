"""TW₁ against published values (quantiles, moments) and a Wishart simulation."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from rmt_deploy.spectral import tw1_quantile
from rmt_deploy.spectral.tracy_widom import tw1_cdf

# Johnstone (2001), Ann. Statist. 29(2), Table 1: percentiles of TW₁ to two decimals.
JOHNSTONE_TABLE_1 = {
    0.01: -3.90, 0.05: -3.18, 0.10: -2.78, 0.30: -1.91, 0.50: -1.27,
    0.70: -0.59, 0.90: 0.45, 0.95: 0.98, 0.99: 2.02,
}  # fmt: skip


@pytest.mark.parametrize("level", sorted(JOHNSTONE_TABLE_1))
def test_tw1_quantiles_match_published_table(level):
    assert tw1_quantile(level) == pytest.approx(JOHNSTONE_TABLE_1[level], abs=0.006)


def test_tw1_moments_match_literature():
    # Bornemann (2010), Math. Comp. 79, Table 4: mean −1.2065335745820, variance 1.607781034581.
    # E[X] = b − ∫_a^b F(s) ds and E[X²] = b² − ∫_a^b 2s F(s) ds when F(a) ≈ 0, F(b) ≈ 1.
    a, b = -9.0, 7.0
    mean = b - quad(tw1_cdf, a, b, limit=200)[0]
    second = b * b - quad(lambda s: 2 * s * tw1_cdf(s), a, b, limit=200)[0]
    assert mean == pytest.approx(-1.2065335745820, abs=1e-6)
    assert second - mean**2 == pytest.approx(1.607781034581, abs=1e-5)


def test_tw1_quantile_inverts_cdf_and_is_monotone():
    levels = [0.001, 0.2, 0.5, 0.8, 0.999]
    quantiles = [tw1_quantile(u) for u in levels]
    assert np.all(np.diff(quantiles) > 0)
    for u, q in zip(levels, quantiles, strict=True):
        assert tw1_cdf(q) == pytest.approx(u, abs=1e-8)


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


@pytest.mark.parametrize("level", [0.0, 1.0, -0.1, 1 - 1e-13])
def test_bad_level(level):
    with pytest.raises(ValueError, match="level"):
        tw1_quantile(level)


def test_analyze_works_without_the_tracywidom_package():
    # The GPU image has no TracyWidom (an sdist-only package): block its import and fit.
    code = (
        "import sys; sys.modules['TracyWidom'] = None\n"
        "import torch, rmt_deploy as rd\n"
        "m = torch.nn.Sequential(torch.nn.Linear(256, 128))\n"
        "s = rd.analyze(m)\n"
        "print(len(s.fitted), s.fitted[0].fit.bulk_edge > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "True"]
