"""Each strategy against its definition (not against its own output)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rmt_deploy.compress import compress_
from rmt_deploy.models import CifarResNet
from rmt_deploy.strategies import StrategyError, plan
from rmt_deploy.strategies.classic_rmt import sparsify_singular_vectors
from rmt_deploy.strategies.seb import layer_kind, seb_regime, seb_weights


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


def _spectrum(edges: dict[str, float | None]) -> SimpleNamespace:
    """A stand-in for analyze()'s result: each layer's MP singular-value edge σ₊ (None: no fit)."""
    fit = lambda e: None if e is None else SimpleNamespace(singular_edge=e)  # noqa: E731
    return SimpleNamespace(layers=[SimpleNamespace(name=n, fit=fit(e)) for n, e in edges.items()])


def test_seb_scales_follow_the_formula():
    """SEB weights w = max(0.1, 1 + β·[1 − s/s_d]₊·z) worked out by hand on tiny cases, then a
    plan checked against global pruning by |W|/w done here."""
    # σ₊ = 1, 2, 3: mean 2, population std √(2/3), z = −√1.5, 0, +√1.5 = ∓1.2247449; at
    # s = 0.5 β = 1.25, s_d = 0.7: β·(1 − 5/7) = 5/14, and 5/14·√1.5 = 0.4374089.
    edges = {"a": 1.0, "b": 2.0, "c": 3.0, "d": None}
    weights = seb_weights(_spectrum(edges), list(edges), 0.5)
    assert weights == pytest.approx({"a": 0.5625911, "b": 1.0, "c": 1.4374089, "d": 1.0}, abs=1e-7)
    # s = 0.6: MLP β = 2, attention β = 1, s_d = 0.85, 1 − 0.6/0.85 = 5/17; two layers: z = ±1
    pair = {"blocks.0.mlp.fc1": 3.0, "blocks.0.attn.qkv": 1.0}
    assert seb_weights(_spectrum(pair), list(pair), 0.6) == pytest.approx(
        {"blocks.0.mlp.fc1": 1 + 10 / 17, "blocks.0.attn.qkv": 1 - 5 / 17}, abs=1e-12
    )  # 1.5882353 and 0.7058824
    # s = 0.3: β = 1, s_d = 0.5, factor 0.4; σ₊ = 0 once and 1 nine times: mean 0.9, std 0.3,
    # z = −3 (w = 1 − 1.2 < 0.1: the floor) and +1/3 (w = 1 + 0.4/3)
    ten = {"low": 0.0, **{f"l{i}": 1.0 for i in range(9)}}
    floor = seb_weights(_spectrum(ten), list(ten), 0.3)
    assert floor == pytest.approx({"low": 0.1, **{f"l{i}": 1 + 0.4 / 3 for i in range(9)}})
    # below 0.30 (β = 0) and past s_d ([1 − 0.9/0.85]₊ = 0) every layer keeps w = 1
    for sparsity in (0.2, 0.9):
        assert seb_weights(_spectrum(pair), list(pair), sparsity) == pytest.approx(
            dict.fromkeys(pair, 1.0)
        )

    # Two fitted layers have z = ±1 whatever their edges: at s = 0.5 w = 1 ± 5/14. The
    # noisier layer (4× the entry variance, the larger σ₊) is pruned harder.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 64, bias=False), nn.Linear(64, 96, bias=False))
    with torch.no_grad():
        model[0].weight.normal_(0, 2.0)
        model[1].weight.normal_(0, 1.0)
    p = plan(model, "seb", 0.5)
    hand = {"0": 1 + 5 / 14, "1": 1 - 5 / 14}
    assert {layer.name: layer.stats["seb_scale"] for layer in p.layers} == pytest.approx(hand)
    scores = np.concatenate(
        [np.abs(model[int(n)].weight.detach().numpy()).ravel() / w for n, w in hand.items()]
    )
    keep = scores > np.median(scores)  # 12,288 scores, no ties: exactly half kept
    masks = np.concatenate([layer.payload["mask"].numpy().ravel() for layer in p.layers])
    assert np.array_equal(masks.astype(bool), keep)
    assert p.layers[0].density < 0.5 < p.layers[1].density


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
