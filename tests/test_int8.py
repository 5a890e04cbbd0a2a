"""INT8: the recipe (ONNX Runtime's default op set, a measured choice), Q/DQ toggling for mixed
precision, NNCF's model, and EfficientNet-Lite1 within 1 pp of fp32 on a run's test part."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from rmt_deploy.exporters import export
from rmt_deploy.exporters.qdq import float_effects, keep_float, quantized_nodes
from rmt_deploy.exporters.quantize import (
    DEFAULT_RECIPE,
    Int8Recipe,
    QuantizationError,
    choose_recipe,
    int8_images,
    int8_model,
    onnx_outputs,
    preprocess,
    quantize_int8,
)

HAS_NNCF = importlib.util.find_spec("nncf") is not None and importlib.util.find_spec("openvino")


class _Net(nn.Module):
    """Two convolutions with a residual Add, pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y)) + y
        return self.fc(y.mean(dim=(2, 3)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return _Net().eval()


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("int8")
    model = _net()
    onnx_path = export(model, folder, (3, 8, 8), n_verify=2).onnx_path
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((16, 3, 8, 8)).astype(np.float32) for _ in range(4)]
    check = [rng.standard_normal((16, 3, 8, 8)).astype(np.float32)]
    full = folder / "model.int8.onnx"
    quantize_int8(onnx_path, full, calib)
    prepared = preprocess(onnx_path, folder / "prepared.onnx")
    return {"folder": folder, "onnx": onnx_path, "int8": full, "prepared": prepared,
            "calib": calib, "check": check}  # fmt: skip


def test_default_recipe_quantizes_every_op_onnxruntime_can(toy):
    ops = [n.op_type for n in onnx.load(str(toy["int8"])).graph.node]
    # The old Conv/MatMul/Gemm restriction left the residual Add in float; the default set
    # quantizes it too (its inputs and output get Q/DQ pairs).
    restricted = toy["folder"] / "restricted.int8.onnx"
    quantize_int8(toy["onnx"], restricted, toy["calib"],
                  recipe=Int8Recipe(op_types=("Conv", "MatMul", "Gemm")))  # fmt: skip
    old = [n.op_type for n in onnx.load(str(restricted)).graph.node]
    assert "Relu" in old and "Relu" not in ops  # folded into the conv outputs' INT8 ranges
    assert _add_output_quantized(toy["int8"]) and not _add_output_quantized(restricted)
    assert DEFAULT_RECIPE.op_types is None and DEFAULT_RECIPE.per_channel


def _add_output_quantized(path: Path) -> bool:
    graph = onnx.load(str(path)).graph
    add = next(n for n in graph.node if n.op_type == "Add")
    return any(n.op_type == "QuantizeLinear" and add.output[0] in n.input for n in graph.node)


def test_too_few_calibration_images_is_one_clear_error(toy, tmp_path):
    few = [toy["calib"][0][:8]]
    with pytest.raises(QuantizationError, match="at least 32 images, got 8"):
        quantize_int8(toy["onnx"], tmp_path / "x.onnx", few)
    assert not (tmp_path / "x.onnx").exists()


def test_recipe_round_trip_and_unknown_method():
    recipe = Int8Recipe(method="percentile", activation_symmetric=True, op_types=("Conv",))
    assert Int8Recipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(QuantizationError, match="unknown INT8 calibration method 'kl'"):
        Int8Recipe(method="kl")


def test_all_nodes_in_float_is_the_float_model(toy, tmp_path):
    nodes = quantized_nodes(toy["int8"])
    assert {"/conv1/Conv", "/conv2/Conv"} <= set(nodes)
    out = keep_float(toy["int8"], toy["prepared"], nodes, tmp_path / "float.onnx")
    graph = onnx.load(str(out)).graph
    assert not [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    # On the calibration images every activation lies inside its calibrated range, so the
    # clamps that keep the folded ReLUs cut almost nothing else (the ends of each range are
    # rounded to its scale): the float model's outputs.
    x = toy["calib"]
    got, want = onnx_outputs(out, x), onnx_outputs(toy["onnx"], x)
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max(), np.abs(got - want).max()


def test_one_node_in_float_reads_float_tensors(toy, tmp_path):
    out = keep_float(toy["int8"], toy["prepared"], ["/conv2/Conv"], tmp_path / "mixed.onnx")
    graph = onnx.load(str(out)).graph
    producers = {o: n for n in graph.node for o in n.output}
    conv = next(n for n in graph.node if n.name == "/conv2/Conv")
    weights = {i.name: i for i in graph.initializer}
    assert conv.input[1] in weights and weights[conv.input[1]].data_type == onnx.TensorProto.FLOAT
    source = producers[conv.input[0]]
    assert source.op_type != "DequantizeLinear"  # the activation before its Q/DQ
    first = next(n for n in graph.node if n.name == "/conv1/Conv")
    assert producers[first.input[0]].op_type == "DequantizeLinear"  # the others untouched
    with pytest.raises(ValueError, match="nodes not in"):
        keep_float(toy["int8"], toy["prepared"], ["/9/Conv"], tmp_path / "bad.onnx")


def test_float_effects_rank_layers_by_what_float_saves(toy):
    full, effects = float_effects(toy["int8"], toy["prepared"], toy["check"])
    reference = onnx_outputs(toy["onnx"], toy["check"]).astype(np.float64)
    got = onnx_outputs(toy["int8"], toy["check"]).astype(np.float64)
    assert full == pytest.approx(((got - reference) ** 2).sum() / (reference**2).sum())
    assert [e.node for e in effects] and {e.node for e in effects} == set(
        quantized_nodes(toy["int8"])
    )
    gains = [e.gain for e in effects]
    assert gains == sorted(gains, reverse=True)
    for e in effects:
        assert e.gain == pytest.approx(full - e.error)


def test_choose_recipe_keeps_the_smallest_output_error(toy):
    candidates = (DEFAULT_RECIPE, Int8Recipe(activation_symmetric=True))
    choice = choose_recipe(toy["onnx"], toy["folder"], toy["calib"], toy["check"], candidates)
    reference = onnx_outputs(toy["onnx"], toy["check"]).astype(np.float64)
    mse = {}
    for i, recipe in enumerate(candidates):
        y = onnx_outputs(toy["folder"] / f"recipe{i}.int8.onnx", toy["check"]).astype(np.float64)
        mse[recipe] = float(((y - reference) ** 2).mean())
    assert choice.recipe == min(candidates, key=mse.get)
    assert set(choice.errors) == {r.label for r in candidates}


def test_int8_model_with_float_nodes_matches_a_toggle(toy, tmp_path):
    nodes = ["/conv1/Conv", "/not/there"]
    made = int8_model(toy["onnx"], tmp_path / "m.int8.onnx", toy["calib"], float_nodes=nodes)
    assert made.excluded == ["/conv1/Conv"]
    toggled = keep_float(toy["int8"], toy["prepared"], ["/conv1/Conv"], tmp_path / "t.onnx")
    x = toy["check"]
    assert np.array_equal(onnx_outputs(tmp_path / "m.int8.onnx", x), onnx_outputs(toggled, x))


def test_int8_images_are_disjoint_and_spaced():
    ranges, check = int8_images(list(range(1000)))
    assert (len(ranges), len(check)) == (128, 64) and not set(ranges) & set(check)
    assert max(ranges) > 900 and max(check) > 900  # spread over the whole set
    ranges, check = int8_images(list(range(100)))
    assert (len(ranges), len(check)) == (100, 0)


@pytest.mark.skipif(not HAS_NNCF, reason="NNCF/OpenVINO not installed")
def test_nncf_int8_is_openvino_ir_close_to_fp32(toy, tmp_path):
    from rmt_deploy.exporters.nncf_int8 import nncf_int8
    from rmt_deploy.runtimes import prepare

    xml = tmp_path / "model.nncf.xml"
    report = nncf_int8(toy["onnx"], xml, toy["calib"])
    assert xml.is_file() and xml.with_suffix(".bin").is_file() and report.calibration_images == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ir-")]  # no temp left
    x = toy["check"][0]
    run = prepare("openvino-nncf-int8", None, toy["onnx"], openvino_int8=xml).run
    fp32 = onnx_outputs(toy["onnx"], [x])
    assert np.abs(run(x) - fp32).max() < 0.1 * np.abs(fp32).max()


def test_nncf_missing_is_named(monkeypatch):
    from rmt_deploy.exporters import nncf_int8

    real = importlib.util.find_spec
    monkeypatch.setattr(
        nncf_int8.importlib.util, "find_spec", lambda n: None if n == "nncf" else real(n)
    )
    assert nncf_int8.nncf_unavailable() == "nncf is not installed (pip install '.[openvino]')"
    with pytest.raises(QuantizationError, match="NNCF INT8: nncf is not installed"):
        nncf_int8.nncf_int8(Path("x.onnx"), Path("x.xml"), [np.zeros((32, 3, 8, 8), np.float32)])


@pytest.mark.slow
def test_efficientnet_lite1_full_int8_within_1pp_of_fp32(assets, tmp_path):
    """On the test part of the example run's split, calibrated on its calibration part."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from torch.utils.data import Subset

    from rmt_deploy import load_config
    from rmt_deploy.exporters.quantize import calibration_batches
    from rmt_deploy.pipeline.stages import RunContext

    root = Path(__file__).resolve().parent.parent
    config = load_config(root / "examples" / "cpu_onnxruntime_effnet_lite1.yaml")
    ctx = RunContext(config, tmp_path, assets, progress=False)
    onnx_path = export(ctx.dense, tmp_path / "fp32", ctx.input_shape, n_verify=2).onnx_path
    ranges, _ = int8_images(ctx.calib)
    int8 = tmp_path / "model.int8.onnx"
    quantize_int8(onnx_path, int8, calibration_batches(Subset(ctx.calib, ranges), len(ranges)))
    test = ctx.test
    images = torch.stack([test[i][0] for i in range(len(test))]).numpy()
    labels = np.array([test[i][1] for i in range(len(test))])
    batches = [images[i : i + 50] for i in range(0, len(images), 50)]
    fp32 = 100 * (onnx_outputs(onnx_path, batches).argmax(1) == labels).mean()
    q = 100 * (onnx_outputs(int8, batches).argmax(1) == labels).mean()
    assert len(test) >= 400 and fp32 > 75
    assert q >= fp32 - 1.0, f"INT8 {q:.2f} % against fp32 {fp32:.2f} % on {len(test)} images"


def test_ladder_sizes():
    from rmt_deploy.planner.precision import ladder

    assert ladder(0) == [] and ladder(1) == [1]
    assert ladder(4) == [1, 2, 4] and ladder(81) == [1, 2, 4, 8, 16, 32, 64, 81]


def test_float_ladder_keeps_the_smallest_set_that_fits(monkeypatch, tmp_path):
    """Layers go back to float by measured gain; the ladder stops at the first size where a
    QDQ deployment fits, and that set is what the export stage will apply."""
    from rmt_deploy.deploy import DEPLOYMENTS
    from rmt_deploy.exporters.qdq import NodeEffect
    from rmt_deploy.planner import Engine, LatencyPlanReport, precision
    from rmt_deploy.runtimes import Variant

    effects = [NodeEffect("c", 0.1, 0.5), NodeEffect("a", 0.2, 0.4), NodeEffect("b", 0.5, 0.1),
               NodeEffect("d", 0.6, 0.0), NodeEffect("e", 0.6, -0.1)]  # fmt: skip
    monkeypatch.setattr("rmt_deploy.exporters.qdq.float_effects", lambda *a, **k: (0.6, effects))
    needs = {"onnxruntime-int8": {"c", "a", "b"}, "openvino-int8": {"c", "a"}}  # to fit

    class Engines:
        check, float_nodes, applied = [], [], []

        def apply_float(self, folder):
            self.applied.append(list(self.float_nodes))

    def validate(chosen, baselines, engines, files, *checks):
        for d, e in zip(chosen, baselines, strict=True):
            e.within_budget = needs[d.name] <= set(engines.float_nodes)
            e.heldout_loss_upper = 0.5 if e.within_budget else 2.0
        return {e.label: None for e in baselines}

    monkeypatch.setattr(precision, "validate_baselines", validate)
    chosen = [DEPLOYMENTS["onnxruntime-int8"], DEPLOYMENTS["openvino-int8"]]
    baselines = {d.name: Engine(f"dense / {d.name}", d.name, None) for d in chosen}
    report = LatencyPlanReport([d.name for d in chosen], {}, 8, "top1", 1.0)
    engines = Engines()
    precision.float_ladder(
        engines, Variant(onnx=tmp_path / "m.onnx"), chosen, report, baselines, (), False
    )
    assert engines.applied == [["c"], ["c", "a"]]  # 1, then 2: OpenVINO fits, "b" not tried
    assert report.int8_float_nodes == ["c", "a"]
    assert [s["float_layers"] for s in report.int8_mixed] == [1, 2]
    assert report.int8_mixed[0]["loss_upper"] == {"onnxruntime-int8": 2.0, "openvino-int8": 2.0}
    assert report.int8_mixed[1]["loss_upper"] == {"onnxruntime-int8": 2.0, "openvino-int8": 0.5}
    assert not baselines["onnxruntime-int8"].within_budget  # dropped, not fitted at a cost
    assert [e["node"] for e in report.int8_effects["layers"]] == ["c", "a", "b", "d", "e"]
