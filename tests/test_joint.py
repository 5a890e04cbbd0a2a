"""Channels and low rank in one table: one damage scale, no layer both narrowed and
factorized, and plans mixing the two forms compressed exactly."""

import copy

import pytest
import torch

from rmt_deploy import compress_
from rmt_deploy.layers import layer_view, lowrank_from_view
from rmt_deploy.plan import CompressionPlan, PlanError, lowrank_entry
from rmt_deploy.planner.channels import choose_dp
from rmt_deploy.planner.joint import (
    LOWRANK,
    exclusive,
    on_output_scale,
    output_scale,
    table_summary,
)
from rmt_deploy.planner.layer_table import LayerEntry, LayerOption
from tests.test_channels import X, _plan, resnet20


def _unit(name: str, form: str, dense_ms: float, ms: float, error: float) -> LayerEntry:
    options = [LayerOption("dense", ms=dense_ms), LayerOption(form, 8, error, ms=ms)]
    return LayerEntry(name, form, [8], [16, 16], 0, options, sensitivity=1.0)


def _pick(dense_ms: float, speedup: float):
    return lambda table: choose_dp(table, dense_ms, speedup, count=3)


MEMBERS = {"g": {"g", "a", "b"}}  # group g spans layers g (its producer), a and b; c is free
GOAL = 10.0 / 7.5  # dense 10 ms: the speedup that needs 2.5 ms saved


def test_a_layer_in_a_narrowed_group_is_not_also_factorized_the_smaller_saving_gives_way():
    # g + a is the least damaging way to save 2.5 ms (damage 0.13), but a is in g: a saves
    # less (1 ms against 2), loses its low rank, and g + c (0.15) is what is left
    entries = [
        _unit("g", "channels", 3.0, 1.0, 0.10),
        _unit(LOWRANK + "a", "lowrank", 2.0, 1.0, 0.03),
        _unit(LOWRANK + "c", "lowrank", 1.0, 0.5, 0.05),
    ]
    assert choose_dp(entries, 10.0, GOAL)[0].choices[LOWRANK + "a"].form == "lowrank"
    best = exclusive(_pick(10.0, GOAL), entries, MEMBERS)[0]
    forms = {n: o.form for n, o in best.choices.items()}
    assert forms == {"g": "channels", LOWRANK + "a": "dense", LOWRANK + "c": "lowrank"}
    assert best.damage == pytest.approx(0.15) and best.saving_ms == pytest.approx(2.5)


def test_when_the_factorized_layer_saves_more_its_group_stays_whole():
    entries = [
        _unit("g", "channels", 2.0, 1.0, 0.01),  # saves 1 ms
        _unit(LOWRANK + "a", "lowrank", 3.0, 1.0, 0.03),  # saves 2 ms, inside g
        _unit(LOWRANK + "c", "lowrank", 1.0, 0.5, 0.05),
    ]
    best = exclusive(_pick(10.0, GOAL), entries, MEMBERS)[0]
    forms = {n: o.form for n, o in best.choices.items()}
    assert forms == {"g": "dense", LOWRANK + "a": "lowrank", LOWRANK + "c": "lowrank"}
    assert best.damage == pytest.approx(0.08)


def test_the_table_summary_counts_each_forms_entries_faster_options_and_most_saving():
    entries = [
        _unit("g", "channels", 3.0, 1.0, 0.1),  # saves 2
        _unit("h", "channels", 1.0, 1.5, 0.1),  # slower than dense
        _unit(LOWRANK + "a", "lowrank", 2.0, 1.75, 0.1),  # saves 0.25
    ]
    assert table_summary(entries) == {
        "channels": {"entries": 2, "faster": 1, "most_saving_ms": 2.0},
        "lowrank": {"entries": 1, "faster": 1, "most_saving_ms": 0.25},
    }


def test_widths_go_on_the_output_error_scale_by_the_median_ratio():
    def entry(name, errors):
        options = [LayerOption("dense", ms=1.0)]
        options += [LayerOption("channels", 8 * (i + 1), e, ms=0.5) for i, e in enumerate(errors)]
        return LayerEntry(name, "channels", [8], [32, 0], 0, options, sensitivity=1.0)

    output = [entry("a", [0.2, 0.4]), entry("b", [0.3, float("nan")])]
    share = [entry("a", [0.1, 0.1]), entry("b", [0.3, 0.2])]
    # ratios 2, 4, 1 (the unmeasured NaN width left out): median 2
    assert output_scale(output, share) == pytest.approx(2.0)
    scaled = on_output_scale(share, 2.0)
    (best,) = choose_dp(scaled, dense_ms=2.0, speedup=1.2)  # one width of 0.5 ms is enough
    assert best.damage == pytest.approx(2.0 * 0.1)
    assert share[0].sensitivity == 1.0  # the entries given are left as they were


def test_a_plan_narrowing_a_group_and_factorizing_a_layer_outside_it_is_exact(tmp_path):
    model = resnet20()
    plan = _plan(model, {"layer3.2.conv1": 40})
    conv = model.layer1[1].conv1  # its groups (layer1.1's inner one, stage 1) stay whole
    plan.layers = [
        lowrank_entry(la.name, conv, 8, "t") if la.name == "layer1.1.conv1" else la
        for la in plan.layers
    ]
    mixed = compress_(copy.deepcopy(model), plan)
    direct = compress_(copy.deepcopy(model), _plan(model, {"layer3.2.conv1": 40}))
    weight = conv.weight.detach().reshape(conv.out_channels, -1).double()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    left, right = (u[:, :8] * s[:8]).float(), vh[:8].float()
    direct.layer1[1].conv1 = lowrank_from_view(layer_view(direct.layer1[1].conv1), left, right)
    torch.testing.assert_close(mixed(X), direct(X), rtol=1e-5, atol=1e-5)
    assert mixed.layer3[2].conv1.out_channels == 40
    plan.save(tmp_path / "plan.json")
    plan.save_payloads(tmp_path / "plan.safetensors")
    loaded = CompressionPlan.load(tmp_path / "plan.json").load_payloads(
        tmp_path / "plan.safetensors"
    )
    shell = compress_(resnet20(seed=3), loaded, structure_only=True)
    shell.load_state_dict(mixed.state_dict())
    torch.testing.assert_close(shell.eval()(X), mixed(X), rtol=0, atol=0)


def test_a_factorized_layer_inside_a_narrowed_group_is_refused():
    model = resnet20()
    plan = _plan(model, {"layer3.2.conv1": 40})
    conv = model.layer3[2].conv2  # consumes the narrowed group's channels
    plan.layers = [
        lowrank_entry(la.name, conv, 8, "t") if la.name == "layer3.2.conv2" else la
        for la in plan.layers
    ]
    with pytest.raises(
        PlanError,
        match="layer 'layer3.2.conv2' is factorized inside the narrowed channel group "
        "'layer3.2.conv1'",
    ):
        compress_(copy.deepcopy(model), plan)


@pytest.mark.slow
def test_the_channels_strategy_with_lowrank_never_narrows_and_factorizes_one_layer():
    from rmt_deploy.channels import channel_graph
    from rmt_deploy.strategies import StrategyError, Target, plan

    model = resnet20()
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 32, 32), torch.zeros(64).long())
    target = Target(["onnxruntime"], "cpu", 8)
    settings = {"speedup": 3.0, "rounds": 1, "runs": 3, "calib_images": 32, "lowrank": True}
    made = plan(copy.deepcopy(model), "channels", data=data, target=target, **settings)
    table = made.config["table"]
    assert table["lowrank"]["entries"] > 0 and table["channels"]["entries"] == 12
    groups = channel_graph(copy.deepcopy(model), X[:1]).groups
    for finalist in made.config["finalists_probed"]:
        spanned = {n for g in finalist["widths"] for n in groups[g].layers}
        assert not spanned & set(finalist["ranks"]), finalist
        assert all(rank % 8 == 0 for rank in finalist["ranks"].values())
    assert compress_(copy.deepcopy(model), made)(X).shape == (4, 10)
    head = made.layer("linear")  # in no channel group: kept, the reason the graph gave
    assert (head.action, head.category) == ("dense", "output_layer")
    assert head.reason == "kept: its outputs are the model's outputs"
    with pytest.raises(StrategyError, match="setting lowrank must be a bool, got 'yes'"):
        plan(copy.deepcopy(model), "channels", data=data, target=target, lowrank="yes")
    with pytest.raises(StrategyError, match="lowrank options need allocation: dp"):
        plan(model, "channels", data=data, target=target, lowrank=True, allocation="uniform")
