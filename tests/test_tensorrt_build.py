"""TensorRT path: everything around the TensorRT calls is tested here; the build itself only
where the tensorrt package (an NVIDIA GPU machine) is present."""

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper
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


@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (needs an NVIDIA GPU)")
def test_build_engine(small_onnx, tmp_path):
    report = build_engine(
        small_onnx,
        tmp_path / "m.engine",
        precision="fp16",
        batch=BatchProfile(1, 2, 4),
        timing_cache=tmp_path / "cache",
    )
    assert report.engine_path.stat().st_size > 0 and (tmp_path / "cache").exists()
    # the per-layer report of the real inspector: rows with a precision, or the reason why not
    assert engine_layers_path(report.engine_path).is_file()
    assert report.layers_reason or all(row["precision"] for row in report.layers if row["tactic"])


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
    from rmt_deploy.exporters.torch_tensorrt_build import compile_torch_tensorrt

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    model(torch.zeros(1, 3, 8, 8))
    path = compile_torch_tensorrt(model, tmp_path / "m.ep", (3, 8, 8), precision="fp16")
    assert path.stat().st_size > 0
