"""BEMA fit against random-matrix theory: pure noise, planted spikes, real layers."""

import numpy as np
import pytest
import torch

from rmt_deploy.errors import NonFiniteWeightsError
from rmt_deploy.spectral import MatrixTooSmallError, fit_mp

STD = 0.02
# Singular-value edges of m×n noise with unit entry variance, as literal numbers (σ = 1):
# - asymptotic (Marchenko & Pastur 1967): eigenvalues of WWᵀ/N end at (1 + √γ)², so singular
#   values at √N·(1 + √γ) = √m + √n;
# - the fit's β = 0.8 edge, Johnstone's (2001) finite-N TW₁ scale added at TW₁'s 20 % quantile
#   t = −2.2832 (between −2.78 at 10 % and −1.91 at 30 % in Johnstone's Table 1; a GOE
#   simulation here, n = 300, 6,000 draws, finite-n shift of the mean removed, gave −2.27):
#   √(N·[(1 + √γ)² + t·(√N + √p)(1/√N + 1/√p)^(1/3) / N]).
# Aspect ratios 1/9 … 9, smaller side 64 … 1024.
NOISE_EDGES = {  # (m, n): (asymptotic, finite-N β = 0.8)
    (64, 64): (16.0, 15.2639),
    (64, 576): (32.0, 31.36546),
    (576, 64): (32.0, 31.36546),
    (128, 256): (27.31371, 26.69903),
    (256, 128): (27.31371, 26.69903),
    (100, 900): (40.0, 39.41247),
    (900, 100): (40.0, 39.41247),
    (256, 256): (32.0, 31.42402),
    (384, 1536): (58.78775, 58.30102),
    (1536, 384): (58.78775, 58.30102),
    (512, 512): (45.25483, 44.74342),
    (1024, 1024): (64.0, 63.54534),
    (768, 3072): (83.13844, 82.70548),
    (113, 1017): (42.52058, 41.94524),
}
NOISE_SHAPES = list(NOISE_EDGES)


def _noise(m: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed)) * STD


@pytest.mark.parametrize(("m", "n"), NOISE_SHAPES)
def test_pure_noise(m, n):
    # Three independent draws per shape. BEMA reads the central half of the p eigenvalues, so
    # its per-draw spread is ~1.3 % at 64×64 (measured over 300 draws, mean 0.998): a single
    # draw would miss a 2 % band by chance 14 % of the time; the mean of three does not.
    fits = [fit_mp(_noise(m, n, seed=m * 7 + n + 1000 * draw)) for draw in range(3)]
    assert np.mean([f.noise_std for f in fits]) == pytest.approx(STD, rel=0.02)
    asymptotic, finite = NOISE_EDGES[m, n]
    mean_edge = np.mean([f.singular_edge for f in fits])
    assert mean_edge == pytest.approx(STD * finite, rel=0.03)
    # Against std·(√m+√n) wherever the β = 0.8 margin itself is below 2.5 % (all but the
    # smallest square shapes, where TW theory puts the liberal edge further inside).
    if abs(finite / asymptotic - 1) < 0.025:
        assert mean_edge == pytest.approx(STD * asymptotic, rel=0.03)
    for fit in fits:
        assert fit.shape == (m, n) and fit.aspect_ratio == min(m, n) / max(m, n)
        assert fit.noise_std == pytest.approx(STD, rel=0.045)
        # Per draw, the edge is the tabulated β = 0.8 edge for the fitted σ.
        assert fit.singular_edge == pytest.approx(finite * fit.noise_std, rel=1e-5)
        assert fit.n_spikes <= 3  # the liberal default β flags the top noise value ~80 % of runs
        assert fit.gof < 0.06
        assert fit.noise_fraction > 0.95


def test_liberal_edge_flags_top_noise_value_at_rate_beta():
    gen = torch.Generator().manual_seed(3)
    flagged = np.mean(
        [fit_mp(torch.randn(100, 300, generator=gen)).n_spikes >= 1 for _ in range(300)]
    )
    assert flagged == pytest.approx(0.8, abs=0.1)
    conservative = np.mean(
        [fit_mp(torch.randn(100, 300, generator=gen), beta=0.05).n_spikes >= 1 for _ in range(100)]
    )
    assert conservative < 0.2


@pytest.mark.parametrize(
    ("m", "n", "k"), [(256, 768, 5), (768, 256, 8), (512, 512, 3), (200, 1800, 10)]
)
def test_planted_spikes_above_bbp_are_counted(m, n, k):
    gen = torch.Generator().manual_seed(m + n + k)
    p, big_n = min(m, n), max(m, n)
    ratio = p / big_n
    noise = torch.randn(m, n, generator=gen, dtype=torch.float64) * STD
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    # Signal strengths 2–6× the BBP threshold γ^(1/4) (Baik, Ben Arous & Péché 2005).
    strengths = torch.linspace(2, 6, k, dtype=torch.float64) * ratio**0.25
    signal = u @ torch.diag(strengths * STD * np.sqrt(big_n)) @ v.T
    fit = fit_mp(noise + signal)
    assert k <= fit.n_spikes <= k + 2
    assert fit.noise_std == pytest.approx(STD, rel=0.03)


def test_conv_kernel_is_flattened_and_units_follow_the_weight():
    kernel = torch.randn(128, 32, 3, 3, generator=torch.Generator().manual_seed(0))
    fit = fit_mp(kernel)
    assert fit.shape == (128, 288)
    scaled = fit_mp(kernel * 10)
    assert scaled.noise_std == pytest.approx(10 * fit.noise_std, rel=1e-6)
    assert scaled.singular_edge == pytest.approx(10 * fit.singular_edge, rel=1e-6)
    assert scaled.n_spikes == fit.n_spikes
    transposed = fit_mp(kernel.reshape(128, -1).T)
    assert transposed.noise_std == pytest.approx(fit.noise_std, rel=1e-9)


def test_singular_values_match_svd():
    w = torch.randn(70, 200, generator=torch.Generator().manual_seed(1))
    fit = fit_mp(w)
    assert fit.singular_values == pytest.approx(torch.linalg.svdvals(w.double()).numpy(), rel=1e-6)


def test_bad_matrices():
    with pytest.raises(MatrixTooSmallError, match="min dimension 10"):
        fit_mp(torch.randn(10, 64))
    low_rank = torch.randn(64, 5) @ torch.randn(5, 256)
    with pytest.raises(MatrixTooSmallError, match="rank-deficient"):
        fit_mp(low_rank)
    w = torch.randn(64, 64)
    w[3, 4] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="NaN/Inf"):
        fit_mp(w)
    with pytest.raises(ValueError, match="alpha"):
        fit_mp(torch.randn(64, 64), alpha=0.6)


def test_real_resnet56_layer_has_a_finite_fit(resnet56):
    fit = fit_mp(resnet56.layer3[4].conv1.weight)
    assert fit.shape == (64, 576)
    assert np.isfinite(fit.gof) and 0 < fit.gof < 1
    assert 0 < fit.n_spikes < 64
    # Trained weights are not pure noise: far more spikes than noise of the same size shows.
    assert fit.n_spikes > 5
