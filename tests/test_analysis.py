"""analyze(): which layers, what is reported, JSON round trip, bad weights."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from rmt_deploy import ModelSpectrum, analyze
from rmt_deploy.analysis import LayerSpectrum
from rmt_deploy.errors import NonFiniteWeightsError
from tests.families import FAMILIES


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 64, 3)
        self.depthwise = nn.Conv2d(64, 64, 3, groups=64)
        self.fc = nn.Linear(576, 256)
        self.head = nn.Linear(256, 10)  # too small: min dim 10
        self.norm = nn.LayerNorm(256)  # not analyzed


def _four_spikes_in_clipped_noise(m: int, n: int, noise_std: float) -> torch.Tensor:
    """Gaussian noise (entry std `noise_std`) with its singular values clipped at their 90th
    percentile, plus 4 orthogonal directions of singular value 5: the noise tops out near
    noise_std·(√m + √n)·0.8 and the MP edge cannot fall below the clipped value, so the
    layer has exactly 4 spikes whatever the edge's fine print."""
    noise = torch.randn(m, n, dtype=torch.float64) * noise_std
    u, s, vh = torch.linalg.svd(noise, full_matrices=False)
    s = s.clamp(max=float(torch.quantile(s, 0.9)))
    u_sig, _ = torch.linalg.qr(torch.randn(m, 4, dtype=torch.float64))
    v_sig, _ = torch.linalg.qr(torch.randn(n, 4, dtype=torch.float64))
    return ((u * s) @ vh + 5.0 * u_sig @ v_sig.T).float()


def test_layers_fits_and_reasons():
    """Which layers, why the others are skipped, and the low-rank arithmetic by hand: fc is
    256×576 with 4 planted spikes; conv is PyTorch's default init, uniform ±1/√288, i.e.
    per-entry std 1/√864 = 0.034021 (pure noise)."""
    torch.manual_seed(0)
    toy = Toy()
    with torch.no_grad():
        toy.fc.weight.copy_(_four_spikes_in_clipped_noise(256, 576, 0.01))
    spectrum = analyze(toy, name="toy")
    by_name = {layer.name: layer for layer in spectrum.layers}
    assert list(by_name) == ["conv", "depthwise", "fc", "head"]
    conv = by_name["conv"]
    assert conv.shape == (64, 288) and conv.kind == "conv2d"  # 32·3·3 = 288
    assert conv.fit.noise_std == pytest.approx(0.034021, rel=0.03)
    assert "grouped convolution" in by_name["depthwise"].skipped
    assert by_name["depthwise"].fit is None and by_name["depthwise"].edge_rank is None
    assert "min dimension 10" in by_name["head"].skipped and by_name["head"].param_saving is None
    fc = by_name["fc"]
    assert fc.fit.noise_std == pytest.approx(0.01, rel=0.03)  # the window misses the clipping
    assert fc.break_even_rank == pytest.approx(177.230769, abs=1e-6)  # 147456 / 832
    assert fc.edge_rank == 4
    assert fc.lowrank_params == 3328  # 4 · (256 + 576)
    assert fc.param_saving == pytest.approx(0.977430556, abs=1e-9)  # 1 − 3328 / 147456
    assert fc.noise_fraction == 1 - 4 / 256
    s = spectrum.summary()
    assert (s["layers"], s["fitted"], s["skipped"]) == (4, 2, 2)

    # More spikes than break-even (64·288/352 = 52.4): the dense matrix is the cheaper form.
    def spiked(n_spikes: int) -> LayerSpectrum:
        fit = SimpleNamespace(n_spikes=n_spikes)
        return LayerSpectrum("x", "conv2d", (64, 32, 3, 3), (64, 288), fit=fit)

    assert (spiked(60).lowrank_params, spiked(60).param_saving) == (18432, 0.0)
    assert spiked(52).lowrank_params == 18304  # 52 · 352, just below 64 · 288 = 18432


def test_energy_outside_bulk_of_planted_signal():
    torch.manual_seed(1)
    layer = nn.Linear(512, 256, bias=False)
    u, _ = torch.linalg.qr(torch.randn(256, 4))
    v, _ = torch.linalg.qr(torch.randn(512, 4))
    noise = torch.randn(256, 512) * 0.01
    signal = u @ torch.diag(torch.full((4,), 5.0)) @ v.T
    layer.weight.data = noise + signal
    (spec,) = analyze(nn.Sequential(layer)).layers
    expected = 4 * 25 / (4 * 25 + noise.pow(2).sum().item())  # signal ⟂ noise to first order
    assert spec.fit.n_spikes in (4, 5, 6)
    assert spec.energy_outside_bulk == pytest.approx(expected, abs=0.02)


def test_filter_fn_selects_layers():
    spectrum = analyze(Toy(), filter_fn=lambda module, fqn: isinstance(module, nn.Linear))
    assert [layer.name for layer in spectrum.layers] == ["fc", "head"]


def test_json_round_trip(tmp_path):
    spectrum = analyze(Toy(), name="toy")
    path = spectrum.save(tmp_path / "spectrum.json")
    loaded = ModelSpectrum.load(path)
    assert loaded.to_dict() == spectrum.to_dict()
    original = spectrum.layers[0].fit
    assert np.array_equal(loaded.layers[0].fit.singular_values, original.singular_values)


def test_nan_weights_name_the_layer():
    model = Toy()
    model.fc.weight.data[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match="'fc'"):
        analyze(model)


@pytest.mark.parametrize("name", list(FAMILIES.values()))
def test_timm_families(name):
    from rmt_deploy import load_model

    model = load_model(name)
    spectrum = analyze(model, name=name)
    assert spectrum.fitted, f"{name}: nothing fitted"
    # timm's random init is (truncated) Gaussian noise: the fitted spectra are mostly bulk.
    assert spectrum.summary()["noise_fraction"] > 0.9
