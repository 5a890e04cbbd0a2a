"""The evaluate verb's piece both callers share: labelled images opened for a model (top-1 is
`budget.top1` for both)."""

from __future__ import annotations

import os


def labelled_images(
    path: str | os.PathLike[str],
    transform,
    model,
    input_size: tuple[int, ...],
    limit: int | None = None,
):
    """`path` opened for a verb that scores or trains on its labels: class sub-folders are
    mapped to the model's outputs by name where the model names its classes, and refused where
    labelling them by position would be wrong (fewer folders than outputs)."""
    from ..data import load_image_dataset, model_label_names, model_num_outputs

    return load_image_dataset(
        path,
        transform,
        limit,
        classes=model_label_names(model),
        num_outputs=model_num_outputs(model, tuple(input_size)),
    )
