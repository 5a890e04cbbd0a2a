"""The latency planner's parts: the DP against brute force, sensitivities, deterministic replans
on a saved table, latency targets, INT8 quantization and the OpenVINO backend."""

import copy
import importlib.util
import itertools

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rmt_deploy.calibration import InputStats, whitened_factors
from rmt_deploy.layers import layer_view
from rmt_deploy.planner import LayerEntry, LayerOption, allocate, latency_plan, refine_sensitivity


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

    monkeypatch.setattr("rmt_deploy.planner.latency_aware.measure_options", no_timing)
    monkeypatch.setattr("rmt_deploy.planner.latency_aware.time_interleaved", no_timing)
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


@pytest.mark.slow
def test_int8_quantization_is_qdq_per_channel_and_close(resnet56, cifar_test, tmp_path):
    from rmt_deploy import DataConfig
    from rmt_deploy.bench.backends import prepare
    from rmt_deploy.data import eval_transform, load_image_dataset
    from rmt_deploy.exporters import export
    from rmt_deploy.exporters.quantize import calibration_batches, quantize_int8

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
    from rmt_deploy.bench.backends import BackendUnavailable, prepare
    from rmt_deploy.deploy import openvino_default_precision
    from rmt_deploy.exporters import export

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
