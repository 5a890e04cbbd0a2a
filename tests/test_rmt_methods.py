"""The RMT methods as published: classic RMT's seed formulas, the seed's regularizers, both
hybrid variants, SER that never resurrects, 2:4 by SEB order — checked against values worked
out by hand, not against a copy of the formulas."""

import math
import types

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rmt_deploy import compress_, plan
from rmt_deploy.errors import RmtDeployError
from rmt_deploy.layers import MASKED_TYPES
from rmt_deploy.models import CifarResNet
from rmt_deploy.recovery import FinetuneConfig, FinetuneResult, lasso_scales, scale_gradients_
from rmt_deploy.strategies import StrategyError
from rmt_deploy.strategies.classic_rmt import cycle_target, ladder_threshold, removal_factor
from rmt_deploy.strategies.hybrid import drop_allowed


def model20():
    torch.manual_seed(0)
    return CifarResNet(20).eval()


def synthetic(n=128):
    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


def test_seed_schedule_and_removal_factor_by_hand():
    assert cycle_target(1) == pytest.approx(0.0612)
    assert cycle_target(10) == pytest.approx(0.06 * 1.2189944199947573)
    # ((1 − L∞)·share)^(1.5/i): L∞ 0.2, half the spectrum below the edge, first cycle
    assert removal_factor(0.2, 0.5, 1) == pytest.approx(0.4**1.5)
    assert removal_factor(0.2, 0.5, 3) == pytest.approx(0.4**0.5)
    assert removal_factor(1.0, 0.9, 2) == 0.0  # a layer the MP law does not fit: untouched


def test_ladder_threshold_steps_like_the_seed():
    w = torch.tensor([1e-5, 4e-5, 6e-5, 1e-3, 0.0])
    # factor 0.5 → scale max(4·0.5, 3) = 3; p starts at 1e-5 (cycle 1), steps 2e-5:
    # p = 1e-5 → 3e-5 removes one entry; p = 3e-5 → 9e-5 removes three (≥ 2 asked)
    assert ladder_threshold(w, 2, 0.5, 1) == pytest.approx(9e-5)
    # factor 1 → scale 4; cycle 2 starts at p = 2e-5 → 8e-5 already removes three
    assert ladder_threshold(w, 3, 1.0, 2) == pytest.approx(8e-5)
    assert ladder_threshold(w, 0, 1.0, 1) == 0.0


def test_classic_rmt_cycles_reach_the_target_exactly_and_differ_from_magnitude():
    model = model20()
    p = plan(model, "classic_rmt", 0.3, config={"reg_steps": 3})
    assert p.summary()["sparsity"] == pytest.approx(0.3, abs=1e-6)
    cycles = int(p.layers[0].reason.split("classic RMT, ")[1].split(" cycles")[0])
    assert cycles >= 4  # ≈ 6 % of the non-zeros a cycle: several cycles to 30 %
    mag = plan(model, "magnitude", 0.3)
    same = sum(
        int((a.payload["mask"] == b.payload["mask"]).sum())
        for a, b in zip(p.layers, mag.layers, strict=True)
    )
    total = sum(layer.params_before for layer in p.layers)
    assert same / total < 0.995  # per-layer targets from the MP fit, not one global threshold
    # The regularized weights travel in the plan; the zeros stay zeros after compress_.
    compress_(model, p)
    for module in model.modules():
        if isinstance(module, MASKED_TYPES):
            assert torch.all(module.weight[module.weight_mask == 0] == 0)


def test_classic_rmt_settings_out_of_range():
    model = model20()
    with pytest.raises(StrategyError, match=r"cycles must lie in \[1, 1000\]"):
        plan(model, "classic_rmt", 0.3, cycles=0)
    with pytest.raises(StrategyError, match=r"reg_lr must lie in \[0, 1\)"):
        plan(model, "classic_rmt", 0.3, reg_lr=2.0)
    with pytest.raises(StrategyError, match="raise the cycles setting"):
        plan(model, "classic_rmt", 0.6, cycles=2, reg_steps=0)


def test_lasso_scales_and_gradient_scaling_by_hand():
    spectrum = types.SimpleNamespace(
        layers=[
            types.SimpleNamespace(name="a", fit=types.SimpleNamespace(gof=0.01)),
            types.SimpleNamespace(name="b", fit=None),
        ]
    )
    assert lasso_scales(spectrum) == {"a": pytest.approx(1 / 101)}
    assert lasso_scales(spectrum, cycle=4) == {"a": pytest.approx(1 / 26)}  # the seed's /cycle
    model = nn.Sequential(nn.Linear(3, 2))
    model[0].weight.grad = torch.ones(2, 3)
    model[0].bias.grad = torch.ones(2)
    scale_gradients_(model, {"0": 0.25})
    assert torch.all(model[0].weight.grad == 0.25) and torch.all(model[0].bias.grad == 0.25)
    seed = FinetuneConfig.seed_regularizers(max_steps=1)
    assert (seed.group_lasso, seed.l1, seed.l2, seed.scale_gradients) == (1e-6, 5e-7, 2e-7, True)
    with pytest.raises(RmtDeployError, match="l1 must be a finite number ≥ 0, got -1.0"):
        FinetuneConfig(max_steps=1, l1=-1.0)


def test_regularizers_from_the_cli_and_the_config(tmp_path, capsys):
    from rmt_deploy.cli import main
    from rmt_deploy.pipeline import ConfigError, RunConfig

    def compress(*extra):
        argv = ["compress", "cifar_resnet20", "--random-init", "--strategy", "magnitude"]
        return main([*argv, "--out", str(tmp_path), *extra])

    assert compress("--seed-regularizers") == 2
    assert "add --finetune-steps" in capsys.readouterr().err
    assert compress("--l1", "-1") == 2
    assert "--l1 must be a finite number ≥ 0" in capsys.readouterr().err
    config = RunConfig.from_dict({"model": "x", "finetune": {"seed_regularizers": True}})
    assert config.finetune.seed_regularizers is True
    with pytest.raises(ConfigError, match="finetune.group_lasso must be a finite number"):
        RunConfig.from_dict({"model": "x", "finetune": {"group_lasso": -0.1}})


def test_seed_recovery_is_adamw_at_a_restart_learning_rate(tmp_path, monkeypatch, assets):
    """The seed trains with AdamW: under SGD its gradient scaling by s_ℓ ≈ 1e-3 would cut the
    pruned layers' learning rate a thousandfold, and AdamW at SGD's 0.01 wrecks a trained model."""
    from rmt_deploy.cli import main
    from rmt_deploy.pipeline import RunConfig
    from rmt_deploy.pipeline.stages import RunContext, _recipe

    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # no LayerNorm: SGD by default

    def recipe(**finetune):
        raw = {"model": "x", "finetune": {"steps": 1, **finetune}}
        r = _recipe(RunContext(RunConfig.from_dict(raw), tmp_path, tmp_path), cnn)
        return r.optimizer, r.lr, r.group_lasso, r.scale_gradients

    assert recipe() == ("sgd", 0.01, 0.0, False)
    assert recipe(seed_regularizers=True) == ("adamw", 1e-4, 1e-6, True)
    assert recipe(seed_regularizers=True, optimizer="sgd", lr=0.05)[:2] == ("sgd", 0.05)
    seen = []

    def finetune(model, data, cfg, **kw):
        seen.append(cfg)
        return FinetuneResult(cfg.max_steps, 0, 0.0, 0.0, 0.0)

    monkeypatch.setattr("rmt_deploy.recovery.finetune", finetune)
    argv = ["compress", "cifar_resnet20", "--random-init", "--strategy", "magnitude"]
    argv += ["--data", str(assets / "cifar10" / "train"), "--bn-recal-images", "0"]
    for extra, want in [
        ([], ("sgd", 0.01)),
        (["--seed-regularizers"], ("adamw", 1e-4)),
        (["--seed-regularizers", "--lr", "3e-5"], ("adamw", 3e-5)),
    ]:
        out = tmp_path / f"run{len(seen)}"
        assert main([*argv, "--finetune-steps", "1", "--out", str(out), *extra]) == 0
        assert (seen[-1].optimizer, seen[-1].lr) == want


def test_drop_threshold_against_the_sampling_error():
    reference = torch.tensor([1.0, 1.0, 0.0, 0.0])
    trial = torch.tensor([1.0, 0.0, 0.0, 0.0])
    # per image 0, 100, 0, 0 pp: sample std 50, standard error 25 → 2 SE = 50 pp
    assert drop_allowed(reference, trial, 0.7, 2.0) == pytest.approx(50.0)
    same = torch.ones(1000)
    assert drop_allowed(same, same, 0.7, 2.0) == 0.7  # no spread: the successor's floor


def test_hybrid_judges_on_the_callers_validation_images_when_given():
    from rmt_deploy.strategies.base import PlanContext
    from rmt_deploy.strategies.hybrid import held_out_parts

    train = TensorDataset(torch.randn(50, 3), torch.zeros(50, dtype=torch.long))
    val = TensorDataset(torch.randn(7, 3), torch.zeros(7, dtype=torch.long))
    ctx = PlanContext(nn.Linear(3, 2), [], 0.5, {}, data=train, heldout=val)
    assert held_out_parts(ctx, 10) == (train, val)  # all training images train
    ctx.heldout = None
    rest, held = held_out_parts(ctx, 10)
    assert (len(rest), len(held)) == (40, 10)
    assert not set(rest.indices) & set(held.indices)


def test_hybrid_fixed_hands_off_at_020_then_ser():
    model = model20()
    p = plan(
        model,
        "hybrid",
        0.4,
        data=synthetic(),
        variant="fixed",
        cycle_steps=2,
        holdout_images=32,
        reservoir_steps=2,
        batch_size=32,
    )
    assert p.summary()["sparsity"] == pytest.approx(0.4, abs=1e-3)
    assert "magnitude to s = 0.20 (fixed), then SER to s = 0.4" in p.layers[0].reason
    with pytest.raises(StrategyError, match="hybrid variant must be one of threshold, fixed"):
        plan(model, "hybrid", 0.4, data=synthetic(), variant="other")
    with pytest.raises(StrategyError, match="holdout_images .* must be smaller"):
        plan(model, "hybrid", 0.4, data=synthetic(), holdout_images=500)


def test_ser_never_restores_what_an_earlier_cycle_zeroed():
    from rmt_deploy.strategies import PlanContext
    from rmt_deploy.strategies.ser import SER_DEFAULTS, ser_masks

    model = model20()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    weights = {}
    for n in names:  # a third of every layer already zero (an earlier magnitude cycle)
        w = model.get_submodule(n).weight.detach().clone()
        w.view(-1)[::3] = 0.0
        with torch.no_grad():
            model.get_submodule(n).weight.copy_(w)
        weights[n] = w
    cfg = {**SER_DEFAULTS, "reservoir_steps": 2, "batch_size": 32}
    ctx = PlanContext(model, [(n, model.get_submodule(n)) for n in names], 0.5, cfg, synthetic())
    masks = ser_masks(ctx, weights)
    for n in names:
        assert torch.all(masks[n][weights[n] == 0] == 0)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.5 * total, abs=2)


def test_nm24_layers_chosen_in_seb_order():
    """SEB's weight grows with a layer's MP edge, and a pure-noise layer's edge grows with its
    noise: four equal noise layers with σ = 2, 0.5, 4, 1 at half the weights must take 2:4 on
    the σ = 4 and σ = 2 layers (known by construction, not from SEB's own weights); by size,
    the two largest layers."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(4)])
    with torch.no_grad():
        for layer, sigma in zip(model, (2.0, 0.5, 4.0, 1.0), strict=True):
            layer.weight.normal_(0.0, sigma)
    p = plan(model, "nm24", fraction=0.5, order="seb")
    assert {layer.name for layer in p.layers if layer.action == "nm24"} == {"0", "2"}
    assert {layer.name for layer in p.layers if layer.category == "not_chosen"} == {"1", "3"}
    sized = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 128), nn.Linear(128, 16))
    p = plan(sized, "nm24", fraction=0.5, order="size")  # 4096 ≥ half of 2048 + 4096 + 2048
    assert [layer.name for layer in p.layers if layer.action == "nm24"] == ["1"]
    with pytest.raises(StrategyError, match=r"fraction must lie in \(0, 1\]"):
        plan(model, "nm24", fraction=0.0)


def _spectrum(model):
    from rmt_deploy import analyze

    return analyze(model)


def test_planner_ingredients_switch():
    from rmt_deploy.calibration import InputStats, whitened_factors
    from rmt_deploy.layers import layer_view
    from rmt_deploy.planner.layer_table import layer_options

    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    with torch.no_grad():  # rank-12 signal plus a little noise: cheap options exist
        layer.weight.copy_(torch.randn(64, 12) @ torch.randn(12, 64) / 8 + 0.01 * layer.weight)
    x = torch.randn(4000, 64)
    stats = InputStats(64, 1)
    stats.add(x, 0)
    f = whitened_factors(layer.weight, stats, cross_validate=False)
    with_floor = layer_options(layer_view(layer), f, edge_rank=24, rank_multiple=8)
    without = layer_options(layer_view(layer), f, edge_rank=0, rank_multiple=8)
    assert min(o.rank for o in with_floor[1:]) >= 24
    assert min(o.rank for o in without[1:]) < 24
    assert all(o.rank % 8 == 0 for o in without[1:])
    assert math.isclose(without[0].params, 64 * 64)
