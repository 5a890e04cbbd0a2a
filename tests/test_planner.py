"""The latency planner's parts: the DP against brute force, sensitivities, deterministic replans
on a saved table, latency targets, INT8 quantization and the OpenVINO backend."""

import copy
import importlib.util
import itertools
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rmt_deploy.calibration import InputStats, whitened_factors
from rmt_deploy.layers import layer_view
from rmt_deploy.planner import (
    BudgetNotMetError,
    LayerEntry,
    LayerOption,
    allocate,
    latency_plan,
    refine_sensitivity,
)


def _entry(name, dense_ms, options, sensitivity):
    return LayerEntry(
        name,
        "linear",
        [8, 16],
        [16, 16],
        0,
        [LayerOption("dense", ms=dense_ms)]
        + [LayerOption("lowrank", rank=r, error=e, ms=ms) for r, e, ms in options],
        sensitivity=sensitivity,
    )


def test_allocation_is_the_knapsack_optimum():
    rng = np.random.default_rng(0)
    entries = []
    for i in range(4):
        options = [
            (8 * (k + 1), float(rng.uniform(0.01, 0.2)), float(rng.uniform(0.2, 0.9)))
            for k in range(3)
        ]
        entries.append(_entry(f"l{i}", 1.0, options, float(rng.uniform(0.5, 5))))
    caps = [0.05, 0.2, 0.5, 1.0]
    allocations = allocate(entries, caps)
    assert [a.damage for a in allocations] == sorted(a.damage for a in allocations)
    for cap in caps:
        best = 0.0  # brute force over every combination of options
        for combo in itertools.product(*[e.options for e in entries]):
            damage = sum(e.sensitivity * o.error for e, o in zip(entries, combo, strict=True))
            saving = sum(1.0 - o.ms for o in combo)
            if damage <= cap * (1 - 1e-3):
                best = max(best, saving)
        within = [a for a in allocations if a.damage <= cap]
        assert max(a.saving_ms for a in within) >= best - 1e-9


def test_options_slower_than_dense_are_never_chosen():
    entry = _entry("slow", 1.0, [(8, 0.01, 1.5), (16, 0.001, 1.2)], 1.0)
    (allocation,) = allocate([entry], [10.0])
    assert allocation.choices["slow"].form == "dense" and allocation.saving_ms == 0


def test_sensitivity_sees_what_the_network_amplifies():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 32)

        def forward(self, x):  # a's error reaches the output unchanged; b's is scaled down
            return self.a(x) + 0.1 * self.b(x)

    model = Net().eval()
    x = torch.randn(256, 32)
    views = {n: layer_view(getattr(model, n)) for n in "ab"}
    factors = {}
    for n, v in views.items():
        stats = InputStats(32, 1)
        stats.add(x, 0)
        factors[n] = whitened_factors(v.weight, stats, cross_validate=False, shrink=False)
    entries = [_entry(n, 1.0, [(8, float(factors[n].predicted[8]), 0.5)], None) for n in "ab"]
    refine_sensitivity(model, entries, views, factors, x)
    sa, sb = entries[0].sensitivity, entries[1].sensitivity
    assert sa > 20 * sb  # 0.1² of the energy, and a dominates the output norm


def _toy():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(48, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 4),
    ).eval()
    with torch.no_grad():  # a middle layer of rank 16 plus a little noise: low rank must win
        a, b = torch.randn(512, 16), torch.randn(16, 512)
        model[3].weight.copy_(a @ b / 30 + 0.001 * torch.randn(512, 512))
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(256, 3, 4, 4, generator=g), torch.randint(0, 4, (256,)))
    return model, data


QUICK = dict(batch=64, calib_images=256, rounds=2, runs=4, progress=False, finalists=1)


def test_replanning_on_the_saved_table_chooses_the_same_plan(tmp_path, monkeypatch):
    model, data = _toy()
    table = tmp_path / "tables.json"
    first, report = latency_plan(
        copy.deepcopy(model),
        data,
        heldout=data,
        targets=["onnxruntime"],
        accuracy_budget=5.0,
        budget_metric="agreement",
        table=table,
        **QUICK,
    )
    assert table.is_file() and report.finalists

    def no_timing(*args, **kwargs):
        raise AssertionError("a saved table must not be timed again")

    monkeypatch.setattr("rmt_deploy.planner.layer_table.measure_options", no_timing)
    monkeypatch.setattr("rmt_deploy.planner.timing.time_interleaved", no_timing)
    again, report2 = latency_plan(
        copy.deepcopy(model),
        data,
        heldout=data,
        targets=["onnxruntime"],
        accuracy_budget=5.0,
        budget_metric="agreement",
        table=table,
        **QUICK,
    )
    assert again.to_dict() == first.to_dict()
    assert report2.chosen == report.chosen
    assert [e.measured_ms for e in report2.finalists] == [e.measured_ms for e in report.finalists]


def test_an_unreachable_latency_target_says_so_and_ships_the_fastest(tmp_path):
    model, data = _toy()
    plan, report = latency_plan(
        model,
        data,
        heldout=data,
        targets=["onnxruntime"],
        accuracy_budget=5.0,
        budget_metric="agreement",
        latency_target=1000.0,
        **QUICK,
    )
    assert any("no plan reaches the latency target ×1000" in n for n in report.notes)
    chosen = report.engine(report.chosen)
    pool = [e for e in [*report.baselines, *report.finalists] if e.within_budget]
    assert chosen.measured_ms <= min(e.measured_ms for e in pool) * 1.03 + 1e-9


def test_paired_speedup_is_the_median_of_per_sweep_ratios():
    from rmt_deploy.errors import RmtDeployError
    from rmt_deploy.planner.timing import paired_speedup

    # The machine slows down threefold halfway: per-sweep pairs cancel it (every ratio is 2),
    # where the ratio of the two medians would not (median 20 / median 7.5 = 2.67).
    reference = [10.0, 10.0, 10.0, 30.0, 30.0, 30.0]
    candidate = [5.0, 5.0, 5.0, 15.0, 15.0, 15.0]
    est = paired_speedup(reference, candidate)
    assert (est.median, est.low, est.high, est.pairs) == (2.0, 2.0, 2.0, 6)
    # Ratios 2, 2, 1, 1: median 1.5, the bounds inside [1, 2] and around it; seeded.
    est = paired_speedup([10.0] * 4, [5.0, 5.0, 10.0, 10.0])
    assert est.median == 1.5 and 1.0 <= est.low < 1.5 < est.high <= 2.0
    assert paired_speedup([10.0] * 4, [5.0, 5.0, 10.0, 10.0]) == est
    with pytest.raises(RmtDeployError, match="equally many samples, got 2 and 1"):
        paired_speedup([1.0, 2.0], [1.0])


DENSE_MS = 10.0  # the fake clock's whole dense model


def _fake_clocks(monkeypatch, *, probe_ms, planned_ms, head_to_head_ms, layer_ms=0.5):
    """Deterministic timings: every layer 1 ms dense and `layer_ms` in any low-rank form; the
    whole dense model DENSE_MS, the probe `probe_ms`, a plan `planned_ms` among all engines
    and `head_to_head_ms` timed alone with the best dense engine. Returns the calls seen."""
    calls = []

    def layers(entries, *args, **kwargs):
        for entry in entries:
            for option in entry.options:
                ms = 1.0 if option.form == "dense" else layer_ms
                option.ms = option.q1_ms = option.q3_ms = ms

    timed = set()

    def whole(runners, inputs, rounds=5, runs=10, cuda=False):
        calls.append(sorted(runners))

        def ms(key):
            if key == "dense" or key.startswith("dense /"):
                return DENSE_MS
            if key == "probe":
                return probe_ms
            again = key in timed  # a plan's second timing: alone with the best dense engine
            timed.add(key)
            return head_to_head_ms if again else planned_ms

        return {key: [ms(key)] * (rounds * runs) for key in runners}

    monkeypatch.setattr("rmt_deploy.planner.layer_table.measure_options", layers)
    monkeypatch.setattr("rmt_deploy.planner.timing.time_interleaved", whole)
    return calls


def _plan_toy(tmp_path, **kwargs):
    tmp_path.mkdir(parents=True, exist_ok=True)
    model, data = _toy()
    return latency_plan(
        model,
        data,
        heldout=data,
        targets=["onnxruntime"],
        accuracy_budget=100.0,
        budget_metric="agreement",
        table=tmp_path / "tables.json",
        **(QUICK | kwargs),
    )


def test_predictions_are_scaled_by_the_whole_model_probe(tmp_path, monkeypatch):
    # The probe measures a 2 % saving (10 → 9.8 ms) wherever the table promises more.
    _fake_clocks(monkeypatch, probe_ms=9.8, planned_ms=9.0, head_to_head_ms=9.0)
    _, report = _plan_toy(tmp_path)
    tables = json.loads((tmp_path / "tables.json").read_text())["tables"]["onnxruntime"]
    factorizable = sum(len(e["options"]) > 1 for e in tables["layers"])
    assert factorizable >= 1
    promised = 0.5 * factorizable  # the probe factorizes every such layer, 0.5 ms saved each
    kappa = 0.2 / promised  # 0.2 ms measured of `promised` predicted
    calibration = report.calibrations["onnxruntime"]
    assert calibration["probe_layers"] == factorizable
    assert calibration["kappa"] == pytest.approx(kappa)
    assert calibration["measured_share"] == pytest.approx(0.02)
    assert report.candidates
    for cand in report.candidates:
        assert cand.table_ms == pytest.approx(DENSE_MS - 0.5 * cand.lowrank_layers)
        assert cand.predicted_ms == pytest.approx(DENSE_MS - kappa * 0.5 * cand.lowrank_layers)
        assert cand.predicted_speedup == pytest.approx(DENSE_MS / cand.predicted_ms)


def test_a_plan_ships_only_when_it_wins_head_to_head(tmp_path, monkeypatch):
    # ×1.11 among all engines, ×1.11 alone with the best dense one: the plan ships.
    calls = _fake_clocks(monkeypatch, probe_ms=9.0, planned_ms=9.0, head_to_head_ms=9.0)
    plan, report = _plan_toy(tmp_path / "a")
    chosen = report.engine(report.chosen)
    assert chosen.candidate is not None and plan.compressed
    assert chosen.confirmed["against"] == "dense / onnxruntime"
    assert chosen.confirmed["median"] == pytest.approx(DENSE_MS / 9.0)
    assert chosen.confirmed["low"] == pytest.approx(DENSE_MS / 9.0)
    assert chosen.confirmed["pairs"] == 2 * QUICK["rounds"] * QUICK["runs"]  # twice as long
    assert ["dense / onnxruntime", chosen.label] in calls
    # ×1.11 among all engines but ×1.00 alone: not surely faster, the dense model ships.
    _fake_clocks(monkeypatch, probe_ms=9.0, planned_ms=9.0, head_to_head_ms=DENSE_MS)
    with pytest.raises(BudgetNotMetError, match=r"timed head to head: plan \d+ .*×1\.000") as e:
        _plan_toy(tmp_path / "b")
    report = e.value.report
    assert report.chosen == "dense / onnxruntime" and not e.value.fallback.compressed
    reasons = e.value.fallback.summary()["dense_by_reason"]  # not "budget": it was within it
    assert set(reasons) <= {"not_faster", "grouped_conv"} and reasons["not_faster"] >= 1
    tried = [f for f in report.finalists if f.confirmed]
    assert tried and all(f.confirmed["median"] == pytest.approx(1.0) for f in tried)


@pytest.mark.slow
def test_int8_quantization_is_qdq_per_channel_and_close(resnet56, cifar_test, tmp_path):
    from rmt_deploy import DataConfig
    from rmt_deploy.data import eval_transform, load_image_dataset
    from rmt_deploy.exporters import export
    from rmt_deploy.exporters.quantize import calibration_batches, quantize_int8
    from rmt_deploy.runtimes import prepare

    images = load_image_dataset(
        cifar_test, eval_transform(DataConfig.from_model(resnet56)), limit=256
    )
    artifact = export(resnet56, tmp_path, (3, 32, 32), n_verify=8)
    int8 = tmp_path / "model.int8.onnx"
    exclude = ["/linear/Gemm"]
    report = quantize_int8(
        artifact.onnx_path, int8, calibration_batches(images, 128), exclude=exclude
    )
    assert report.calibration_images == 128 and report.excluded == exclude
    graph = onnx.load(str(int8)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50
    inits = {i.name: i for i in graph.initializer}
    conv = next(n for n in graph.node if n.op_type == "Conv" and n.name != "/conv1/Conv")
    weight_dq = next(n for n in graph.node if n.output[0] == conv.input[1])
    scale = inits[weight_dq.input[1]]
    assert list(scale.dims) == [int(onnx.numpy_helper.to_array(inits[weight_dq.input[0]]).shape[0])]
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    assert gemm.input[1] in inits and inits[gemm.input[1]].data_type == onnx.TensorProto.FLOAT
    x = np.stack([images[i][0].numpy() for i in range(128, 256)])
    fp32 = prepare("onnxruntime", None, artifact.onnx_path).run(x).argmax(1)
    q = prepare("onnxruntime-int8", None, artifact.onnx_path, onnx_int8=int8).run(x).argmax(1)
    assert (fp32 == q).mean() >= 0.9


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO not installed")
def test_openvino_backend_matches_onnxruntime(tmp_path):
    from rmt_deploy.deploy import openvino_default_precision
    from rmt_deploy.exporters import export
    from rmt_deploy.runtimes import BackendUnavailable, prepare

    model, _ = _toy()
    artifact = export(model, tmp_path, (3, 4, 4), n_verify=4)
    x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
    ort = prepare("onnxruntime", None, artifact.onnx_path).run(x)
    ov = prepare("openvino-f32", None, artifact.onnx_path, threads=2)
    assert "OpenVINO" in ov.device and ov.threads == 2
    assert np.allclose(ov.run(x), ort, atol=1e-4, rtol=1e-4)
    if openvino_default_precision() != "bf16":
        with pytest.raises(BackendUnavailable, match="no bf16"):
            prepare("openvino-bf16", None, artifact.onnx_path)
    with pytest.raises(BackendUnavailable, match="needs the INT8 model"):
        prepare("openvino-int8", None, artifact.onnx_path)
