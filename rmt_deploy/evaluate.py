"""Top-1/top-5 accuracy of a model on a labelled image dataset."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .errors import DataError
from .progress import tqdm
from .usercode import labels_tensor, logits_of


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent
    n_images: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 250,
    workers: int = 1,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> EvalResult:
    """Accuracy of `model` (put in eval mode, on `device`: default where it is) over all of
    `dataset`."""
    if len(dataset) == 0:
        raise DataError("the dataset is empty")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    from .devices import resolve_device

    target = resolve_device(device, model)
    model.eval().to(target)
    correct1 = correct5 = seen = 0
    start = time.perf_counter()
    for images, labels in tqdm(loader, desc="eval", unit="batch", disable=not progress):
        logits = logits_of(model(images.to(target))).float()
        labels = labels_tensor(labels, "the dataset").to(target)
        if labels.max() >= logits.shape[1]:
            raise DataError(
                f"the model has {logits.shape[1]} outputs but the data has label "
                f"{int(labels.max())}: model and dataset do not match"
            )
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        seen += len(labels)
    return EvalResult(
        top1=100.0 * correct1 / seen,
        top5=100.0 * correct5 / seen,
        n_images=seen,
        seconds=time.perf_counter() - start,
    )
