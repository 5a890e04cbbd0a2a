"""The TensorRT paths of the target kit (export/build_engine.py, export/run.py) against the fake
tensorrt and the fake cuda-python cudart of tests/fake_tensorrt.py: version handling, the
profile on the network's own input name, and every CUDA call checked."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from rmt_deploy.exporters import export
from tests.fake_tensorrt import engine_blob, fake_outputs, make_fake_cudart, make_fake_tensorrt

KIT = Path(__file__).resolve().parent.parent / "export"


def _kit(script: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"kit_{script[:-3]}", KIT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pixels_onnx(tmp_path_factory) -> Path:
    """A small classifier whose input is named "pixels" (not the "input" we export with)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10),
    )  # fmt: skip
    out = tmp_path_factory.mktemp("kit_trt")
    onnx_path = export(model, out, (8, 8, 8), n_verify=2).onnx_path
    graph = onnx.load(str(onnx_path))
    graph.graph.input[0].name = "pixels"
    for node in graph.graph.node:
        node.input[:] = ["pixels" if name == "input" else name for name in node.input]
    path = out / "pixels.onnx"
    onnx.save(graph, str(path))
    return path


def _install(monkeypatch, version: str):
    fake = make_fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def _build(onnx_path: Path, out: Path, *extra: str) -> None:
    assert _kit("build_engine.py").main([str(onnx_path), "--out", str(out), *extra]) == 0


@pytest.mark.parametrize(
    ("version", "precision", "network_flags", "flags"),
    [
        ("8.6.1", "fp16", ["EXPLICIT_BATCH"], ["FP16", "SPARSE_WEIGHTS"]),
        ("10.3.0", "bf16", [], ["BF16", "SPARSE_WEIGHTS"]),
        ("11.0.0", "fp32", ["STRONGLY_TYPED"], ["SPARSE_WEIGHTS"]),
    ],
)
def test_kit_builds_on_each_version(
    pixels_onnx, tmp_path, monkeypatch, capsys, version, precision, network_flags, flags
):
    fake = _install(monkeypatch, version)
    engine = tmp_path / "m.engine"
    _build(pixels_onnx, engine, "--precision", precision, "--batch", "1:2:4")
    ((mask,),) = fake.called("Builder.create_network")
    assert fake.network_flag_names(mask) == network_flags
    assert [flag.name for (flag,) in fake.called("IBuilderConfig.set_flag")] == flags
    assert fake.called("IOptimizationProfile.set_shape") == [
        ("pixels", (1, 8, 8, 8), (2, 8, 8, 8), (4, 8, 8, 8))
    ]
    blob = engine_blob(engine)
    assert blob["fake_tensorrt"] == version and blob["inputs"][0]["name"] == "pixels"
    assert f"wrote {engine} (TensorRT {version}, {precision}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("version", "precision", "message"),
    [
        ("8.5.3", "fp16", "TensorRT 8.5.3 is too old: this kit needs TensorRT 8.6 or newer"),
        ("8.6.1", "bf16", "has no BuilderFlag.BF16: bf16 engines need TensorRT 9.0 or newer"),
        ("11.0.0", "fp16", "TensorRT ≥ 11 builds strongly typed networks only"),
    ],
)
def test_kit_refuses_what_the_version_cannot_build(
    pixels_onnx, tmp_path, monkeypatch, version, precision, message
):
    fake = _install(monkeypatch, "8.6.1" if version.startswith("8.") else version)
    fake.__version__ = version
    with pytest.raises(SystemExit, match=f"^error: .*{message}"):
        _build(pixels_onnx, tmp_path / "m.engine", "--precision", precision)
    assert not fake.called("Builder") and list(tmp_path.iterdir()) == []


def test_kit_build_failure_says_why(pixels_onnx, tmp_path, monkeypatch, capsys):
    fake = _install(monkeypatch, "10.3.0")
    fake.fail_build = True
    with pytest.raises(SystemExit) as caught:
        _build(pixels_onnx, tmp_path / "m.engine")
    assert str(caught.value) == (
        "error: engine build failed: Network build failed (fake: nothing parsed or fail_build set)"
    )
    err = capsys.readouterr().err  # warnings and errors printed, VERBOSE/INFO chatter not
    assert "[TRT] Network build failed" in err and "tactic timing" not in err
    assert list(tmp_path.iterdir()) == []


def test_kit_profile_refusal_is_a_clear_error(pixels_onnx, tmp_path, monkeypatch):
    fake = _install(monkeypatch, "10.3.0")

    def refuse(self, *args):
        raise RuntimeError("Shape provided for min is inconsistent with other shapes.")

    monkeypatch.setattr(fake.IOptimizationProfile, "set_shape", refuse)
    with pytest.raises(SystemExit, match="refused the profile .* 'pixels': Shape provided"):
        _build(pixels_onnx, tmp_path / "m.engine")


@pytest.fixture
def engine_and_cudart(pixels_onnx, tmp_path, monkeypatch):
    """A fake engine (profile 1..4) and the fake cudart installed as cuda.bindings.runtime."""
    _install(monkeypatch, "10.3.0")
    engine = tmp_path / "m.engine"
    _build(pixels_onnx, engine, "--batch", "1:2:4")
    cudart = make_fake_cudart()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, module in (("cuda", cuda), ("cuda.bindings", bindings)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    return engine, cudart


def test_kit_runner_runs_the_engine_through_cuda_buffers(engine_and_cudart):
    engine, cudart = engine_and_cudart
    runner = _kit("run.py").TrtRunner(engine)
    for batch in (2, 4, 1):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(runner(x), fake_outputs(x, (batch, 10)), rtol=1e-5)
    # the buffers grow once (batch 4 after 2), and are freed when they do
    assert cudart.calls.count("cudaMalloc") == 4 and cudart.calls.count("cudaFree") == 2
    assert cudart.calls.count("cudaMemcpyAsync") == 6
    assert cudart.calls.count("cudaStreamSynchronize") == 3


@pytest.mark.parametrize(
    ("call", "code"),
    [
        ("cudaStreamCreate", "cudaErrorInvalidValue (1)"),
        ("cudaMalloc", "cudaErrorMemoryAllocation (2)"),
        ("cudaMemcpyAsync", "cudaErrorInvalidValue (1)"),
        ("cudaStreamSynchronize", "cudaErrorInvalidValue (1)"),
    ],
)
def test_kit_runner_checks_every_cuda_call(engine_and_cudart, call, code):
    engine, cudart = engine_and_cudart
    cudart.fail[call] = 2 if call == "cudaMalloc" else 1
    kit = _kit("run.py")
    with pytest.raises(kit.CudaError, match=re.escape(f"CUDA {call} failed: {code}")):
        kit.TrtRunner(engine)(np.zeros((2, 8, 8, 8), np.float32))


def test_kit_run_reports_a_cuda_failure_as_one_line(engine_and_cudart, tmp_path, monkeypatch):
    engine, cudart = engine_and_cudart
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"preprocessing": {"input_size": [8, 8, 8]}}))
    argv = ["run.py", "--engine", str(engine), "--manifest", str(manifest), "--batch", "2"]
    result = tmp_path / "run.json"
    monkeypatch.setattr(sys, "argv", [*argv, "--warmup-seconds", "0", "--iterations", "3",
                                      "--json", str(result)])  # fmt: skip
    assert _kit("run.py").main() == 0
    data = json.loads(result.read_text())
    assert data["runs"] == 3 and data["runtime"] == "TensorRT 10.3.0" and data["batch"] == 2
    cudart.fail["cudaMalloc"] = 2
    with pytest.raises(SystemExit) as caught:
        _kit("run.py").main()
    assert str(caught.value) == "error: CUDA cudaMalloc failed: cudaErrorMemoryAllocation (2)"
