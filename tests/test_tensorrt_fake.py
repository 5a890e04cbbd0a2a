"""The TensorRT build and bench paths against a fake `tensorrt` (tests/fake_tensorrt.py) that
follows the documented Python API of TensorRT 10 and 11: every flag and call the code makes is
checked, so a change in either fails here, on machines without a GPU."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from rmt_deploy.cli import main
from rmt_deploy.exporters import export
from rmt_deploy.exporters.tensorrt_build import (
    BatchProfile,
    EngineBuildError,
    build_engine,
    engine_info_path,
    engine_layers_path,
    parse_engine_layers,
    read_engine_profile,
)
from rmt_deploy.layers import is_nm_sparse, nm_mask
from rmt_deploy.runtimes import BackendUnavailable, prepare
from rmt_deploy.runtimes import tensorrt as backends
from rmt_deploy.runtimes.tensorrt import EngineProfileError
from tests.fake_tensorrt import engine_blob, make_fake_tensorrt

VERSIONS = ("10.3.0", "11.0.0")
CONV, GEMM_SMALL, GEMM_BIG, GEMM_OUT = "/0/Conv", "/4/Gemm", "/6/Gemm", "/8/Gemm"


def _model(sparse: bool) -> nn.Module:
    """Conv 8→16, Linear 16→256, 256→256, 256→10: only the 256×256 layer is big enough for
    TensorRT (and the fake) to pick a sparse tactic."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )
    if sparse:  # 2:4 on the conv and the first two linears, dense classifier
        with torch.no_grad():
            for i in (0, 4, 6):
                model[i].weight.mul_(nm_mask(model[i].weight))
    return model


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    return {
        name: export(_model(name == "sparse"), out / name, (8, 8, 8), n_verify=2).onnx_path
        for name in ("dense", "sparse")
    }


def _install(monkeypatch, version: str, **options):
    fake = make_fake_tensorrt(version, **options)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


@pytest.fixture(params=VERSIONS)
def trt(request, monkeypatch):
    return _install(monkeypatch, request.param)


@pytest.fixture
def moves(monkeypatch) -> list[tuple[Path, Path]]:
    """Every os.replace (the atomic move into place) as (temporary, target)."""
    import rmt_deploy.paths as paths

    done, real = [], os.replace

    def spy(src, dst):
        done.append((Path(src), Path(dst)))
        real(src, dst)

    monkeypatch.setattr(paths.os, "replace", spy)
    return done


def _flags(fake) -> list[str]:
    return [flag.name for (flag,) in fake.called("IBuilderConfig.set_flag")]


def _network_flags(fake) -> list[str]:
    ((flags,),) = fake.called("Builder.create_network")
    return fake.network_flag_names(flags)


def _parsed_path(fake) -> str:
    ((path,),) = fake.called("OnnxParser.parse_from_file")
    return path


def _weights(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Conv/Gemm node name → its weight initializer."""
    inits = {init.name: init for init in model.graph.initializer}
    return {
        node.name: inits[node.input[1]]
        for node in model.graph.node
        if node.op_type in ("Conv", "Gemm")
    }


def test_trt10_fp16_uses_builder_flags_on_the_original_onnx(onnx_files, tmp_path, monkeypatch):
    fake = _install(monkeypatch, "10.3.0")
    report = build_engine(onnx_files["dense"], tmp_path / "m.engine", precision="fp16")
    assert _network_flags(fake) == []  # weakly typed
    assert _flags(fake) == ["FP16", "SPARSE_WEIGHTS"]
    assert _parsed_path(fake) == str(onnx_files["dense"])
    assert fake.called("IBuilderConfig.set_memory_pool_limit") == [
        (fake.MemoryPoolType.WORKSPACE, 2048 << 20)
    ]
    assert fake.called("IBuilderConfig.profiling_verbosity") == [
        (fake.ProfilingVerbosity.DETAILED,)
    ]
    assert not report.strongly_typed and report.tensorrt_version == "10.3.0"
    blob = engine_blob(report.engine_path)
    assert blob["flags"] == ["FP16", "SPARSE_WEIGHTS"] and not blob["strongly_typed"]


def test_trt10_bf16_and_fp32_flags(onnx_files, tmp_path, monkeypatch):
    fake = _install(monkeypatch, "10.3.0")
    build_engine(onnx_files["dense"], tmp_path / "bf16.engine", precision="bf16")
    assert _flags(fake) == ["BF16", "SPARSE_WEIGHTS"]
    fake = _install(monkeypatch, "10.3.0")
    build_engine(onnx_files["dense"], tmp_path / "fp32.engine", precision="fp32")
    assert _flags(fake) == ["SPARSE_WEIGHTS"]


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp16", TensorProto.FLOAT16), ("bf16", TensorProto.BFLOAT16)]
)
def test_trt11_is_strongly_typed_on_a_cast_onnx(
    onnx_files, tmp_path, monkeypatch, precision, dtype
):
    fake = _install(monkeypatch, "11.0.0")
    for removed in ("FP16", "BF16", "INT8"):  # gone from TensorRT 11, as on the real module
        with pytest.raises(AttributeError):
            getattr(fake.BuilderFlag, removed)
    report = build_engine(onnx_files["dense"], tmp_path / "m.engine", precision=precision)
    assert _network_flags(fake) == ["STRONGLY_TYPED"]
    assert _flags(fake) == ["SPARSE_WEIGHTS"]  # no precision flag
    assert report.strongly_typed and report.precision == precision
    path, model = fake.parsed[0]
    assert path == _parsed_path(fake) and path != str(onnx_files["dense"])
    floats = [i for i in model.graph.initializer if i.data_type != TensorProto.INT64]
    assert floats and all(i.data_type == dtype for i in floats)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_trt11_fp32_sets_no_precision_flag(onnx_files, tmp_path, monkeypatch):
    fake = _install(monkeypatch, "11.0.0")
    build_engine(onnx_files["dense"], tmp_path / "m.engine", precision="fp32")
    assert _network_flags(fake) == ["STRONGLY_TYPED"] and _flags(fake) == ["SPARSE_WEIGHTS"]
    weights = _weights(fake.parsed[0][1])
    assert all(w.data_type == TensorProto.FLOAT for w in weights.values())


def test_sparsity_disable_sets_no_sparse_flag(trt, onnx_files, tmp_path):
    report = build_engine(onnx_files["sparse"], tmp_path / "m.engine", sparsity="disable")
    assert "SPARSE_WEIGHTS" not in _flags(trt)
    assert "SPARSE_WEIGHTS" not in engine_blob(report.engine_path)["flags"]
    assert report.sparse_24["sparse"] == [] and "disabled" in report.sparse_24["note"]


def test_sparsity_force_parses_24_weights(trt, onnx_files, tmp_path):
    original = onnx.load(str(onnx_files["dense"]))
    build_engine(onnx_files["dense"], tmp_path / "m.engine", sparsity="force")
    assert "SPARSE_WEIGHTS" in _flags(trt)
    assert _parsed_path(trt) != str(onnx_files["dense"])
    parsed = _weights(trt.parsed[0][1])
    before = _weights(original)
    assert set(parsed) == {CONV, GEMM_SMALL, GEMM_BIG, GEMM_OUT}
    for name, init in parsed.items():
        weight = torch.from_numpy(numpy_helper.to_array(init).astype(np.float32))
        assert is_nm_sparse(weight), name  # (out, in[, kh, kw]): Gemm has transB=1
        assert not is_nm_sparse(torch.tensor(numpy_helper.to_array(before[name])))
    assert onnx.load(str(onnx_files["dense"])) == original  # the user's file is untouched


def test_profile_gets_exactly_min_opt_max(trt, onnx_files, tmp_path):
    report = build_engine(onnx_files["dense"], tmp_path / "m.engine", batch=BatchProfile(2, 4, 8))
    assert trt.called("IOptimizationProfile.set_shape") == [
        ("input", (2, 8, 8, 8), (4, 8, 8, 8), (8, 8, 8, 8))
    ]
    assert len(trt.called("IBuilderConfig.add_optimization_profile")) == 1
    (engine_input,) = engine_blob(report.engine_path)["inputs"]
    assert engine_input["profile"] == [[2, 8, 8, 8], [4, 8, 8, 8], [8, 8, 8, 8]]
    assert read_engine_profile(report.engine_path) == BatchProfile(2, 4, 8)


@pytest.mark.parametrize("version", VERSIONS)
def test_timing_cache_is_read_and_written_back_atomically(
    onnx_files, tmp_path, monkeypatch, moves, version
):
    cache = tmp_path / "trt.cache"
    fake = _install(monkeypatch, version)
    build_engine(onnx_files["dense"], tmp_path / "a.engine", timing_cache=cache)
    assert fake.called("IBuilderConfig.create_timing_cache") == [(b"",)]  # none yet
    ((made,),) = fake.called("IBuilderConfig.set_timing_cache")
    assert [kw for n, _, kw in fake.calls if n == "IBuilderConfig.set_timing_cache"] == [
        {"ignore_mismatch": False}
    ]
    first = cache.read_bytes()
    assert first == bytes(made.serialize()) and json.loads(first)["entries"]

    fake = _install(monkeypatch, version)
    build_engine(onnx_files["dense"], tmp_path / "b.engine", timing_cache=cache)
    assert fake.called("IBuilderConfig.create_timing_cache") == [(first,)]  # read back
    assert len(json.loads(cache.read_bytes())["entries"]) > len(json.loads(first)["entries"])
    assert [dst for _, dst in moves].count(cache) == 2  # each time via a temporary + os.replace
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_parse_failure_names_the_errors(trt, onnx_files, tmp_path):
    model = onnx.load(str(onnx_files["dense"]))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "FancyRelu", "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(EngineBuildError, match="cannot parse .*No importer registered for op"):
        build_engine(bad, tmp_path / "m.engine")
    assert trt.called("OnnxParser.get_error") == [(0,)]
    assert not trt.called("Builder.build_serialized_network")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_fake_parser_reads_the_path_it_is_given(tmp_path, monkeypatch):
    fake = _install(monkeypatch, "10.3.0")
    network = fake.Builder(fake.Logger()).create_network(0)
    parser = fake.OnnxParser(network, fake.Logger())
    assert not parser.parse_from_file(str(tmp_path / "missing.onnx"))
    assert parser.num_errors == 1 and "missing.onnx" in str(parser.get_error(0))
    with pytest.raises(EngineBuildError, match="cannot read ONNX model"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.engine")


def test_failed_build_raises_and_writes_nothing(trt, onnx_files, tmp_path):
    trt.fail_build = True
    with pytest.raises(EngineBuildError, match="failed to build an engine: .*Network build failed"):
        build_engine(onnx_files["dense"], tmp_path / "m.engine", timing_cache=tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_engine_and_records_are_written_atomically(trt, onnx_files, tmp_path, moves):
    engine = tmp_path / "out" / "m.engine"
    build_engine(onnx_files["sparse"], engine)
    targets = {dst: src for src, dst in moves}
    for path in (engine, engine_info_path(engine), engine_layers_path(engine)):
        assert path in targets and path.is_file()
        assert targets[path].parent == path.parent and targets[path].suffix == ".tmp"
    assert sorted(p.name for p in engine.parent.iterdir()) == [
        "m.engine",
        "m.engine.json",
        "m.engine.layers.json",
    ]


def test_per_layer_report_says_which_24_layers_paid(trt, onnx_files, tmp_path):
    engine = tmp_path / "m.engine"
    report = build_engine(onnx_files["sparse"], engine, precision="fp16")
    rows = {row["name"]: row for row in report.layers}
    assert set(rows) >= {
        f"{CONV} + /1/Relu",
        f"{GEMM_SMALL} + /5/Relu",
        f"{GEMM_BIG} + /7/Relu",
        GEMM_OUT,
    }
    for name in (f"{CONV} + /1/Relu", f"{GEMM_SMALL} + /5/Relu", f"{GEMM_BIG} + /7/Relu"):
        assert rows[name]["precision"] == "fp16" and rows[name]["tactic"]
    assert [name for name, row in rows.items() if row["sparse"]] == [f"{GEMM_BIG} + /7/Relu"]
    assert rows[f"{GEMM_BIG} + /7/Relu"]["onnx_nodes"] == [GEMM_BIG, "/7/Relu"]
    assert rows["/2/GlobalAveragePool"]["sparse"] is None  # no tactic name: unknown
    summary = report.sparse_24
    assert summary["eligible"] == [CONV, GEMM_SMALL, GEMM_BIG]
    assert summary["sparse"] == [GEMM_BIG] and summary["dense"] == [CONV, GEMM_SMALL]
    assert summary["unreported"] == [] and "256" in summary["note"]
    assert report.layers_reason is None
    # TensorRT's own log lines agree (eligible: 2:4 layers; picked: the sparse tactic)
    assert report.sparse_picked == [f"{GEMM_BIG} + /7/Relu"] and len(report.sparse_eligible) == 3
    written = json.loads(engine_layers_path(engine).read_text())
    assert written["layers"] == report.layers and written["sparse_24"] == summary
    info = json.loads(engine_info_path(engine).read_text())
    assert info["sparse_24"] == summary and info["layers"] == report.layers
    assert info["layers_file"] == "m.engine.layers.json"
    inspected = trt.called("EngineInspector.get_engine_information")
    assert inspected == [(trt.LayerInformationFormat.JSON,)]
    ((blob,),) = trt.called("Runtime.deserialize_cuda_engine")
    assert blob == engine.read_bytes()  # the report is of the engine that was written


def test_fp32_and_dense_builds_explain_the_missing_speedup(trt, onnx_files, tmp_path):
    report = build_engine(onnx_files["dense"], tmp_path / "m.engine", precision="fp32")
    assert all(row["precision"] == "fp32" for row in report.layers)
    assert report.sparse_24["eligible"] == [] and "no Conv/Gemm/MatMul" in report.sparse_24["note"]


def test_no_engine_inspector_records_the_reason(onnx_files, tmp_path, monkeypatch):
    for version in VERSIONS:
        _install(monkeypatch, version, inspector=False)
        engine = tmp_path / f"{version}.engine"
        report = build_engine(onnx_files["sparse"], engine)
        assert engine.is_file() and report.layers == []
        assert "no engine inspector" in report.layers_reason
        assert report.sparse_24["unreported"] == [CONV, GEMM_SMALL, GEMM_BIG]
        written = json.loads(engine_layers_path(engine).read_text())
        assert written["layers"] == [] and written["reason"] == report.layers_reason


def test_inspector_json_of_both_versions_and_names_only():
    ten = {
        "Layers": [
            {
                "Name": "/a/Conv + /b/Relu",
                "LayerType": "CaskConvolution",
                "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP16 format"}],
                "TacticName": "sm80_xmma_fprop_sparse_conv_f16f16_f16f32",
                "Metadata": "[ONNX Layer: /a/Conv]\x1f[ONNX Layer: /b/Relu]",
            }
        ],
        "Bindings": ["x", "y"],
    }
    eleven = {
        "Layers": [
            {
                "Name": "/c/Gemm",
                "Outputs": [{"Name": "z", "Format": "Row major linear", "DataType": "BFloat16"}],
                "TacticName": "sm90_gemm_bf16",
            }
        ],
        "I/O Tensors": [],
    }
    (row,) = parse_engine_layers(json.dumps(ten))
    assert row["precision"] == "fp16" and row["sparse"] is True
    assert row["onnx_nodes"] == ["/a/Conv", "/b/Relu"]
    (row,) = parse_engine_layers(json.dumps(eleven))
    assert row["precision"] == "bf16" and row["sparse"] is False
    (row,) = parse_engine_layers(json.dumps({"Layers": ["/d/Conv + /e/Relu"], "Bindings": []}))
    assert row["sparse"] is None and row["precision"] is None  # unknown, not "dense"
    assert row["onnx_nodes"] == ["/d/Conv", "/e/Relu"]


def test_cli_build_with_the_fake(trt, onnx_files, tmp_path, capsys):
    engine = tmp_path / "m.engine"
    args = ["build", str(onnx_files["sparse"]), "--out", str(engine), "--batch", "1:4:8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"TensorRT {trt.__version__}" in out and "m.engine.layers.json" in out
    assert "2:4 layers with a sparse tactic: 1 of 3" in out


def test_bench_backend_discovers_io_and_profile(trt, onnx_files, tmp_path, monkeypatch):
    engine = build_engine(
        onnx_files["dense"], tmp_path / "m.engine", batch=BatchProfile(2, 4, 8)
    ).engine_path
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="CUDA device"):
        prepare("tensorrt", None, None, engine=engine)

    trt.calls.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    opened, ran = [], []

    def cuda_run(found, path):  # stands in for the torch CUDA buffers
        opened.append(found)
        return lambda batch: ran.append(batch.shape[0]) or np.zeros((batch.shape[0], 10))

    monkeypatch.setattr(backends, "_tensorrt_cuda_run", cuda_run)
    prepared = prepare("tensorrt", None, None, engine=engine)
    (found,) = opened
    assert found.inputs == ["input"] and found.outputs == ["logits"]
    assert found.batch_range == prepared.batch_range == (2, 8)
    assert found.input_dtype == found.output_dtype == np.float32
    assert prepared.cuda and prepared.device == f"TensorRT {trt.__version__} Fake GPU"
    assert trt.called("Runtime.deserialize_cuda_engine") == [(engine.read_bytes(),)]
    assert trt.called("ICudaEngine.create_execution_context") == [()]
    assert trt.called("ICudaEngine.get_tensor_name") == [(0,), (1,)]
    assert trt.called("ICudaEngine.get_tensor_profile_shape") == [("input", 0)]
    for outside in (1, 9):  # refused before any CUDA work
        with pytest.raises(EngineProfileError, match=rf"batch {outside} is outside"):
            prepared.run(np.zeros((outside, 8, 8, 8), np.float32))
    assert prepared.run(np.zeros((4, 8, 8, 8), np.float32)).shape == (4, 10) and ran == [4]


def test_bench_backend_refuses_an_engine_of_another_version(onnx_files, tmp_path, monkeypatch):
    _install(monkeypatch, "10.3.0")
    engine = build_engine(onnx_files["dense"], tmp_path / "m.engine").engine_path
    _install(monkeypatch, "11.0.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(BackendUnavailable, match="11.0.0 cannot load .*rebuild it here"):
        prepare("tensorrt", None, None, engine=engine)
