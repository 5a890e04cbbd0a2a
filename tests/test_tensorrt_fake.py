"""The TensorRT build and bench paths against a fake `tensorrt` (tests/fake_tensorrt.py) that
follows the documented Python API of TensorRT 8.6, 10 and 11: every flag and call the code
makes is checked, so a change in either fails here, on machines without a GPU."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from rmt_deploy.cli import main
from rmt_deploy.errors import RmtDeployError
from rmt_deploy.exporters import export
from rmt_deploy.exporters.tensorrt_build import (
    BatchProfile,
    BuildLog,
    EngineBuildError,
    TensorRTUnavailable,
    _collecting_logger,
    build_engine,
    engine_info_path,
    engine_layers_path,
    parse_engine_layers,
    read_engine_profile,
    tensorrt_version,
)
from rmt_deploy.layers import is_nm_sparse, nm_mask
from rmt_deploy.runtimes import BackendUnavailable, prepare
from rmt_deploy.runtimes import tensorrt as backends
from rmt_deploy.runtimes.tensorrt import EngineProfileError
from tests.fake_tensorrt import engine_blob, fake_outputs, make_fake_tensorrt, tensor_types

VERSIONS = ("8.6.1", "10.3.0", "11.0.0")
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


def test_trt86_builds_an_explicit_batch_network_with_builder_flags(
    onnx_files, tmp_path, monkeypatch
):
    fake = _install(monkeypatch, "8.6.1")
    report = build_engine(onnx_files["dense"], tmp_path / "m.engine", precision="fp16")
    assert _network_flags(fake) == ["EXPLICIT_BATCH"]  # the ONNX parser refuses implicit batch
    assert _flags(fake) == ["FP16", "SPARSE_WEIGHTS"]
    assert _parsed_path(fake) == str(onnx_files["dense"])
    assert not report.strongly_typed and report.tensorrt_version == "8.6.1"
    assert engine_blob(report.engine_path)["flags"] == ["FP16", "SPARSE_WEIGHTS"]


def test_trt86_has_no_bf16_and_says_so_before_any_work(onnx_files, tmp_path, monkeypatch):
    fake = _install(monkeypatch, "8.6.1")
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT 8\.6\.1 has no BuilderFlag\.BF16: "
                       r"bf16 engines need TensorRT 9\.0 or newer") as caught:  # fmt: skip
        build_engine(onnx_files["dense"], tmp_path / "m.engine", precision="bf16")
    assert "\n" not in str(caught.value)
    assert fake.calls == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("old", ["8.5.3", "8.4.1.5", "7.2.3"])
def test_tensorrt_before_86_is_a_one_line_error(onnx_files, tmp_path, monkeypatch, old):
    fake = _install(monkeypatch, "8.6.1")
    fake.__version__ = old  # an older TensorRT: the code reads only the version before refusing
    with pytest.raises(TensorRTUnavailable) as caught:
        build_engine(onnx_files["dense"], tmp_path / "m.engine")
    assert str(caught.value) == (
        f"TensorRT {old} is too old: rmt-deploy build needs TensorRT 8.6 or newer "
        "(JetPack 6.0 ships 8.6)"
    )
    assert fake.calls == [] and list(tmp_path.iterdir()) == []


def test_tensorrt_versions_compare_as_numbers():
    assert tensorrt_version("8.6.2.3") == (8, 6)
    assert tensorrt_version("10.13.0.35") == (10, 13)  # 13 > 3: not a string comparison
    assert tensorrt_version("11.0.0b1") == (11, 0)
    assert tensorrt_version("8.10.0") > (8, 6) > tensorrt_version("8.5.99")
    with pytest.raises(TensorRTUnavailable, match="cannot read the TensorRT version"):
        tensorrt_version("unknown")


@pytest.mark.parametrize(
    ("precision", "dtype", "trt_type"),
    [("fp16", TensorProto.FLOAT16, "fp16"), ("bf16", TensorProto.BFLOAT16, "bf16")],
)
def test_trt11_is_strongly_typed_on_a_cast_onnx(
    onnx_files, tmp_path, monkeypatch, precision, dtype, trt_type
):
    fake = _install(monkeypatch, "11.0.0")
    report = build_engine(onnx_files["dense"], tmp_path / "m.engine", precision=precision)
    assert _network_flags(fake) == ["STRONGLY_TYPED"]
    assert _flags(fake) == ["SPARSE_WEIGHTS"]  # no precision flag: TensorRT 11 has none
    assert report.strongly_typed and report.precision == precision
    path, model = fake.parsed[0]
    assert path == _parsed_path(fake) and path != str(onnx_files["dense"])
    weights = _weights(model)
    assert set(weights) == {CONV, GEMM_SMALL, GEMM_BIG, GEMM_OUT}
    assert all(w.data_type == dtype for w in weights.values())
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    # what TensorRT made of it: every weighted layer in the precision asked, I/O in fp32
    rows = {row["name"]: row for row in report.layers}
    for name in (f"{CONV} + /1/Relu", f"{GEMM_SMALL} + /5/Relu", f"{GEMM_BIG} + /7/Relu"):
        assert rows[name]["precision"] == trt_type, name
    blob = engine_blob(report.engine_path)
    assert [t["dtype"] for t in blob["inputs"] + blob["outputs"]] == ["FLOAT", "FLOAT"]


def _vit_onnx(path: Path) -> Path:
    """A one-block vision transformer: LayerNorm, softmax attention, GELU MLP, mean pooling."""

    class Block(nn.Module):
        def __init__(self, width=16):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.mlp = nn.Sequential(nn.Linear(width, 32), nn.GELU(), nn.Linear(32, width))

        def forward(self, x):
            q, k, v = self.qkv(self.norm1(x)).chunk(3, -1)
            x = x + self.proj((q @ k.transpose(-2, -1) * 0.25).softmax(-1) @ v)
            return x + self.mlp(self.norm2(x))

    class Vit(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch, self.block, self.head = nn.Conv2d(3, 16, 4, 4), Block(), nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.block(self.patch(x).flatten(2).transpose(1, 2)).mean(1))

    torch.manual_seed(0)
    with warnings.catch_warnings():  # the legacy exporter's deprecation notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Vit().eval(),
            torch.zeros(1, 3, 16, 16),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path


KEPT_FP32 = ("LayerNormalization", "Softmax", "ReduceMean")


@pytest.mark.parametrize(("precision", "low"), [("fp16", "HALF"), ("bf16", "BF16")])
def test_trt11_vit_keeps_normalization_softmax_and_reductions_fp32(
    tmp_path, monkeypatch, precision, low
):
    """The build passes the fake's strong typing (no op with float inputs of two types), and
    the types it infers, independently of the code, are fp32 exactly where they must be."""
    onnx_path = _vit_onnx(tmp_path / "vit.onnx")
    original = onnx.load(str(onnx_path))
    assert {n.op_type for n in original.graph.node} >= set(KEPT_FP32)
    fake = _install(monkeypatch, "11.0.0")
    build_engine(onnx_path, tmp_path / "vit.engine", precision=precision)
    ((_, model),) = fake.parsed
    types, mixed = tensor_types(model)
    assert mixed == []
    inits = {init.name: init for init in model.graph.initializer}
    identities = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    checked = low_ops = 0
    for node in model.graph.node:
        floats = [types[i] for i in node.input if types.get(i) in ("FLOAT", "HALF", "BF16")]
        if node.op_type in KEPT_FP32:
            assert floats and set(floats) == {"FLOAT"}, node.name
            assert types[node.output[0]] == "FLOAT", node.name
            for name in node.input[1:]:  # LayerNorm scale and bias: kept fp32, never cast up
                while name in identities:  # the exporter shares equal weights through Identity
                    name = identities[name]
                assert name in inits and inits[name].data_type == TensorProto.FLOAT, name
            checked += 1
        elif node.op_type in ("Conv", "MatMul", "Gemm", "Erf", "Add") and floats:
            assert set(floats) == {low}, (node.name, floats)  # (integer Adds: shapes)
            low_ops += node.op_type in ("Conv", "MatMul", "Gemm")
    assert checked == 4  # two LayerNorms, the softmax, the mean over tokens
    assert low_ops == 8  # patch conv, qkv, q·k, ·v, proj, two MLP layers, head: none fp32
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert types["logits"] == "FLOAT"


def test_strong_typing_failure_carries_the_parsers_error(tmp_path, monkeypatch):
    """An op with fp16 and fp32 inputs is refused by a strongly typed network: one
    EngineBuildError with the parser's own error (the graph is fp32-declared: no cast)."""
    scale = numpy_helper.from_array(np.full((1, 4), 0.5, np.float16), "scale")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "scale"], ["output"], name="mixed_mul")],
        "mixed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [-1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [-1, 4])],
        [scale],
    )
    path = tmp_path / "mixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    _install(monkeypatch, "11.0.0")
    with pytest.raises(EngineBuildError, match=r"cannot parse .*mixed_mul and operator: Mul .*"
                       r"inputs of types FLOAT, HALF"):  # fmt: skip
        build_engine(path, tmp_path / "m.engine", precision="fp32")
    assert not (tmp_path / "m.engine").exists()


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


def _renamed_input(onnx_path: Path, tmp_path: Path, name: str) -> Path:
    """The ONNX file with its input renamed (exporters other than ours name it otherwise)."""
    model = onnx.load(str(onnx_path))
    old = model.graph.input[0].name
    model.graph.input[0].name = name
    for node in model.graph.node:
        for k, used in enumerate(node.input):
            if used == old:
                node.input[k] = name
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def test_profile_is_for_the_networks_own_input_name(trt, onnx_files, tmp_path):
    path = _renamed_input(onnx_files["dense"], tmp_path, "pixel_values")
    report = build_engine(path, tmp_path / "m.engine", batch=BatchProfile(1, 2, 4))
    assert trt.called("IOptimizationProfile.set_shape") == [
        ("pixel_values", (1, 8, 8, 8), (2, 8, 8, 8), (4, 8, 8, 8))
    ]
    (engine_input,) = engine_blob(report.engine_path)["inputs"]
    assert engine_input["name"] == "pixel_values" and engine_input["profile"][2] == [4, 8, 8, 8]


def test_an_input_name_the_network_lacks_lists_its_inputs(trt, onnx_files, tmp_path):
    path = _renamed_input(onnx_files["dense"], tmp_path, "pixel_values")
    build_engine(path, tmp_path / "a.engine", input_name="pixel_values")  # given and present
    with pytest.raises(
        EngineBuildError, match=r"^'input' is not an input of the network; its inputs: "
        r"'pixel_values'$"
    ):  # fmt: skip
        build_engine(path, tmp_path / "b.engine", input_name="input")
    assert not (tmp_path / "b.engine").exists()


def test_profile_failures_are_engine_build_errors(trt, onnx_files, tmp_path, monkeypatch):
    def refuse(self, *args):
        raise RuntimeError("Shape provided for min is inconsistent with other shapes.")

    monkeypatch.setattr(trt.IOptimizationProfile, "set_shape", refuse)
    with pytest.raises(
        EngineBuildError,
        match=r"refused the optimization profile \[\(1, 8, 8, 8\), .*'input': Shape provided "
        "for min is inconsistent",
    ):
        build_engine(onnx_files["dense"], tmp_path / "m.engine")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt.IBuilderConfig, "add_optimization_profile", lambda self, p: -1)
    with pytest.raises(EngineBuildError, match="refused the optimization profile"):
        build_engine(onnx_files["dense"], tmp_path / "m.engine")
    assert not trt.called("Builder.build_serialized_network")
    assert list(tmp_path.iterdir()) == []


def test_only_the_batch_may_be_dynamic(trt, onnx_files, tmp_path):
    model = onnx.load(str(onnx_files["dense"]))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineBuildError, match=r"shape \(-1, 8, -1, 8\): only the batch"):
        build_engine(path, tmp_path / "m.engine")


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


def test_missing_onnx_is_an_engine_build_error(trt, tmp_path):
    with pytest.raises(EngineBuildError, match=r"cannot read ONNX model .*missing\.onnx"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.engine")
    assert not trt.called("OnnxParser.parse_from_file") and list(tmp_path.iterdir()) == []


def test_failed_build_raises_and_writes_nothing(trt, onnx_files, tmp_path):
    trt.fail_build = True
    with pytest.raises(EngineBuildError) as caught:
        build_engine(onnx_files["dense"], tmp_path / "m.engine", timing_cache=tmp_path / "c")
    assert str(caught.value) == (
        f"TensorRT {trt.__version__} failed to build an engine: "
        "error: Network build failed (fake: nothing parsed or fail_build set)"
    )  # the builder's VERBOSE and INFO chatter is not in it
    assert list(tmp_path.iterdir()) == []


def test_logger_keeps_warnings_errors_and_the_sparsity_report_only(trt):
    log = BuildLog()
    logger = _collecting_logger(trt, log)
    severity = trt.ILogger.Severity
    logger.log(severity.VERBOSE, "(Sparsity) verbose detail")
    logger.log(severity.INFO, "[MemUsageChange] Init CUDA")
    logger.log(severity.INFO, "(Sparsity) Layers eligible for sparse math: /fc/Gemm")
    logger.log(severity.WARNING, "Weights converted to fp16")
    logger.log(severity.ERROR, "Network validation failed.")
    logger.log(severity.INTERNAL_ERROR, "Assertion failed")
    assert log.sparsity == ["(Sparsity) Layers eligible for sparse math: /fc/Gemm"]
    assert log.problems == [
        "warning: Weights converted to fp16",
        "error: Network validation failed.",
        "internal error: Assertion failed",
    ]
    assert log.explain() == " | ".join(log.problems)


def test_int64_weight_warning_of_trt86_does_not_fail_the_build(onnx_files, tmp_path, monkeypatch):
    """TensorRT 8.6 warns that it casts INT64 weights down: a warning, kept, not a failure."""
    fake = _install(monkeypatch, "8.6.1")
    model = onnx.load(str(onnx_files["dense"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, -1]), "shape_const"))
    path = tmp_path / "int64.onnx"
    onnx.save(model, str(path))
    report = build_engine(path, tmp_path / "m.engine")
    assert report.engine_path.is_file() and fake.called("Builder.build_serialized_network")


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
        reason = (
            f"no engine inspector in TensorRT {version}: "
            "'ICudaEngine' object has no attribute 'create_engine_inspector'"
        )
        assert report.layers_reason == reason
        assert report.sparse_24["unreported"] == [CONV, GEMM_SMALL, GEMM_BIG]
        assert report.sparse_24["sparse"] == [] and report.sparse_24["dense"] == []
        written = json.loads(engine_layers_path(engine).read_text())
        assert written["layers"] == [] and written["reason"] == reason
        assert json.loads(engine_info_path(engine).read_text())["layers_reason"] == reason


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
    opened = backends.open_tensorrt_engine(trt, engine)
    assert opened.inputs == ["input"] and opened.outputs == ["logits"]
    assert opened.batch_range == (2, 8)
    assert opened.input_dtype == opened.output_dtype == np.float32
    assert trt.called("Runtime.deserialize_cuda_engine") == [(engine.read_bytes(),)]
    assert trt.called("ICudaEngine.create_execution_context") == [()]
    assert trt.called("ICudaEngine.get_tensor_name") == [(0,), (1,)]
    assert trt.called("ICudaEngine.get_tensor_profile_shape") == [("input", 0)]


def test_bench_backend_runs_the_engine_loop(trt, onnx_files, tmp_path):
    """The runner's own loop (input shape, tensor addresses, execute, read back) against the
    fake, on host buffers: the fake engine writes sum(x[b]) + j at the output address."""
    engine = build_engine(
        onnx_files["dense"], tmp_path / "m.engine", batch=BatchProfile(2, 4, 8)
    ).engine_path
    prepared = backends.tensorrt_engine(engine, device="cpu")
    assert prepared.batch_range == (2, 8) and not prepared.cuda
    assert prepared.device == f"TensorRT {trt.__version__} (host buffers)"
    trt.calls.clear()
    for outside in (1, 9):  # refused before any engine call
        with pytest.raises(EngineProfileError, match=rf"batch {outside} is outside"):
            prepared.run(np.zeros((outside, 8, 8, 8), np.float32))
    assert trt.calls == []
    for batch in (4, 8, 2):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 8, 8)).astype(np.float32)
        got = prepared.run(x)
        assert got.shape == (batch, 10) and got.dtype == np.float32
        np.testing.assert_allclose(got, fake_outputs(x, (batch, 10)), rtol=1e-5)
    assert trt.called("IExecutionContext.set_input_shape") == [
        ("input", (b, 8, 8, 8)) for b in (4, 8, 2)
    ]
    addresses = trt.called("IExecutionContext.set_tensor_address")
    assert [name for name, _ in addresses] == ["input", "logits"] * 3
    assert all(address for _, address in addresses)
    assert trt.called("IExecutionContext.execute_async_v3") == [(0,)] * 3


def test_bench_backend_fails_clearly_when_the_engine_does_not_run(trt, onnx_files, tmp_path):
    engine = build_engine(onnx_files["dense"], tmp_path / "m.engine").engine_path
    prepared = backends.tensorrt_engine(engine, device="cpu")
    trt.IExecutionContext.execute_async_v3 = lambda self, stream: False
    with pytest.raises(RmtDeployError, match=r"TensorRT failed to run .*m\.engine at batch 1"):
        prepared.run(np.zeros((1, 8, 8, 8), np.float32))
    trt.IExecutionContext.set_input_shape = lambda self, name, shape: False
    with pytest.raises(RmtDeployError, match=r"refused input shape \(1, 8, 8, 8\)"):
        prepared.run(np.zeros((1, 8, 8, 8), np.float32))


def test_bench_backend_refuses_an_engine_of_another_version(onnx_files, tmp_path, monkeypatch):
    _install(monkeypatch, "10.3.0")
    engine = build_engine(onnx_files["dense"], tmp_path / "m.engine").engine_path
    _install(monkeypatch, "11.0.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(BackendUnavailable, match="11.0.0 cannot load .*rebuild it here"):
        prepare("tensorrt", None, None, engine=engine)
