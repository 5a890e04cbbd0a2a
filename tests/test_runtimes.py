"""One runtime registry: a new runtime family is one class in one file, and the planner's
deployments, `targets: auto` resolution, the benchmark's backends and availability all see it."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from rmt_deploy.deploy import DEPLOYMENTS, DeploymentError, resolve
from rmt_deploy.runtimes import (
    BACKENDS,
    RUNTIMES,
    BackendUnavailable,
    Deployment,
    Prepared,
    Runtime,
    Variant,
    prepare,
    register_runtime,
    registry,
)


@pytest.fixture
def toy_runtime():
    """A runtime registered for one test, and taken out of the registry after it."""
    before = {
        name: dict(getattr(registry, name)) for name in ("RUNTIMES", "DEPLOYMENTS", "BACKENDS")
    }

    class Toy(Runtime):
        family = "toy"
        deployments = (Deployment("toy-int4", "toy", "int4", "cpu", "onnx", "Toy INT4"),)
        extra_backends = ("toy-debug",)

        def unavailable(self, deployment):
            return "toy kernels need a toy CPU"

        def prepare(self, backend, variant, options):
            scale = 2.0 if backend == "toy-debug" else 1.0
            return Prepared(lambda b: b.sum(axis=(1, 2, 3))[:, None] * scale, backend, 1)

    register_runtime(Toy)
    yield Toy
    for name, saved in before.items():
        table = getattr(registry, name)
        table.clear()
        table.update(saved)


def test_the_families_and_their_deployments():
    assert set(RUNTIMES) == {"onnxruntime", "openvino", "torch", "tensorrt"}
    by_family = {d.name: d.runtime for d in DEPLOYMENTS.values()}
    assert by_family["openvino-nncf-int8"] == "openvino" and by_family["tensorrt"] == "tensorrt"
    assert DEPLOYMENTS["onnxruntime-int8"].artifact == "onnx_int8"
    assert DEPLOYMENTS["openvino-nncf-int8"].artifact == "openvino_int8"
    # benchmark-only backends run, but are not deployments the planner plans for
    assert {"torch-compile", "onnxruntime-cuda"} <= set(BACKENDS) - set(DEPLOYMENTS)


def test_a_new_runtime_is_one_registration(toy_runtime):
    assert registry.DEPLOYMENTS["toy-int4"].runtime == "toy"
    run = prepare("toy-debug", None, None).run
    assert run(np.ones((2, 3, 4, 4), np.float32)).tolist() == [[96.0], [96.0]]
    assert prepare("toy-int4", None, None).device == "toy-int4"
    # named explicitly where it cannot run: refused with the runtime's own reason
    with pytest.raises(DeploymentError, match="toy-int4 cannot run here: toy kernels need a toy"):
        resolve(["toy-int4"])


def test_a_name_taken_twice_is_refused(toy_runtime):
    class Clash(Runtime):
        family = "clash"
        deployments = (Deployment("toy-int4", "clash", "int4", "cpu", "onnx"),)

    with pytest.raises(ValueError, match="already registered \\(toy-int4\\)"):
        register_runtime(Clash)


def test_unknown_backend_and_missing_files_say_what_is_needed(tmp_path):
    with pytest.raises(Exception, match="unknown backend 'tflite'; available: onnxruntime"):
        prepare("tflite", None, None)
    with pytest.raises(BackendUnavailable, match="backend onnxruntime-int8 needs the INT8 model"):
        prepare("onnxruntime-int8", None, tmp_path / "model.onnx")
    with pytest.raises(BackendUnavailable, match="backend torch needs the PyTorch model"):
        prepare("torch", None, None)
    with pytest.raises(BackendUnavailable, match="openvino-nncf-int8 needs the NNCF INT8 model"):
        prepare("openvino-nncf-int8", None, None, openvino_int8=tmp_path / "absent.xml")


def test_the_torch_runtime_times_a_layer_as_a_module(tmp_path):
    """PyTorch layers are timed as modules (no ONNX file written); ONNX runtimes export one."""
    layer = nn.Linear(8, 4)
    run = RUNTIMES["torch"].layer_runner(DEPLOYMENTS["torch"], layer, (2, 8), tmp_path, "t", 1)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    expected = x @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
    assert np.allclose(run(x), expected, atol=1e-5) and not list(tmp_path.iterdir())
    pytest.importorskip("onnxruntime")
    ort = RUNTIMES["onnxruntime"].layer_runner(
        DEPLOYMENTS["onnxruntime"], layer, (2, 8), tmp_path, "t", 1
    )
    assert np.allclose(ort(x), expected, atol=1e-5) and (tmp_path / "t.onnx").is_file()


def test_variant_artifacts_by_deployment():
    v = Variant(onnx="m.onnx", onnx_int8="m.int8.onnx")
    assert [v.artifact(DEPLOYMENTS[n].artifact) for n in ("openvino", "openvino-int8")] == [
        "m.onnx",
        "m.int8.onnx",
    ]
