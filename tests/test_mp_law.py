"""The MP law against its textbook properties and against sampled noise."""

import numpy as np
import pytest
import torch
from scipy import integrate

from rmt_deploy.spectral import MarchenkoPastur

RATIOS = [1.0, 0.75, 0.5, 0.25, 1 / 9, 0.02]


def _moment(law: MarchenkoPastur, power: int) -> float:
    return integrate.quad(
        lambda x: x**power * law.pdf(np.array([x]))[0],
        law.lower_edge,
        law.upper_edge,
        limit=400,
    )[0]


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("sigma2", [1.0, 0.04])
def test_density_moments(ratio, sigma2):
    # Mass 1, mean σ², variance γσ⁴ (Bai & Silverstein, Spectral Analysis of Large Dim. RM, 3.1).
    law = MarchenkoPastur(ratio, sigma2)
    assert _moment(law, 0) == pytest.approx(1.0, abs=1e-6)
    assert _moment(law, 1) == pytest.approx(sigma2, rel=1e-6)
    second = _moment(law, 2)
    assert second - sigma2**2 == pytest.approx(ratio * sigma2**2, rel=1e-5)


@pytest.mark.parametrize("ratio", RATIOS)
def test_cdf_matches_integrated_density(ratio):
    law = MarchenkoPastur(ratio)
    xs = np.linspace(law.lower_edge, law.upper_edge, 9)[1:-1]
    for x in xs:
        expected = integrate.quad(
            lambda t: law.pdf(np.array([t]))[0], law.lower_edge, x, limit=400
        )[0]
        assert law.cdf(x) == pytest.approx(expected, abs=2e-6)
    assert law.cdf(law.lower_edge - 1) == 0.0
    assert law.cdf(law.upper_edge + 1) == pytest.approx(1.0)


@pytest.mark.parametrize("ratio", RATIOS)
def test_ppf_inverts_cdf(ratio):
    law = MarchenkoPastur(ratio, 2.5)
    levels = np.linspace(0.001, 0.999, 101)
    assert law.cdf(law.ppf(levels)) == pytest.approx(levels, abs=1e-6)
    assert law.ppf(0.0) == pytest.approx(law.lower_edge)
    assert law.ppf(1.0) == pytest.approx(law.upper_edge)


def test_square_matrix_density_diverges_at_zero_but_quantiles_are_finite():
    law = MarchenkoPastur(1.0)
    assert law.lower_edge == 0.0
    assert law.pdf(np.array([1e-8]))[0] > 1e3
    q = law.ppf(np.array([1e-6, 0.01, 0.5]))
    assert np.all(np.isfinite(q)) and np.all(np.diff(q) > 0)


@pytest.mark.parametrize(("m", "n"), [(400, 400), (200, 800), (900, 100)])
def test_quantiles_match_sampled_noise(m, n):
    gen = torch.Generator().manual_seed(m + n)
    w = torch.randn(m, n, generator=gen, dtype=torch.float64)
    p, big_n = min(m, n), max(m, n)
    eig = np.sort(torch.linalg.svdvals(w).numpy() ** 2 / big_n)
    law = MarchenkoPastur(p / big_n)
    levels = (np.arange(p) + 0.5) / p
    # Kolmogorov distance between the sample and the law: O(1/p) for Wishart spectra.
    assert np.max(np.abs(law.cdf(eig) - levels)) < 0.03


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="aspect ratio"):
        MarchenkoPastur(1.5)
    with pytest.raises(ValueError, match="sigma2"):
        MarchenkoPastur(0.5, 0.0)
    with pytest.raises(ValueError, match="quantile levels"):
        MarchenkoPastur(0.5).ppf(1.2)
