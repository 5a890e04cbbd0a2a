"""Image datasets from folders — class sub-folders (CIFAR-10), a labels.csv (ImageNet sample) or
just images (unlabelled) — or from a user's DataLoader, and their split into disjoint parts.

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
from torch.utils.data import Dataset, Subset
from torchvision import transforms

from .errors import DataError
from .models import DataConfig
from .paths import path_problem

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


UNLABELLED = -1  # the label of an image that has none


class LabeledImages(Dataset):
    """A list of (image path, class index) pairs; the common form of every folder layout
    (an unlabelled folder gives every image the label −1)."""

    def __init__(
        self, samples: list[tuple[Path, int]], classes: list[str], root: Path, transform=None
    ):
        self.samples = samples
        self.classes = classes
        self.root = root
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labelled(self) -> bool:
        return all(label >= 0 for _, label in self.samples)

    def names(self) -> list[str]:
        """Each sample's path relative to the folder (what a report can list)."""
        return [str(Path(path).relative_to(self.root)) for path, _ in self.samples]

    def subset(self, indices: list[int]) -> LabeledImages:
        return LabeledImages(
            [self.samples[i] for i in indices], self.classes, self.root, self.transform
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, bomb errors
            raise DataError(_unreadable(path, exc)) from exc
        return (self.transform(image) if self.transform else image), label


def _unreadable(path: Path, exc: BaseException) -> str:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{path} is not a readable image ({reason}): replace or remove the file"


def _image_problem(path: Path, decode: bool) -> str | None:
    """Why `path` cannot be read as an image (None when it can). Opening reads the header
    (an empty file or one that is no image fails there); a JPEG cut short opens and fails
    only when decoded, so `decode` reads the pixels too."""
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            else:
                img.verify()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, bomb errors
        return _unreadable(path, exc)
    return None


def check_images(dataset, where: str, *, decode: bool = True) -> int:
    """Open every image file of `dataset` (a folder's LabeledImages; a loader's tensors have
    no files) before any stage reads it, so that a corrupt or empty file is a one-line
    DataError naming it and the key it came from, not a failure stages later. With `decode`
    the pixels are read too (CIFAR-10's 10,000 test JPEGs: 0.5 to 0.9 s on 2 cores; without,
    its 50,000 training JPEGs: 1.4 to 1.8 s). Returns the number of files checked."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return 0
    for path, _ in samples:  # one by one: threads were slower (the GIL around the opens)
        problem = _image_problem(path, decode)
        if problem is not None:
            raise DataError(f"{where}: {problem}")
    return len(samples)


def load_image_dataset(
    path: str | os.PathLike[str],
    transform=None,
    limit: int | None = None,
    *,
    classes: list[str] | tuple[str, ...] | None = None,
    num_outputs: int | None = None,
) -> LabeledImages:
    """Open `path` as an image dataset: a `labels.csv` (file,label), one sub-folder per class,
    or a folder of images without labels (each labelled −1: fidelity budgets need no labels).

    Class sub-folders are labelled by name when the reference class list `classes` is known (a
    model's `label_names`, the training folder's classes), so a test folder holding only some
    classes still gets the model's indices; without it they are labelled by sorted position,
    which is right only for the full set, so a folder with fewer class sub-folders than the
    model's `num_outputs` is refused. Labels in a labels.csv must lie in [0, number of classes).

    With `limit`, keep an evenly spaced subset of that many images (every class represented
    when the folder is sorted by class), so quick runs are not biased to the first classes.
    """
    root = Path(path)
    problem = path_problem(root)
    if problem:
        raise DataError(f"data folder {root}: {problem}")
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    if limit is not None and limit <= 0:
        raise DataError(f"--limit must be positive, got {limit}")
    count = len(classes) if classes else num_outputs
    if (root / "labels.csv").is_file():
        dataset = _from_csv(root, transform, count)
    elif _images_in(root) and not any(_images_in(d) for d in _subfolders(root)):
        dataset = LabeledImages([(f, UNLABELLED) for f in _images_in(root)], [], root, transform)
    else:
        dataset = _from_class_folders(root, transform, classes, num_outputs)
    return evenly_spaced(dataset, limit)


def class_folders(path: str | os.PathLike[str]) -> list[str] | None:
    """The class sub-folder names of an image folder labelled by sub-folders (sorted), or None
    for a labels.csv folder, an unlabelled folder or a missing one: the reference classes a
    test folder's sub-folders are matched against."""
    root = Path(path)
    if path_problem(root) or not root.is_dir() or (root / "labels.csv").is_file():
        return None
    if _images_in(root) and not any(_images_in(d) for d in _subfolders(root)):
        return None
    return [d.name for d in _subfolders(root)] or None


def model_label_names(model) -> list[str] | None:
    """The class names a model's outputs stand for (`pretrained_cfg["label_names"]`, timm's
    key), or None when it does not say — or says it for another head (a timm model created
    with its own `num_classes` keeps the pretrained config's names)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("label_names") if isinstance(cfg, dict) else None
    if not names:
        return None
    head = getattr(model, "num_classes", None)
    if isinstance(head, int) and head != len(names):
        return None
    return [str(n) for n in names]


def model_num_outputs(model, input_size: tuple[int, ...]) -> int | None:
    """How many class scores the model returns: its `num_classes` (the head it has), else its
    pretrained config's, else the width of its output on one blank image; None when the output
    is not N×K scores (a backbone)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    declared = getattr(model, "num_classes", None)
    if not isinstance(declared, int) and isinstance(cfg, dict):
        declared = cfg.get("num_classes")
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared if declared > 0 else None  # 0: no classifier
    try:
        with torch.inference_mode():
            out = model.eval()(torch.zeros(1, *input_size))
    except Exception:  # the caller's own forward reports a model that fails, with context
        return None
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def evenly_spaced(dataset, count: int | None):
    """A subset of `count` evenly spaced samples (all of them when count is None or not
    smaller): in a folder sorted by class, every class stays represented."""
    if count is None or count >= len(dataset):
        return dataset
    step = len(dataset) / count if count > 0 else 0
    indices = [int(i * step) for i in range(max(count, 0))]
    if hasattr(dataset, "subset"):
        return dataset.subset(indices)
    return Subset(dataset, indices)  # any other Dataset (a user's, a Subset)


def _subfolders(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _from_class_folders(
    root: Path, transform, classes=None, num_outputs: int | None = None
) -> LabeledImages:
    names = [d.name for d in _subfolders(root)]
    found = {name: _images_in(root / name) for name in names}
    if not any(found.values()):
        hint = ""
        if {"train", "test"} <= set(names):
            hint = f" (it holds train/ and test/: point at {root / 'test'} or {root / 'train'})"
        raise DataError(
            f"{root} is not an image folder: expected one sub-folder of images per class "
            f"(e.g. test/airplane/0000.jpg), a labels.csv, or images (unlabelled){hint}"
        )
    reference, index = class_index(
        [n for n in names if found[n]] if classes else names, classes, num_outputs, str(root)
    )
    samples: list[tuple[Path, int]] = []
    for name in names:
        samples += [(f, index[name]) for f in found[name]]
    return LabeledImages(samples, reference, root, transform)


def class_index(
    names: list[str], classes=None, num_outputs: int | None = None, where: str = "the folder"
) -> tuple[list[str], dict[str, int]]:
    """(class list, folder name → label) for class sub-folders `names` (sorted).

    With a reference list `classes`, folders are labelled by name; a folder whose name is not
    in it is refused, unless no name is (another naming scheme, e.g. 0…9), where the folders
    are labelled by position if there are exactly as many. Without one they are labelled by
    position, refused when there are fewer folders than `num_outputs`: which output each
    folder stands for cannot be known, and position would shift every label after a gap."""
    if classes:
        reference = [str(c) for c in classes]
        known = {name: i for i, name in enumerate(reference)}
        unknown = [name for name in names if name not in known]
        if len(unknown) < len(names):
            if unknown:
                shown = ", ".join(reference[:12]) + (", …" if len(reference) > 12 else "")
                plural = len(unknown) > 1
                raise DataError(
                    f"{where}: class folder{'s' if plural else ''} {', '.join(unknown[:5])} "
                    f"{'are' if plural else 'is'} not among the model's {len(reference)} classes "
                    f"({shown}): rename {'them' if plural else 'it'} to the class held, or give "
                    "a labels.csv"
                )
            return reference, {name: known[name] for name in names}
        num_outputs = len(reference)
    if num_outputs is not None and len(names) != num_outputs:
        raise DataError(
            f"{where} has {len(names)} class sub-folders but the model has {num_outputs} "
            "outputs, and no class list says which output each folder is: labelling the folders "
            "by position would be wrong; give the full folder (one sub-folder per class) or a "
            "labels.csv (file,label)"
        )
    return list(names), {name: i for i, name in enumerate(names)}


def _from_csv(root: Path, transform, num_classes: int | None = None) -> LabeledImages:
    path = root / "labels.csv"
    samples: list[tuple[Path, int]] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path} must have the columns file,label")
        for row in reader:
            where = f"{path} line {reader.line_num}"
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                raise DataError(
                    f"{where}: labels must be integers (class indices), got {row['label']!r}"
                ) from None
            if label < 0 or (num_classes is not None and label >= num_classes):
                valid = f"0 … {num_classes - 1}" if num_classes is not None else "≥ 0"
                raise DataError(
                    f"{where}: label {label} is not a class index ({valid}): fix the row or "
                    "drop the image"
                )
            samples.append((root / (row["file"] or ""), label))
    missing = [str(p) for p, _ in samples if not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} images listed in labels.csv are missing, e.g. {missing[0]}"
        )
    if not samples:
        raise DataError(f"{path} lists no images")
    classes = _class_names(root, max(label for _, label in samples) + 1)
    return LabeledImages(samples, classes, root, transform)


def _class_names(root: Path, count: int) -> list[str]:
    words = root / "synset_words.txt"
    if words.is_file():
        names = [line.split(" ", 1)[-1].strip() for line in words.read_text().splitlines() if line]
        if len(names) >= count:
            return names
    return [str(i) for i in range(count)]


class TensorImages(Dataset):
    """Images already in memory (from a user's DataLoader), labels −1 where there are none;
    `ids` name each image by its position in the loader."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ids: list[str]):
        self.images, self.labels, self.ids = images, labels, ids

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).all())

    def names(self) -> list[str]:
        return list(self.ids)

    def subset(self, indices: list[int]) -> TensorImages:
        index = torch.as_tensor(indices, dtype=torch.long)
        return TensorImages(self.images[index], self.labels[index], [self.ids[i] for i in indices])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def _batch_parts(batch, spec: str, input_shape: tuple[int, ...]):
    """(images, labels or None) of one batch from the user's loader, or a DataError."""
    if isinstance(batch, torch.Tensor):
        images, labels = batch, None
    elif isinstance(batch, list | tuple) and len(batch) == 2:
        images, labels = batch
    else:
        raise DataError(
            f"data.loader {spec} yields {type(batch).__name__}s: each batch must be an image "
            "tensor N×C×H×W or a pair (images, labels)"
        )
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise DataError(f"data.loader {spec}: images must be a float tensor N×C×H×W")
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"data.loader {spec} yields images of shape {tuple(images.shape)}; the model expects "
            f"N×{'×'.join(str(v) for v in input_shape)} (channels first; set "
            "data.preprocess.input_size if the model wants another size)"
        )
    if labels is not None:
        from .usercode import labels_tensor

        labels = labels_tensor(labels, f"data.loader {spec}")
        if labels.dim() != 1 or len(labels) != len(images) or labels.is_floating_point():
            raise DataError(
                f"data.loader {spec}: labels must be N integers, got shape {tuple(labels.shape)}"
            )
    return images, labels


def images_from_loader(
    spec: str, input_shape: tuple[int, ...], limit: int | None
) -> tuple[TensorImages, object | None]:
    """Call the user's `spec` (→ DataLoader, or (DataLoader, metric)) and keep up to `limit`
    images in memory. Returns (dataset, metric callable or None)."""
    from .usercode import call_user, load_callable

    produced = call_user(load_callable(spec, "data loader"), spec)
    metric = None
    if isinstance(produced, tuple) and len(produced) == 2 and callable(produced[1]):
        produced, metric = produced
    try:
        batches = iter(produced)
    except TypeError as exc:
        raise DataError(
            f"data.loader {spec} returned a {type(produced).__name__}, not a DataLoader"
        ) from exc
    images, labels, seen = [], [], 0
    has_labels = None
    while limit is None or seen < limit:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except DataError:
            raise
        except Exception as exc:
            from .usercode import UserCodeError, _where

            raise UserCodeError(
                f"data.loader {spec} raised {type(exc).__name__} while loading: {exc}{_where(exc)}"
            ) from exc
        part, part_labels = _batch_parts(batch, spec, input_shape)
        if has_labels is None:
            has_labels = part_labels is not None
        elif has_labels != (part_labels is not None):
            raise DataError(f"data.loader {spec}: some batches have labels and some do not")
        keep = len(part) if limit is None else min(len(part), limit - seen)
        images.append(part[:keep].float())
        labels.append(
            part_labels[:keep].long()
            if part_labels is not None
            else torch.full((keep,), UNLABELLED)
        )
        seen += keep
    if not images:
        raise DataError(f"data.loader {spec} yields no images")
    ids = [f"{spec}[{i}]" for i in range(seen)]
    return TensorImages(torch.cat(images), torch.cat(labels), ids), metric


def split_parts(
    dataset, sizes: dict[str, int | None], seed: int = 0, where: str = "the data"
) -> dict:
    """Disjoint parts of `dataset` by a seeded permutation: each named part takes its size in
    order; a size None takes the rest. A folder too small is a DataError naming the sizes."""
    wanted = sum(v for v in sizes.values() if v is not None)
    rest_parts = [k for k, v in sizes.items() if v is None]
    needed = wanted + len(rest_parts)  # a part sized "the rest" needs at least one image
    if needed > len(dataset):
        asked = " + ".join(f"{k} {v if v is not None else '≥ 1'}" for k, v in sizes.items())
        raise DataError(
            f"{where} has {len(dataset)} images, too few to split into {asked}: lower the "
            "counts (data.calib_images, data.val_images, data.test_images) or add images"
        )
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    parts, start = {}, 0
    for key, size in sizes.items():
        take = len(dataset) - start if size is None else size
        parts[key] = dataset.subset(sorted(order[start : start + take]))
        start += take
    return parts
