"""Image folders, the ImageNet sample, and top-1 on the real CIFAR-10 test set."""

import pytest
import torch
from torch import nn

from rmt_deploy import DataConfig, evaluate
from rmt_deploy.data import eval_transform, load_image_dataset
from rmt_deploy.errors import DataError

CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def test_cifar_folder(cifar_test):
    config = DataConfig(input_size=(3, 32, 32), crop_pct=1.0)
    dataset = load_image_dataset(cifar_test, eval_transform(config))
    assert len(dataset) == 10_000 and dataset.classes == CIFAR_CLASSES
    image, label = dataset[0]
    assert image.shape == (3, 32, 32) and label == 0
    subset = load_image_dataset(cifar_test, limit=100)
    assert len(subset) == 100
    assert {label for _, label in subset.samples} == set(range(10))  # spread over all classes


def test_imagenet_sample(imagenet_sample):
    dataset = load_image_dataset(imagenet_sample, eval_transform(DataConfig()))
    assert len(dataset) == 1300 and len(dataset.classes) == 1000
    assert dataset.classes[0].startswith("tench")
    image, label = dataset[0]
    assert image.shape == (3, 224, 224) and 0 <= label < 1000


def test_not_an_image_folder(tmp_path, assets):
    with pytest.raises(DataError, match="not found"):
        load_image_dataset(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not an image folder"):
        load_image_dataset(tmp_path)
    with pytest.raises(DataError, match="point at .*test"):
        load_image_dataset(assets / "cifar10")


def test_broken_labels_csv(tmp_path):
    (tmp_path / "labels.csv").write_text("file,label\nimages/a.jpg,cat\n")
    with pytest.raises(DataError, match="integers"):
        load_image_dataset(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label\nimages/a.jpg,3\n")
    with pytest.raises(DataError, match="missing"):
        load_image_dataset(tmp_path)


def test_labels_beyond_model_outputs(imagenet_sample):
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))
    dataset = load_image_dataset(imagenet_sample, eval_transform(DataConfig()), limit=50)
    with pytest.raises(DataError, match="10 outputs but the data has label"):
        evaluate(model, dataset, batch_size=50, progress=False)


@pytest.mark.slow
def test_resnet56_top1_matches_independent_measurement(resnet56, cifar_test):
    # The assets README measured 83.2 % on all 10,000 JPEG test images.
    dataset = load_image_dataset(cifar_test, eval_transform(DataConfig.from_model(resnet56)))
    torch.manual_seed(0)
    result = evaluate(resnet56, dataset, batch_size=500, progress=False)
    assert result.n_images == 10_000
    assert result.top1 == pytest.approx(83.2, abs=0.05)
