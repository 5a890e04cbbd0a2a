"""The `channels` form: coupled groups found by Torch-Pruning, exact removal, spectral floors,
plans that round-trip and export with parity."""

import copy

import pytest
import torch
from torch import nn

from rmt_deploy import compress_
from rmt_deploy.channels import (
    ChannelError,
    ShortcutSelect,
    channel_graph,
    channel_scores,
    keep_top,
    prune_channels_,
    spectral_floors,
    width_options,
)
from rmt_deploy.channels.shortcuts import expose_shortcuts_
from rmt_deploy.models.cifar_resnet import CifarResNet
from rmt_deploy.plan import (
    CompressionPlan,
    PlanError,
    channels_entry,
    dense_entry,
    lowrank_entry,
    mask_entry,
)
from rmt_deploy.planner.channels import block_of


def resnet20(seed: int = 0) -> nn.Module:
    """A CIFAR ResNet-20 with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = CifarResNet(20)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_option_a_shortcut_as_a_selection_conv_is_exact():
    model = resnet20()
    before = model(X)
    assert expose_shortcuts_(model, X[:1]) == ["layer2.0.shortcut", "layer3.0.shortcut"]
    select = model.layer2[0].shortcut
    assert isinstance(select, ShortcutSelect) and not select.weight.requires_grad
    assert select.weight.shape == (32, 16, 1, 1) and select.weight.sum() == 16
    # the padded channels (8 on each side) get nothing, channel i of the input lands at 8 + i
    assert select.weight[8 + 5, 5, 0, 0] == 1 and select.weight[:8].sum() == 0
    torch.testing.assert_close(model(X), before, rtol=0, atol=1e-6)


def test_resnet_groups_couple_each_stage_and_keep_the_head():
    cg = channel_graph(resnet20(), X[:1])
    # 3 residual streams (one per stage) + one group inside each of the 9 blocks
    assert len(cg.groups) == 12
    stage2 = cg.groups["layer2.0.conv2"]
    assert stage2.channels == 32
    assert stage2.producers == [f"layer2.{i}.conv2" for i in range(3)]
    assert sorted(stage2.fixed) == ["layer2.0.shortcut", "layer3.0.shortcut"]
    assert {"layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1"} <= set(stage2.consumers)
    stage1 = cg.groups["conv1"]
    assert stage1.producers == ["conv1"] + [f"layer1.{i}.conv2" for i in range(3)]
    inner = cg.groups["layer3.1.conv1"]
    assert (inner.producers, inner.consumers, inner.channels) == (
        ["layer3.1.conv1"], ["layer3.1.conv2"], 64,
    )  # fmt: skip
    assert [(s.name, s.code) for s in cg.skipped] == [("linear", "output_layer")]
    stage3 = cg.groups["layer3.0.conv2"]
    assert "linear" in stage3.consumers  # the head loses the removed inputs, not its outputs


def _silence(bn: nn.BatchNorm2d, channels: list[int]) -> None:
    bn.weight.data[channels] = 0
    bn.bias.data[channels] = 0


def test_removing_silent_channels_leaves_the_output_unchanged():
    """Channels whose BatchNorm outputs are zero contribute nothing downstream: removing
    exactly them (inner groups and a padded residual channel of stage 2) must not change the
    output — removing any other channel would."""
    model = resnet20()
    inner, padded = [1, 6, 30], [0, 31]  # stage 2's channels 0..7 and 24..31 are padding
    _silence(model.layer3[1].bn1, inner)
    for block in model.layer2:
        _silence(block.bn2, padded)
    before = model(X)
    keep = {
        "layer3.1.conv1": torch.tensor([c for c in range(64) if c not in inner]),
        "layer2.0.conv2": torch.tensor([c for c in range(32) if c not in padded]),
    }
    prune_channels_(model, keep, X[:1])
    assert model.layer3[1].conv1.out_channels == 61 and model.layer3[1].conv2.in_channels == 61
    assert [b.conv2.out_channels for b in model.layer2] == [30, 30, 30]
    assert model.layer3[0].conv1.in_channels == 30
    assert tuple(model.layer3[0].shortcut.weight.shape) == (64, 30, 1, 1)
    torch.testing.assert_close(model(X), before, rtol=0, atol=1e-5)


def test_removing_a_live_channel_changes_the_output():
    model = resnet20()
    before = model(X)
    prune_channels_(model, {"layer3.1.conv1": torch.arange(1, 64)}, X[:1])
    assert (model(X) - before).abs().max() > 1e-3


def test_scores_rank_the_bn_scale_and_keep_top_picks_the_largest():
    model = resnet20()
    model.layer1[0].bn1.weight.data = torch.linspace(0.1, 1.6, 16).flip(0)
    cg = channel_graph(model, X[:1])
    scores = channel_scores(cg, "layer1.0.conv1", "bn")
    assert torch.argsort(scores, descending=True).tolist() == list(range(16))
    assert keep_top(torch.tensor([0.1, 3.0, 2.0, 5.0]), 2).tolist() == [1, 3]
    assert keep_top(torch.tensor([1.0, 1.0, 1.0]), 2).tolist() == [0, 1]  # ties: lower index
    with pytest.raises(ChannelError, match="outside 1..3"):
        keep_top(torch.ones(3), 0)


def test_magnitude_scores_sum_each_layers_normalized_norms():
    model = resnet20()
    cg = channel_graph(model, X[:1])
    block = model.layer1[0]
    rows = block.conv1.weight.flatten(1).norm(dim=1)
    cols = block.conv2.weight.transpose(0, 1).flatten(1).norm(dim=1)
    gamma = block.bn1.weight.abs()
    expected = sum(v.double() / v.double().mean() for v in (rows, cols, gamma))
    torch.testing.assert_close(channel_scores(cg, "layer1.0.conv1"), expected.detach())


def test_width_options_start_at_the_floor_in_blocks_of_eight():
    assert width_options(64, 21, 8) == [24, 32, 40, 48, 56]
    assert width_options(64, 0, 8) == [8, 16, 24, 32, 40, 48, 56]
    assert width_options(16, 12, 8) == []  # the floor leaves no narrower block
    assert width_options(32, 8, 8) == [8, 16, 24]


def test_a_groups_floor_is_its_largest_producer_spike_count():
    cg = channel_graph(resnet20(), X[:1])
    spikes = {"layer2.0.conv2": 7, "layer2.1.conv2": 19, "layer2.2.conv2": None}
    floors = spectral_floors(cg, spikes)
    assert (floors["layer2.0.conv2"].floor, floors["layer2.0.conv2"].source) == (
        19, "layer2.1.conv2",
    )  # fmt: skip
    assert (floors["layer1.0.conv1"].floor, floors["layer1.0.conv1"].source) == (0, "none")


def test_the_block_timed_for_a_group_holds_all_its_layers():
    assert block_of(["layer1.0.conv1", "layer1.0.conv2"]) == "layer1.0"
    assert block_of(["layer2.0.conv2", "layer2.1.conv2", "layer3.0.conv1"]) == ""
    assert block_of(["features.3.conv", "features.3.bn"]) == "features.3"
    # a ModuleList is iterated, never called: time its caller (here the model)
    from rmt_deploy.planner.channels import called_block

    holder = nn.Module()
    holder.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(3, 3, 1)) for _ in range(2)])
    assert block_of(["blocks.0.0", "blocks.1.0"]) == "blocks"
    assert called_block(holder, "blocks") == "" and called_block(holder, "blocks.1") == "blocks.1"


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = self.conv(x)
        y = torch.from_numpy(y.numpy())  # leaves autograd: nothing to trace through
        return self.head(y.mean((2, 3)))


def test_a_model_torch_pruning_cannot_trace_is_one_clear_error():
    with pytest.raises(ChannelError, match="cannot trace Untraceable.*lowrank form instead"):
        channel_graph(Untraceable().eval(), X[:1])


def _plan(model: nn.Module, widths: dict[str, int], floor: int = 0) -> CompressionPlan:
    cg = channel_graph(copy.deepcopy(model), X[:1])
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        if name in widths:
            keep = keep_top(channel_scores(cg, name), widths[name])
            stats = {"floor": float(floor)}
            layers.append(channels_entry(name, module, widths[name], "test", stats, keep))
        else:
            layers.append(dense_entry(name, module, "kept"))
    return CompressionPlan("channels", {"input_size": [3, 32, 32]}, layers)


def test_a_channels_plan_round_trips_and_loads_as_a_checkpoint(tmp_path):
    model = resnet20()
    widths = {"layer2.0.conv2": 24, "layer3.2.conv1": 40, "layer1.1.conv1": 8}
    plan = _plan(model, widths)
    plan.save(tmp_path / "plan.json")
    plan.save_payloads(tmp_path / "plan.safetensors")
    loaded = CompressionPlan.load(tmp_path / "plan.json").load_payloads(
        tmp_path / "plan.safetensors"
    )
    assert loaded.layer("layer3.2.conv1").width == 40
    assert "3 narrowed" in loaded.coverage_line()
    pruned = compress_(copy.deepcopy(model), loaded)
    direct = copy.deepcopy(model)
    prune_channels_(direct, {n: plan.layer(n).payload["keep"] for n in widths}, X[:1])
    torch.testing.assert_close(pruned(X), direct(X), rtol=0, atol=0)
    assert pruned.layer3[2].conv1.out_channels == 40 and pruned.layer2[1].conv2.out_channels == 24
    # a compressed checkpoint: the structure from the plan, the weights from the state dict
    shell = compress_(resnet20(seed=5), loaded, structure_only=True)
    shell.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(shell.eval()(X), pruned(X), rtol=0, atol=0)


def test_a_width_below_the_floor_and_mixed_forms_are_refused():
    model = resnet20()
    with pytest.raises(PlanError, match="width 8 is below its spectral floor 12.*floor: none"):
        compress_(copy.deepcopy(model), _plan(model, {"layer3.2.conv1": 8}, floor=12))
    plan = _plan(model, {"layer3.2.conv1": 32})
    conv = model.layer3[1].conv1
    plan.layers = [
        mask_entry("layer3.1.conv1", conv, torch.ones_like(conv.weight), "t")
        if la.name == "layer3.1.conv1"
        else la
        for la in plan.layers
    ]
    with pytest.raises(PlanError, match="cannot also use mask"):
        compress_(copy.deepcopy(model), plan)


def test_a_pruned_resnet_exports_with_parity(tmp_path):
    from rmt_deploy.exporters import export

    model = compress_(resnet20(), _plan(resnet20(), {"layer2.0.conv2": 16, "layer3.0.conv1": 24}))
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32), torch.zeros(16).long())
    artifact = export(model, tmp_path, (3, 32, 32), verify_data=data, name="channels")
    assert artifact.parity.passed and artifact.parity.max_abs_diff < 1e-4


def _planted(model: nn.Module, name: str, rank: int, seed: int = 0) -> None:
    """Give layer `name` `rank` strong output directions over a noise bulk."""
    g = torch.Generator().manual_seed(seed)
    weight = model.get_submodule(name).weight
    m, n = weight.shape[0], weight[0].numel()
    signal = torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g)
    noise = torch.randn(m, n, generator=g) / n**0.5
    weight.data = (signal * 0.5 / n**0.5 + noise).reshape(weight.shape)


def test_a_planted_signal_raises_its_groups_floor_and_no_option_goes_below():
    from rmt_deploy.analysis import analyze
    from rmt_deploy.planner.channels import ChannelSearchConfig, group_options

    model = resnet20()
    _planted(model, "layer3.1.conv1", 40)
    spikes = {layer.name: layer.edge_rank for layer in analyze(model).layers}
    assert spikes["layer3.1.conv1"] >= 17  # the planted directions stand out of the bulk
    cg = channel_graph(copy.deepcopy(model), X[:1])
    options = group_options(cg, spikes, ChannelSearchConfig())
    floor, widths = options["layer3.1.conv1"]
    assert (floor.floor, floor.source) == (spikes["layer3.1.conv1"], "layer3.1.conv1")
    assert widths == list(range(-(-floor.floor // 8) * 8, 64, 8))
    # without the floor every block of 8 is open
    free = group_options(cg, spikes, ChannelSearchConfig(floor="none"))["layer3.1.conv1"][1]
    assert free == [8, 16, 24, 32, 40, 48, 56]


@pytest.mark.slow
def test_the_channels_strategy_keeps_every_width_at_or_above_its_spectral_floor():
    from rmt_deploy.strategies import StrategyError, Target, plan

    model = resnet20()
    _planted(model, "layer3.1.conv1", 40)
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 32, 32), torch.zeros(64).long())
    target = Target(["onnxruntime"], "cpu", 8)
    settings = {"speedup": 3.0, "rounds": 1, "runs": 3, "calib_images": 32}  # as far as it goes
    made = plan(copy.deepcopy(model), "channels", data=data, target=target, **settings)
    narrowed = [la for la in made.layers if la.action == "channels"]
    assert narrowed, "a ×3 target narrows groups"
    assert made.config["deployment"] == "onnxruntime" and made.config["input_size"] == [3, 32, 32]
    for layer in narrowed:
        assert layer.width % 8 == 0 and layer.width >= layer.stats["floor"]
    pruned = compress_(copy.deepcopy(model), made)
    assert pruned(X).shape == (4, 10)
    with pytest.raises(
        StrategyError, match="importance must be one of magnitude, bn, got 'taylor'"
    ):
        plan(copy.deepcopy(model), "channels", data=data, target=target, importance="taylor")
    with pytest.raises(StrategyError, match="speedup must be above 1"):
        plan(copy.deepcopy(model), "channels", data=data, target=target, speedup=1.0)
    with pytest.raises(StrategyError, match="damage must be one of importance, output"):
        plan(copy.deepcopy(model), "channels", data=data, target=target, damage="loss")


def _top1(model: nn.Module, data) -> float:
    with torch.no_grad():
        x = torch.stack([data[i][0] for i in range(len(data))])
        y = torch.tensor([int(data[i][1]) for i in range(len(data))])
        return 100.0 * float((model.eval()(x).argmax(1) == y).float().mean())


def test_recovery_records_validation_top1_before_and_after():
    from rmt_deploy.verbs import RecoveryOptions
    from rmt_deploy.verbs.compress import compress_and_recover

    dense = resnet20()
    plan = _plan(dense, {"layer3.0.conv2": 32, "layer2.1.conv1": 16})
    g = torch.Generator().manual_seed(3)
    train = torch.utils.data.TensorDataset(torch.randn(32, 3, 32, 32, generator=g),
                                           torch.randint(0, 10, (32,), generator=g))  # fmt: skip
    images = torch.randn(40, 3, 32, 32, generator=g)
    with torch.no_grad():
        val = torch.utils.data.TensorDataset(images, dense(images).argmax(1))  # dense: 100 %
    options = RecoveryOptions(steps=3, batch_size=8, distill_alpha=0.5)
    model, info = compress_and_recover(dense, plan, options, train=train, check=val)
    assert info["steps"] == 3 and info["check"]["metric"] == "top1"
    assert info["check"]["images"] == 40
    assert info["check"]["before"] == _top1(compress_(copy.deepcopy(dense), plan), val)
    assert info["check"]["after"] == _top1(model, val)


def test_unlabelled_recovery_learns_from_the_dense_model_alone():
    """Images without labels (−1) recover by distillation only: the first loss is the KL to
    the teacher (T² scaled, batch mean), computed here by hand on the same batch; without a
    teacher they are refused in one line."""
    import torch.nn.functional as F

    from rmt_deploy.errors import DataError
    from rmt_deploy.recovery import FinetuneConfig, finetune

    dense = resnet20()
    student = compress_(copy.deepcopy(dense), _plan(dense, {"layer3.1.conv1": 32}))
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    data = torch.utils.data.TensorDataset(images, torch.full((8,), -1))
    t = 4.0
    with torch.no_grad():
        log_p = F.log_softmax(copy.deepcopy(student).train()(images) / t, 1)
        log_q = F.log_softmax(dense(images) / t, 1)
    expected = float((log_q.exp() * (log_q - log_p)).sum(1).mean() * t * t)
    recipe = FinetuneConfig(max_steps=1, batch_size=8, distill_alpha=0.5, temperature=t)
    result = finetune(student, data, recipe, teacher=dense, progress=False)
    assert result.first_loss == pytest.approx(expected, rel=1e-4)
    with pytest.raises(DataError, match="without labels need distillation"):
        finetune(copy.deepcopy(dense), data, FinetuneConfig(max_steps=1, batch_size=8),
                 progress=False)  # fmt: skip


def test_wide_groups_time_at_most_max_options_widths_spread_from_the_floor():
    from rmt_deploy.planner.channels import spaced

    widths = width_options(1152, 100, 8)  # an EfficientNet expansion: 131 candidate widths
    picked = spaced(widths, 8)
    assert len(picked) == 8 and picked[0] == 104 and picked[-1] == 1144
    assert picked == sorted(picked) and set(picked) <= set(widths)
    assert spaced([8, 16], 8) == [8, 16] and spaced(widths, 1) == [104]


def test_the_compressed_model_distils_from_the_teacher_it_is_given():
    """The pipeline recovers the dense model first and hands it over as the teacher: the first
    recovery loss (pure distillation here) is the KL to that teacher, not to `dense`."""
    import torch.nn.functional as F

    from rmt_deploy.verbs import RecoveryOptions
    from rmt_deploy.verbs.compress import compress_and_recover

    dense, adapted = resnet20(), resnet20(seed=9)
    plan = _plan(dense, {"layer3.1.conv1": 32})
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    train = torch.utils.data.TensorDataset(images, torch.zeros(8).long())
    student = compress_(copy.deepcopy(dense), plan).train()
    with torch.no_grad():
        log_p = F.log_softmax(student(images) / 4.0, 1)
        kl = {
            name: float((q.exp() * (q - log_p)).sum(1).mean() * 16)
            for name, q in (("dense", F.log_softmax(dense(images) / 4, 1)),
                            ("adapted", F.log_softmax(adapted(images) / 4, 1)))
        }  # fmt: skip
    options = RecoveryOptions(steps=1, batch_size=8, distill_alpha=1.0)
    _, info = compress_and_recover(dense, plan, options, train=train, teacher=adapted)
    assert info["first_loss"] == pytest.approx(kl["adapted"], rel=1e-4)
    assert abs(kl["adapted"] - kl["dense"]) > 0.01 * kl["adapted"]


def test_narrowed_models_always_get_their_batchnorm_statistics_re_estimated():
    """Narrowing a group changes what its consumers' BatchNorms see: their running statistics
    are re-estimated on the calibration images even where bn_recal_images is 0 (EfficientNet's
    setting, which keeps a dense model's statistics)."""
    from rmt_deploy.verbs import RecoveryOptions
    from rmt_deploy.verbs.compress import compress_and_recover

    dense = resnet20()
    calib = torch.utils.data.TensorDataset(torch.randn(48, 3, 32, 32), torch.zeros(48).long())
    options = RecoveryOptions(steps=1, batch_size=16, bn_recal_images=0)
    narrowed = _plan(dense, {"layer2.1.conv1": 16})
    _, info = compress_and_recover(dense, narrowed, options, calib=calib, train=calib)
    assert info["bn_recal_images"] == 48
    kept = _plan(dense, {})
    kept.layers[5] = lowrank_entry(
        kept.layers[5].name, dict(dense.named_modules())[kept.layers[5].name], 8, "t"
    )
    _, info = compress_and_recover(dense, kept, options, calib=calib, train=calib)
    assert "bn_recal_images" not in info


def _entry(name: str, channels: int, options: list[tuple[int, float, float]], dense_ms: float):
    from rmt_deploy.planner.layer_table import LayerEntry, LayerOption

    opts = [LayerOption("dense", ms=dense_ms)]
    opts += [LayerOption("channels", w, error, ms=ms) for w, error, ms in options]
    return LayerEntry(name, "channels", [8], [channels, 0], 0, opts, sensitivity=1.0)


def test_importance_damage_is_the_share_of_all_channel_scores_a_width_drops():
    from rmt_deploy.planner.channels import importance_damage

    scores = {"a": torch.tensor([1.0, 4.0, 2.0, 3.0]), "b": torch.tensor([1.0, 1.0])}
    entries = [_entry("a", 4, [(1, 9.0, 0.5), (2, 9.0, 0.7)], 1.0), _entry("b", 2, [], 1.0)]
    shares = importance_damage(entries, scores)
    # a keeps its top 1 (score 4): drops 1 + 2 + 3 = 6 of the 12 in all; top 2 drops 1 + 2 = 3
    assert [o.error for o in shares[0].options] == [0.0, 0.5, 0.25]
    assert [o.ms for o in shares[0].options] == [1.0, 0.5, 0.7]  # timings kept
    assert entries[0].options[1].error == 9.0  # the measured table is not modified


def test_the_dp_cuts_the_group_whose_dropped_channels_matter_least():
    from rmt_deploy.planner.channels import choose_dp, importance_damage

    # the same latency saving in both groups; a's four lowest channels are nearly silent
    scores = {"a": torch.tensor([5.0] * 4 + [0.1] * 4), "b": torch.ones(8) * 2.5}
    entries = [_entry(n, 8, [(4, 0.0, 0.6)], 1.0) for n in ("a", "b")]
    entries = importance_damage(entries, scores)
    (best,) = choose_dp(entries, dense_ms=2.0, speedup=1.2)
    assert best.choices["a"].rank == 4 and best.choices["b"].form == "dense"
    assert best.damage == pytest.approx(0.4 / 40.4)
    (both,) = choose_dp(entries, dense_ms=2.0, speedup=1.6)  # needs 0.75 ms: both cut
    assert both.choices["a"].rank == 4 and both.choices["b"].rank == 4


class _HeadsBlock(nn.Module):
    """Attention whose qkv output is reshaped by heads, then an MLP and a head."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2, self.head = nn.Linear(dim, 32), nn.Linear(32, dim), nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean(1))


def test_a_group_whose_narrowing_breaks_the_forward_is_skipped_with_the_error():
    model = _HeadsBlock().eval()
    cg = channel_graph(model, torch.randn(1, 5, 16))
    assert "fc1" in cg.groups and "qkv" not in cg.groups
    skipped = {s.name: s for s in cg.skipped}
    assert (
        skipped["qkv"].code == "breaks_forward" and "is invalid for input" in skipped["qkv"].reason
    )
    assert skipped["head"].code == "output_layer"
    # the MLP's hidden channels still narrow, and the model still runs
    prune_channels_(model, {"fc1": torch.arange(16)}, torch.randn(1, 5, 16), cg)
    assert model(torch.randn(2, 5, 16)).shape == (2, 4) and model.fc1.out_features == 16
