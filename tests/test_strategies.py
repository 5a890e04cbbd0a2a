"""Each strategy against its definition (not against its own output)."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rmt_deploy.compress import compress_
from rmt_deploy.models import CifarResNet
from rmt_deploy.strategies import StrategyError, plan
from rmt_deploy.strategies.classic_rmt import sparsify_singular_vectors
from rmt_deploy.strategies.seb import layer_kind, seb_regime


def model20():
    torch.manual_seed(0)
    return CifarResNet(20).eval()


def synthetic(n=96):
    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


def kept_and_pruned(model, p, scale=None):
    kept, pruned = [], []
    for layer in p.layers:
        w = model.get_submodule(layer.name).weight.detach().abs().flatten()
        w = w / (scale or {}).get(layer.name, 1.0)
        m = layer.payload["mask"].flatten().bool()
        kept.append(w[m])
        pruned.append(w[~m])
    return torch.cat(kept), torch.cat(pruned)


def test_magnitude_is_a_global_threshold():
    model = model20()
    p = plan(model, "magnitude", 0.6)
    kept, pruned = kept_and_pruned(model, p)
    assert len(pruned) == round(0.6 * (len(kept) + len(pruned)))
    assert kept.min() >= pruned.max()


def test_seb_scales_follow_the_formula():
    model = model20()
    p = plan(model, "seb", 0.5)
    from rmt_deploy import analyze

    spectrum = analyze(model)
    edges = {lay.name: lay.fit.singular_edge for lay in spectrum.layers if lay.fit}
    values = np.array(list(edges.values()))
    beta, s_d = 1.25, 0.70  # the successor's regime for 0.40 < s ≤ 0.55
    for layer in p.layers:
        z = (edges[layer.name] - values.mean()) / values.std() if layer.name in edges else 0.0
        expected = max(0.1, 1 + beta * (1 - 0.5 / s_d) * z)
        assert layer.stats["seb_scale"] == pytest.approx(expected, rel=1e-9)
    scale = {layer.name: layer.stats["seb_scale"] for layer in p.layers}
    kept, pruned = kept_and_pruned(model, p, scale)
    assert kept.min() >= pruned.max()


def test_seb_regimes_and_kinds():
    assert seb_regime(0.2, "mlp") == (0.0, 1.0)
    assert seb_regime(0.35, "attn") == (1.0, 0.5)
    assert seb_regime(0.6, "mlp") == (2.0, 0.85) and seb_regime(0.6, "attn") == (1.0, 0.85)
    assert layer_kind("blocks.0.attn.qkv") == "attn" and layer_kind("blocks.0.mlp.fc1") == "mlp"
    model = model20()
    low_seb, low_mag = plan(model, "seb", 0.2), plan(model, "magnitude", 0.2)
    for a, b in zip(low_seb.layers, low_mag.layers, strict=True):
        assert torch.equal(a.payload["mask"], b.payload["mask"])  # below 0.30 SEB is magnitude


def test_classic_rmt_thresholds():
    torch.manual_seed(2)
    w = torch.randn(64, 128) * 0.05
    s = torch.linalg.svdvals(w)
    untouched = sparsify_singular_vectors(w, edge=float(s.min()) * 0.5, theta=0.1)
    assert torch.allclose(untouched, w, atol=1e-3)  # all directions are spikes: only θ/750 floor
    deep = float(s.max()) * 100  # every direction deep in the bulk: T_i ≈ θ
    # Unit singular vectors have entries below 1, so θ = 1 zeroes all of them.
    assert torch.count_nonzero(sparsify_singular_vectors(w, edge=deep, theta=1.0)) == 0
    changes = [(sparsify_singular_vectors(w, edge=deep, theta=t) - w).norm() for t in (0.02, 0.1)]
    assert 0 < changes[0] < changes[1] < w.norm()
    p = plan(model20(), "classic_rmt", 0.5)
    assert p.summary()["sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert all("weight" in layer.payload for layer in p.layers)


def test_ser_restores_to_exact_sparsity():
    model = model20()
    p = plan(model, "ser", 0.5, data=synthetic(), reservoir_steps=3, batch_size=32, rho=1.1)
    assert p.summary()["sparsity"] == pytest.approx(0.5, abs=1e-6)
    over = plan(model, "seb", 0.55)
    restored = 0
    for a, b in zip(p.layers, over.layers, strict=True):
        assert torch.all(a.payload["mask"] >= b.payload["mask"])  # ρ·s mask ⊆ final mask
        restored += int((a.payload["mask"] - b.payload["mask"]).sum())
    total = sum(layer.params_before for layer in p.layers)
    assert restored == pytest.approx(0.05 * total, abs=2)


def test_hybrid_hands_off_and_reaches_target():
    model = model20()
    p = plan(
        model,
        "hybrid",
        0.4,
        data=synthetic(128),
        cycle_steps=2,
        holdout_images=32,
        reservoir_steps=2,
        batch_size=32,
        step=0.2,
    )
    assert p.summary()["sparsity"] == pytest.approx(0.4, abs=1e-3)
    assert "held-out top-1 by level" in p.layers[0].reason
    # The cycles recalibrated BatchNorm and fine-tuned biases: that state travels in the plan.
    assert "bn1.running_mean" in p.extra_state and "layer1.0.conv1.weight" not in p.extra_state
    compress_(model, p)
    assert torch.equal(model.bn1.running_mean, p.extra_state["bn1.running_mean"])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_strategy_on_user_module():
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16))
    p = plan(model, "seb", 0.45)
    assert p.summary()["sparsity"] == pytest.approx(0.45, abs=1e-4)


def test_settings_are_typed():
    model = model20()
    p = plan(model, "classic_rmt", 0.3, config={"cycles": "40", "reg_steps": "2"})
    assert p.config["cycles"] == 40
    with pytest.raises(StrategyError, match="cycles must be a int"):
        plan(model, "classic_rmt", 0.3, config={"cycles": "abc"})
    with pytest.raises(StrategyError, match="must not be negative"):
        plan(model, "lowrank", 0.3, data=synthetic(), config={"calib_images": -1})
    with pytest.raises(StrategyError, match="no setting sparsity"):
        plan(model, "seb", 0.3, config={"sparsity": 0.9})
    with pytest.raises(StrategyError, match="step must lie"):
        plan(model, "hybrid", 0.3, data=synthetic(), step=0.0)
