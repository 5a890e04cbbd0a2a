"""analyze(): which layers, what is reported, JSON round trip, bad weights."""

import numpy as np
import pytest
import torch
from torch import nn

from rmt_deploy import ModelSpectrum, analyze
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


def test_layers_fits_and_reasons():
    torch.manual_seed(0)
    spectrum = analyze(Toy(), name="toy")
    by_name = {layer.name: layer for layer in spectrum.layers}
    assert list(by_name) == ["conv", "depthwise", "fc", "head"]
    assert by_name["conv"].shape == (64, 288) and by_name["conv"].fit is not None
    assert "grouped convolution" in by_name["depthwise"].skipped
    assert "min dimension 10" in by_name["head"].skipped
    fc = by_name["fc"]
    assert fc.break_even_rank == pytest.approx(576 * 256 / (576 + 256))
    assert fc.edge_rank == fc.fit.n_spikes
    assert fc.lowrank_params == min(576 * 256, fc.edge_rank * (576 + 256))
    assert fc.param_saving == pytest.approx(1 - fc.lowrank_params / (576 * 256))
    # Random init is noise: nearly every singular value is in the bulk.
    assert fc.noise_fraction > 0.95 and fc.param_saving > 0.9
    s = spectrum.summary()
    assert (s["layers"], s["fitted"], s["skipped"]) == (4, 2, 2)


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
