"""ONNX export: parity in ONNX Runtime on real images, structure of compressed layers, failure."""

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.utils.data import TensorDataset

from rmt_deploy import DataConfig, compress_, load_model, plan
from rmt_deploy.data import eval_transform, load_image_dataset
from rmt_deploy.exporters import ExportMismatchError, export, verify_onnx
from rmt_deploy.layers import is_nm_sparse
from tests.families import FAMILIES

TIMM = list(FAMILIES.values())


@pytest.fixture(scope="module")
def cifar64(cifar_test):
    return load_image_dataset(
        cifar_test, eval_transform(DataConfig((3, 32, 32), crop_pct=1.0)), limit=64
    )


def conv_weights(path):
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return [inits[n.input[1]] for n in graph.node if n.op_type == "Conv" and n.input[1] in inits]


@pytest.mark.parametrize("variant", ["dense", "nm24", "lowrank"])
def test_resnet56_exports_with_parity(variant, resnet56, cifar64, tmp_path, assets):
    model = copy.deepcopy(resnet56)
    if variant == "nm24":
        compress_(model, plan(model, "nm24"))
    elif variant == "lowrank":
        compress_(model, plan(model, "lowrank", 0.3, data=cifar64, calib_images=64))
    artifact = export(model, tmp_path, (3, 32, 32), verify_data=cifar64, name=variant)
    assert artifact.parity.passed and artifact.parity.top1_agreement == 1.0
    assert artifact.parity.source == "real images" and artifact.parity.n_images == 64
    manifest = json.loads(artifact.manifest_path.read_text())
    assert manifest["files"]["model.onnx"]["bytes"] == artifact.onnx_path.stat().st_size
    assert manifest["input"]["shape"][0] == "batch" and manifest["opset"] == 17
    weights = conv_weights(artifact.onnx_path)
    if variant == "dense":
        assert len(weights) == 55
    if variant == "nm24":  # 2:4 exported as dense initializers that keep the pattern
        sparse = [w for w in weights if w.shape[1] % 4 == 0 and w.shape[2] == 3]
        assert len(sparse) == 54 and all(is_nm_sparse(torch.tensor(w)) for w in sparse)
    if variant == "lowrank":  # each factorized conv is two Conv nodes (k×k then 1×1)
        n_lowrank = sum(
            isinstance(m, nn.Module) and type(m).__name__ == "LowRankConv2d"
            for m in model.modules()
        )
        assert n_lowrank > 0 and len(weights) == 55 + n_lowrank
    # dynamic batch: a batch of 5 runs too
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((5, 3, 32, 32), np.float32)})[0].shape == (5, 10)


def test_external_data_past_the_protobuf_limit(tmp_path, monkeypatch):
    import rmt_deploy.exporters.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "_TWO_GB", 1000)  # pretend a 2 GB model
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 5))
    artifact = export(model, tmp_path, (3, 4, 4), n_verify=4, name="big")
    assert (tmp_path / "model.onnx.data").stat().st_size >= 48 * 32 * 4
    assert artifact.onnx_path.stat().st_size < 2000 and artifact.parity.passed
    manifest = json.loads(artifact.manifest_path.read_text())
    assert set(manifest["files"]) == {"model.onnx", "model.onnx.data"}


class Branchy(nn.Module):
    """A data-dependent branch the tracer freezes: ONNX then disagrees on half the inputs."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1)[:, :4]) * (1 if x.sum() > 0 else -1)


def test_mismatch_fails_and_leaves_no_model(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(
        torch.randn(32, 1, 2, 2) - torch.arange(32).reshape(32, 1, 1, 1) % 2 * 5,
        torch.zeros(32, dtype=torch.long),
    )
    with pytest.raises(ExportMismatchError, match="no model file was written"):
        export(Branchy(), tmp_path, (1, 2, 2), verify_data=data, n_verify=32, name="branchy")
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "manifest.json").exists()
    assert not list(tmp_path.glob(".export-*"))


@pytest.mark.parametrize("name", TIMM)
def test_timm_families_export(name, tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(4, 3, 224, 224), torch.zeros(4, dtype=torch.long))
    for variant in ("dense", "nm24", "lowrank"):
        model = load_model(name, num_classes=10)
        if variant == "nm24":
            compress_(model, plan(model, "nm24"))
        elif variant == "lowrank":
            compress_(
                model,
                plan(
                    model,
                    "lowrank",
                    0.3,
                    data=data,
                    calib_images=4,
                    batch_size=2,
                    filter_fn=lambda m, fqn: m.weight.numel() <= 300_000,
                ),
            )
        artifact = export(
            model,
            tmp_path / variant,
            (3, 224, 224),
            verify_data=data,
            n_verify=4,
            name=f"{name}-{variant}",
        )
        assert artifact.parity.passed, (variant, artifact.parity)


@pytest.mark.slow
def test_compressed_resnet56_agrees_on_all_test_images(resnet56, cifar_test, tmp_path, assets):
    model = copy.deepcopy(resnet56)
    compress_(model, plan(model, "seb", 0.5))
    artifact = export(model, tmp_path, (3, 32, 32), n_verify=8)
    test = load_image_dataset(cifar_test, eval_transform(DataConfig.from_model(resnet56)))
    report = verify_onnx(
        model,
        artifact.onnx_path,
        test,
        n_images=len(test),
        input_shape=(3, 32, 32),
        batch_size=500,
        min_agreement=0.999,
    )
    assert report.n_images == 10_000 and report.top1_agreement >= 0.999 and report.passed
