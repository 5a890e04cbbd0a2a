"""TensorRT path: everything around the TensorRT calls is tested here; the build itself only
where the tensorrt package (an NVIDIA GPU machine) is present."""

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from rmt_deploy.cli import main
from rmt_deploy.errors import RmtDeployError
from rmt_deploy.exporters import export
from rmt_deploy.exporters.onnx_sparsity import force_24_initializers
from rmt_deploy.exporters.tensorrt_build import (
    BatchProfile,
    TensorRTUnavailable,
    build_engine,
    cast_onnx_precision,
    engine_layers_path,
    float32_to_bfloat16_bits,
    parse_sparsity_log,
)
from rmt_deploy.layers import is_nm_sparse

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 12),
    )
    out = tmp_path_factory.mktemp("onnx")
    return export(model, out, (8, 8, 8), n_verify=4, name="small").onnx_path


def test_batch_profile():
    assert BatchProfile.parse("1:8:32") == BatchProfile(1, 8, 32)
    assert BatchProfile(1, 8, 32).covers(32) and not BatchProfile(1, 8, 32).covers(33)
    for bad in ("8:1:32", "1:8", "a:b:c", "0:1:2"):
        with pytest.raises(RmtDeployError, match="MIN:OPT:MAX"):
            BatchProfile.parse(bad)


def test_sparsity_log_lines():
    lines = [
        "[I] [TRT] (Sparsity) Layers eligible for sparse math: /conv1/Conv + /relu/Relu, /fc/Gemm",
        "[V] [TRT] something else",
        "[I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: /fc/Gemm",
    ]
    eligible, picked = parse_sparsity_log(lines)
    assert eligible == ["/conv1/Conv + /relu/Relu", "/fc/Gemm"] and picked == ["/fc/Gemm"]


def test_cast_for_strongly_typed_networks(small_onnx):
    model = cast_onnx_precision(onnx.load(str(small_onnx)), "fp16")
    onnx.checker.check_model(model)
    floats = [
        i
        for i in model.graph.initializer
        if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
    ]
    assert floats and all(i.data_type == TensorProto.FLOAT16 for i in floats)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(small_onnx), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 8)).astype(np.float32)
    low, full = session.run(None, {"input": x})[0], ref.run(None, {"input": x})[0]
    assert low.dtype == np.float32 and np.allclose(low, full, atol=2e-2, rtol=2e-2)


def _bf16_edge_values() -> np.ndarray:
    """Ties (to even, both ways), values just off a tie, extremes, subnormals, signed zero."""
    ties = [(0x3F80 << 16) | 0x8000, (0x3F81 << 16) | 0x8000, (0xBF81 << 16) | 0x8000]
    near = [(0x3F80 << 16) | 0x7FFF, (0x3F80 << 16) | 0x8001, 0x7F7FFFFF, 0x00000001, 0x807FFFFF]
    bits = np.array(ties + near, dtype=np.uint32).view(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -1e-40], np.float32)
    randoms = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 100
    return np.concatenate([bits, special, randoms])


def test_bfloat16_rounding_matches_torch():
    """Round to nearest even, bit for bit what torch's own conversion gives; NaN stays NaN
    (torch's vectorized path writes 0xFFFF, its scalar path 0x7FC0: both NaN)."""
    values = _bf16_edge_values()
    ours = float32_to_bfloat16_bits(values)
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(values)
    assert ours.dtype == np.uint16 and nan.sum() == 1
    assert np.array_equal(ours[~nan], theirs[~nan])
    decoded = torch.from_numpy(ours.view(np.int16)).view(torch.bfloat16).float().numpy()
    assert np.array_equal(np.isnan(decoded), nan)
    assert ours[0] == 0x3F80 and ours[1] == 0x3F82  # 1.0 + half ulp → 1.0; odd + half → up


def test_bf16_cast_writes_the_rounded_weights(small_onnx):
    original = {
        i.name: numpy_helper.to_array(i) for i in onnx.load(str(small_onnx)).graph.initializer
    }
    model = cast_onnx_precision(onnx.load(str(small_onnx)), "bf16")
    onnx.checker.check_model(model)  # (ONNX's Conv before opset 22 has no bf16: no full check)
    converted = [i for i in model.graph.initializer if i.data_type == TensorProto.BFLOAT16]
    assert {i.name for i in converted} == {n for n, a in original.items() if a.dtype == np.float32}
    for init in converted:  # read back through torch, an independent bf16 decoder
        raw = np.frombuffer(init.raw_data, dtype="<i2").reshape(tuple(init.dims)).copy()
        decoded = torch.from_numpy(raw).view(torch.bfloat16).float()
        expected = torch.from_numpy(original[init.name].copy()).to(torch.bfloat16).float()
        assert torch.equal(decoded, expected), init.name


def _attention_head() -> onnx.ModelProto:
    """x → MatMul W → ReduceMean(axes input, opset 18) → Mul s → Softmax → LayerNorm → y."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
        numpy_helper.from_array(np.array(0.5, np.float32), "s"),
        numpy_helper.from_array(np.full(6, 1.25, np.float32), "gamma"),
        numpy_helper.from_array(np.full(6, 0.1, np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("ReduceMean", ["h", "axes"], ["m"], name="mean", keepdims=1),
        helper.make_node("Mul", ["m", "s"], ["ms"], name="scale"),
        helper.make_node("Softmax", ["ms"], ["p"], name="softmax", axis=-1),
        helper.make_node("LayerNormalization", ["p", "gamma", "beta"], ["y"], name="ln"),
    ]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(
    ("precision", "low"), [("fp16", TensorProto.FLOAT16), ("bf16", TensorProto.BFLOAT16)]
)
def test_cast_keeps_norm_softmax_reductions_fp32(precision, low):
    model = cast_onnx_precision(_attention_head(), precision)
    onnx.checker.check_model(model, full_check=True)  # ONNX's own type check: no mixed op
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i.data_type for i in model.graph.initializer}
    fp32 = TensorProto.FLOAT
    assert inits == {"W": low, "axes": TensorProto.INT64, "s": low, "gamma": fp32, "beta": fp32}
    casts = {
        n.output[0]: (n.input[0], n.attribute[0].i) for n in model.graph.node if n.op_type == "Cast"
    }
    assert casts == {
        "x__to_" + precision: ("x", low),  # fp32 in, computed low
        "h__to_fp32": ("h", TensorProto.FLOAT),  # up before the reduction
        "m__to_" + precision: ("m", low),  # down after it
        "ms__to_fp32": ("ms", TensorProto.FLOAT),  # up before softmax; its output feeds LN
    }
    assert list(nodes["mean"].input) == ["h__to_fp32", "axes"]  # the integer axes untouched
    assert list(nodes["softmax"].input) == ["ms__to_fp32"]
    assert list(nodes["ln"].input) == ["p", "gamma", "beta"]  # fp32 to fp32: no Cast
    assert list(nodes["ln"].output) == ["y"] and model.graph.output[0].name == "y"
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    ref = ort.InferenceSession(_attention_head().SerializeToString()).run(None, {"x": x})[0]
    if precision == "fp16":  # ONNX Runtime's CPU kernels cover fp16 here, not bf16
        got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        assert got.dtype == np.float32 and np.allclose(got, ref, atol=2e-2)


def test_force_24(small_onnx):
    model = onnx.load(str(small_onnx))
    changed = force_24_initializers(model)
    assert len(changed) == 2  # the conv (8 input channels) and the linear (16 inputs)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert is_nm_sparse(torch.tensor(inits[conv.input[1]]))


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the missing-runtime path cannot run")
def test_missing_tensorrt_is_a_clear_error(small_onnx, tmp_path, capsys):
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        build_engine(small_onnx, tmp_path / "m.engine")
    assert main(["build", str(small_onnx), "--batch", "1:4:8"]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(
    not (HAS_TRT and torch.cuda.is_available()),
    reason="TensorRT and a CUDA device are needed (an NVIDIA GPU machine)",
)
def test_build_engine(small_onnx, tmp_path):
    from rmt_deploy.runtimes.tensorrt import tensorrt_engine

    report = build_engine(
        small_onnx,
        tmp_path / "m.engine",
        precision="fp16",
        batch=BatchProfile(1, 2, 4),
        timing_cache=tmp_path / "cache",
    )
    assert report.engine_path.stat().st_size > 0 and (tmp_path / "cache").stat().st_size > 0
    # TensorRT ≥ 8.6 has the engine inspector: a report with every tactic layer's precision
    assert report.layers_reason is None and report.layers
    assert engine_layers_path(report.engine_path).is_file()
    tactic_rows = [row for row in report.layers if row["tactic"]]
    assert tactic_rows and all(row["precision"] in ("fp16", "fp32") for row in tactic_rows)
    # and it computes the model: fp16 engine against ONNX Runtime in fp32, batches 1 and 4
    prepared = tensorrt_engine(report.engine_path)
    reference = ort.InferenceSession(str(small_onnx), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 8, 8)).astype(np.float32)
        expected = reference.run(None, {"input": x})[0]
        assert np.allclose(prepared.run(x), expected, atol=3e-2, rtol=3e-2)


HAS_TORCH_TRT = importlib.util.find_spec("torch_tensorrt") is not None


@pytest.mark.skipif(HAS_TORCH_TRT, reason="torch-tensorrt is installed")
def test_torch_tensorrt_missing_is_clear(tmp_path):
    from rmt_deploy.exporters.torch_tensorrt_build import compile_torch_tensorrt

    with pytest.raises(TensorRTUnavailable, match="torch-tensorrt is not installed"):
        compile_torch_tensorrt(nn.Linear(4, 2), tmp_path / "m.ep", (4,))
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(
    not (HAS_TORCH_TRT and torch.cuda.is_available()),
    reason="torch-tensorrt and a CUDA device are needed",
)
def test_torch_tensorrt_compiles(tmp_path):
    import torch_tensorrt  # noqa: F401 - registers the TensorRT ops the saved program calls

    from rmt_deploy.exporters.torch_tensorrt_build import compile_torch_tensorrt

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    model(torch.zeros(1, 3, 8, 8))
    path = compile_torch_tensorrt(model, tmp_path / "m.ep", (3, 8, 8), precision="fp16")
    assert path.stat().st_size > 0 and sorted(p.name for p in tmp_path.iterdir()) == ["m.ep"]
    loaded = torch.export.load(str(path)).module()
    x = torch.randn(1, 3, 8, 8, device="cuda")  # the default profile: batch 1
    with torch.no_grad():
        expected = model.cuda().eval()(x)
        got = loaded(x)
    got = got[0] if isinstance(got, (tuple, list)) else got
    assert got.shape == (1, 4) and torch.allclose(got.float(), expected, atol=2e-2, rtol=2e-2)
