"""Model loading: CIFAR ResNets with real checkpoints, timm, user callables, bad checkpoints."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rmt_deploy import load_model
from rmt_deploy.errors import CheckpointError, NonFiniteWeightsError, UnknownModelError
from rmt_deploy.models import CifarResNet, DataConfig, read_state_dict


def make_user_model() -> nn.Module:
    """A user's own module, reached as tests.test_models:make_user_model."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 4))


@pytest.mark.parametrize(("depth", "params"), [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85)])
def test_cifar_resnet_sizes_match_the_paper(depth, params):
    # He et al. 2016, Table 6: 0.27M / 0.46M / 0.66M / 0.85M parameters.
    count = sum(p.numel() for p in CifarResNet(depth).parameters()) / 1e6
    assert count == pytest.approx(params, abs=0.01)


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_real_checkpoints_load(assets, depth):
    model = load_model(f"cifar_resnet{depth}", assets=assets)
    assert not model.training
    out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)
    cfg = DataConfig.from_model(model)
    assert cfg.input_size == (3, 32, 32) and cfg.crop_pct == 1.0


def test_random_init_differs_from_pretrained(assets):
    pretrained = load_model("cifar_resnet20", assets=assets)
    random = load_model("cifar_resnet20", pretrained=False)
    assert not torch.equal(pretrained.conv1.weight, random.conv1.weight)


def test_timm_model_and_local_checkpoint(tmp_path):
    model = load_model("resnet18", num_classes=7)
    path = tmp_path / "r18.safetensors"
    save_file(model.state_dict(), str(path))
    again = load_model("resnet18", path, num_classes=7)
    assert torch.equal(again.fc.weight, model.fc.weight)
    torch.save({"model": model.state_dict()}, tmp_path / "r18.pth")
    third = load_model("resnet18", tmp_path / "r18.pth", num_classes=7)
    assert torch.equal(third.conv1.weight, model.conv1.weight)


def test_user_callable():
    model = load_model("tests.test_models:make_user_model")
    assert isinstance(model, nn.Sequential) and model(torch.zeros(1, 3, 8, 8)).shape == (1, 4)


def test_unknown_names():
    with pytest.raises(UnknownModelError, match="did you mean.*vit_tiny_patch16_224"):
        load_model("vit_tiny_patch16_22")
    with pytest.raises(UnknownModelError, match="depths"):
        load_model("cifar_resnet18")
    with pytest.raises(UnknownModelError, match="cannot import"):
        load_model("no_such_pkg.mod:fn")
    with pytest.raises(UnknownModelError, match="not an nn.Module"):
        load_model("os:getcwd")


def test_prefix_stripping_and_wrapper(tmp_path):
    model = CifarResNet(20)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"best_prec1": 90.0, "state_dict": state}, tmp_path / "ck.th")
    assert set(read_state_dict(tmp_path / "ck.th")) == set(model.state_dict())


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model("cifar_resnet20", tmp_path / "nope.th")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model("cifar_resnet20", corrupt)
    bad_st = tmp_path / "corrupt.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model("cifar_resnet20", bad_st)
    other = tmp_path / "r32.pth"
    torch.save(CifarResNet(32).state_dict(), other)
    with pytest.raises(CheckpointError, match="does not match the model: .*unexpected"):
        load_model("cifar_resnet20", other)
    wide = CifarResNet(20, num_classes=100)
    torch.save(wide.state_dict(), tmp_path / "c100.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape \(linear.weight"):
        load_model("cifar_resnet20", tmp_path / "c100.pth")


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": nn.Linear(1, 1)}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(path)


def test_nan_checkpoint(tmp_path):
    state = CifarResNet(20).state_dict()
    state["layer2.1.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(NonFiniteWeightsError, match="layer2.1.conv1.weight"):
        load_model("cifar_resnet20", tmp_path / "nan.pth")


def test_cifar_vit_ships_trained_weights(cifar_test, monkeypatch):
    """The ViT trained by benchmarks/train_vit.py: ~2.7 M parameters, real accuracy."""
    import json
    from pathlib import Path

    from rmt_deploy.data import eval_transform, load_image_dataset
    from rmt_deploy.errors import CheckpointError
    from rmt_deploy.evaluate import evaluate
    from rmt_deploy.models import DataConfig
    from rmt_deploy.models import cifar_vit as vit_module

    model = load_model("cifar_vit_tiny")
    assert 2.6e6 < sum(p.numel() for p in model.parameters()) < 2.8e6
    data = load_image_dataset(cifar_test, eval_transform(DataConfig.from_model(model)), 500)
    recorded = json.loads(
        (Path(__file__).resolve().parents[1] / "benchmarks/results/train_vit.json").read_text()
    )["test_top1"]
    top1 = evaluate(model, data, progress=False).top1
    assert abs(top1 - recorded) < 5  # 500 of the 10,000 images the recorded figure used
    untrained = load_model("cifar_vit_tiny", pretrained=False)
    assert evaluate(untrained, data, progress=False).top1 < 20
    import rmt_deploy.models as models_module

    monkeypatch.setattr(models_module, "VIT_CHECKPOINT", Path("/nonexistent/vit.safetensors"))
    with pytest.raises(CheckpointError, match="train it with benchmarks/train_vit.py"):
        load_model("cifar_vit_tiny")
    assert vit_module.VIT_CHECKPOINT.name == "cifar_vit_tiny.safetensors"
