"""Image datasets from folders: class sub-folders (CIFAR-10) or a labels.csv (ImageNet sample).

The transform follows the model's DataConfig: resize to size/crop_pct, center-crop to size,
normalize. For the CIFAR ResNets (32×32, crop_pct 1) this is a no-op resize, i.e. the raw
pixels scaled to [0, 1] and normalized, as the checkpoints expect.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from .errors import DataError
from .models import DataConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")


def eval_transform(config: DataConfig) -> transforms.Compose:
    _, height, width = config.input_size
    scale = math.floor(min(height, width) / config.crop_pct)
    interpolation = transforms.InterpolationMode(config.interpolation)
    return transforms.Compose(
        [
            transforms.Resize(scale, interpolation=interpolation),
            transforms.CenterCrop((height, width)),
            transforms.ToTensor(),
            transforms.Normalize(config.mean, config.std),
        ]
    )


def train_transform(config: DataConfig) -> transforms.Compose:
    """Light augmentation for recovery fine-tuning: pad-and-crop + flip at 32×32 (the CIFAR
    recipe of He et al.), random-resized crop + flip otherwise."""
    _, height, width = config.input_size
    if config.crop_pct >= 1.0 and max(height, width) <= 64:
        geometry = [transforms.RandomCrop((height, width), padding=4)]
    else:
        interpolation = transforms.InterpolationMode(config.interpolation)
        geometry = [transforms.RandomResizedCrop((height, width), interpolation=interpolation)]
    return transforms.Compose(
        [
            *geometry,
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(config.mean, config.std),
        ]
    )


def take_images(loader, max_images: int):
    """Yield the image batches of `loader` until `max_images` images in all (last one cut)."""
    seen = 0
    for images, _labels in loader:
        images = images[: max_images - seen]
        yield images
        seen += len(images)
        if seen >= max_images:
            return


class LabeledImages(Dataset):
    """A list of (image path, class index) pairs; the common form of both folder layouts."""

    def __init__(
        self, samples: list[tuple[Path, int]], classes: list[str], root: Path, transform=None
    ):
        self.samples = samples
        self.classes = classes
        self.root = root
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except OSError as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc
        return (self.transform(image) if self.transform else image), label


def load_image_dataset(
    path: str | os.PathLike[str], transform=None, limit: int | None = None
) -> LabeledImages:
    """Open `path` as an image dataset: a `labels.csv` (file,label) or one sub-folder per class.

    With `limit`, keep an evenly spaced subset of that many images (every class represented
    when the folder is sorted by class), so quick runs are not biased to the first classes.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    if (root / "labels.csv").is_file():
        dataset = _from_csv(root, transform)
    else:
        dataset = _from_class_folders(root, transform)
    if limit is not None and limit <= 0:
        raise DataError(f"--limit must be positive, got {limit}")
    return evenly_spaced(dataset, limit)


def evenly_spaced(dataset: LabeledImages, count: int | None) -> LabeledImages:
    """`dataset` cut to `count` evenly spaced samples (all of it when count is None or not
    smaller): in a folder sorted by class, every class stays represented."""
    if count is not None and count <= 0:
        dataset.samples = []
    elif count is not None and count < len(dataset.samples):
        step = len(dataset.samples) / count
        dataset.samples = [dataset.samples[int(i * step)] for i in range(count)]
    return dataset


def _from_class_folders(root: Path, transform) -> LabeledImages:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        samples += [(f, index) for f in files]
    if not samples:
        hint = ""
        if {"train", "test"} <= set(classes):
            hint = f" (it holds train/ and test/: point at {root / 'test'} or {root / 'train'})"
        raise DataError(
            f"{root} is not an image folder: expected one sub-folder of images per class "
            f"(e.g. test/airplane/0000.jpg) or a labels.csv{hint}"
        )
    return LabeledImages(samples, classes, root, transform)


def _from_csv(root: Path, transform) -> LabeledImages:
    samples: list[tuple[Path, int]] = []
    try:
        with open(root / "labels.csv", newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
                raise DataError(f"{root / 'labels.csv'} must have the columns file,label")
            for row in reader:
                samples.append((root / row["file"], int(row["label"])))
    except ValueError as exc:
        raise DataError(f"{root / 'labels.csv'}: labels must be integers ({exc})") from exc
    missing = [str(p) for p, _ in samples if not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} images listed in labels.csv are missing, e.g. {missing[0]}"
        )
    if not samples:
        raise DataError(f"{root / 'labels.csv'} lists no images")
    classes = _class_names(root, max(label for _, label in samples) + 1)
    return LabeledImages(samples, classes, root, transform)


def _class_names(root: Path, count: int) -> list[str]:
    words = root / "synset_words.txt"
    if words.is_file():
        names = [line.split(" ", 1)[-1].strip() for line in words.read_text().splitlines() if line]
        if len(names) >= count:
            return names
    return [str(i) for i in range(count)]
