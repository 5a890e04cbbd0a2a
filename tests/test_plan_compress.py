"""plan() and compress_(): the registry, JSON round trip, mismatches, bad settings."""

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from rmt_deploy.compress import compress_
from rmt_deploy.layers import (
    LowRankConv2d,
    LowRankLinear,
    MaskedConv2d,
    MaskedLinear,
    is_nm_sparse,
)
from rmt_deploy.models import CifarResNet, load_model, save_checkpoint
from rmt_deploy.models.checkpoint import PLAN_METADATA_KEY
from rmt_deploy.plan import CompressionPlan, PlanError
from rmt_deploy.strategies import STRATEGIES, StrategyError, plan


def small_resnet():
    torch.manual_seed(0)
    return CifarResNet(20).eval()


def test_registry_lists_every_strategy():
    assert set(STRATEGIES) >= {
        "magnitude",
        "classic_rmt",
        "seb",
        "ser",
        "hybrid",
        "lowrank",
        "nm24",
    }
    needs_data = {n for n, s in STRATEGIES.items() if s.needs_data}
    assert needs_data == {"ser", "hybrid", "lowrank", "latency", "channels"}
    # the strategies that train while planning get training images, the others calibration
    assert {name for name, spec in STRATEGIES.items() if spec.needs_training} == {"ser", "hybrid"}


def test_json_round_trip_and_recompute(tmp_path):
    model = small_resnet()
    p = plan(model, "magnitude", 0.5, name="cifar_resnet20")
    path = p.save(tmp_path / "plan.json")
    loaded = CompressionPlan.load(path)
    assert loaded.to_dict() == p.to_dict()
    assert loaded.summary()["sparsity"] == pytest.approx(0.5, abs=1e-4)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    compress_(a, p)
    compress_(b, loaded)  # no payload: per-layer magnitude at the planned density
    for (name, ma), (_, mb) in zip(a.named_modules(), b.named_modules(), strict=True):
        if isinstance(ma, MaskedConv2d | MaskedLinear):
            # a global threshold keeps, in each layer, that layer's largest |W|: the same set
            assert torch.equal(ma.weight_mask, mb.weight_mask), name


def test_compressed_checkpoint_reloads(tmp_path):
    model = small_resnet()
    p = plan(model, "nm24", name="cifar_resnet20")
    compress_(model, p)
    path = save_checkpoint(model, tmp_path / "m.safetensors", {PLAN_METADATA_KEY: p.to_json()})
    again = load_model("cifar_resnet20", path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(again(x), model(x), atol=1e-6)
    assert isinstance(again.layer1[0].conv1, MaskedConv2d)


def test_plan_for_another_model_is_refused():
    p = plan(small_resnet(), "magnitude", 0.3)
    with pytest.raises(PlanError, match="another model"):
        compress_(CifarResNet(20, num_classes=100), p)
    with pytest.raises(PlanError, match="does not have"):
        compress_(torch.nn.Sequential(torch.nn.Linear(3, 3)), p)
    with pytest.raises(PlanError, match="not a compression plan"):
        CompressionPlan.from_dict({"layers": []})


def test_bad_settings():
    model = small_resnet()
    with pytest.raises(StrategyError, match="unknown strategy 'magic'.*available"):
        plan(model, "magic")
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(StrategyError, match=r"sparsity must lie in \[0, 1\)"):
            plan(model, "magnitude", bad)
    with pytest.raises(StrategyError, match="no setting tau"):
        plan(model, "classic_rmt", 0.5, tau=3)
    for name in ("ser", "hybrid", "lowrank"):
        with pytest.raises(StrategyError, match="needs training/calibration data"):
            plan(model, name, 0.5)


def test_nm24_keeps_incompatible_layers_dense_with_reason():
    model = small_resnet()
    p = plan(model, "nm24")
    first = p.layer("conv1")
    assert first.action == "dense" and "input dimension 3 is not divisible by 4" in first.reason
    compress_(model, p)
    assert all(
        is_nm_sparse(m.masked_weight())
        for m in model.modules()
        if isinstance(m, MaskedConv2d | MaskedLinear)
    )


def test_lowrank_plan_meets_parameter_budget():
    """ResNet-20's Conv/Linear weights by hand (He et al. 2016, option-A shortcuts): the stem
    16·3·9 = 432; stage 1, 6·16·16·9 = 13,824; stage 2, 32·16·9 + 5·32·32·9 = 50,688; stage 3,
    64·32·9 + 5·64·64·9 = 202,752; fc 64·10 = 640: 268,336 in all. Everything else (BatchNorm
    2·(7·16 + 6·32 + 6·64) = 1,376, the fc bias 10) is 1,386 and stays. At sparsity 0.3 the
    compressed model, counted module by module, keeps at most 0.7 of the 268,336."""
    model = small_resnet()
    data = TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    p = plan(model, "lowrank", 0.3, data=data, calib_images=64, batch_size=32)
    assert sum(layer.params_before for layer in p.layers) == 268336
    assert sum(q.numel() for q in model.parameters()) == 268336 + 1386
    assert p.summary()["lowrank_layers"] > 0
    compress_(model, p)
    kept = sum(q.numel() for q in model.parameters()) - 1386
    assert 0.6 * 268336 < kept <= 0.7 * 268336
    assert p.summary()["sparsity"] == pytest.approx(1 - kept / 268336, abs=1e-12)
    factorized = [m for m in model.modules() if isinstance(m, LowRankConv2d | LowRankLinear)]
    assert len(factorized) == p.summary()["lowrank_layers"]
    for module in factorized:  # each one smaller than the dense matrix it replaced
        dense = module.dense_weight().numel()
        assert module.first.weight.numel() + module.second.weight.numel() < dense
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
