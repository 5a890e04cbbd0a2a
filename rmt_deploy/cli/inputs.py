"""The model and the images a verb's arguments name: MODEL as a name or a `rmt-deploy
compress` output, its preprocessing with the command line's overrides, labelled folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import RmtDeployError
from .args import preprocess_overrides


def load(args: argparse.Namespace):
    from ..models import load_model

    return load_model(
        args.model, args.checkpoint, pretrained=not args.random_init, assets=args.assets
    )


def data_config(args: argparse.Namespace, model):
    """The model's DataConfig with the command line's preprocessing overrides."""
    from ..models import DataConfig

    return DataConfig.from_model(model).with_overrides(**preprocess_overrides(args))


def labelled_folder(args: argparse.Namespace, model, transform, limit=None):
    """`--data` opened for a verb that scores or trains on its labels (by class name where the
    model names its classes: `verbs.labelled_images`, as the pipeline opens its folders)."""
    from ..verbs import labelled_images

    input_size = tuple(data_config(args, model).input_size)
    return labelled_images(args.data, transform, model, input_size, limit)


def stored_model_name(path: Path) -> str:
    """The model name `rmt-deploy compress` stores in its checkpoint's metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            name = (handle.metadata() or {}).get("rmt_deploy.model")
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RmtDeployError(f"cannot read checkpoint {path}: {reason}") from exc
    if not name:
        raise RmtDeployError(
            f"{path} does not name its model (it was not written by `rmt-deploy compress`); "
            f"pass the model name and --checkpoint {path}"
        )
    return name


def resolve_model_arg(args: argparse.Namespace) -> Path | None:
    """MODEL may be a `rmt-deploy compress` output: its folder (model.safetensors + plan.json)
    or its model.safetensors. Then args.model becomes the model name stored in the checkpoint
    and args.checkpoint that file; returns the checkpoint, or None for a plain model name."""
    checkpoint = _compress_output(str(args.model))
    if checkpoint is None:
        return None
    name = stored_model_name(checkpoint)
    given = getattr(args, "checkpoint", None)
    if given is not None and Path(given).resolve() != checkpoint.resolve():
        raise RmtDeployError(
            f"both {args.model} and --checkpoint {given} give weights: pass one of them"
        )
    args.model = name
    if hasattr(args, "checkpoint"):
        args.checkpoint = checkpoint
    return checkpoint


def _compress_output(text: str) -> Path | None:
    """The checkpoint MODEL names when it is a compress output's folder or file; None for a
    model name (or package.module:callable)."""
    from ..paths import is_dir, is_file, path_problem

    if ":" in text and not is_dir(text) and not is_file(text):  # package.module:callable
        return None
    path = Path(text)
    problem = path_problem(path)
    if problem:
        raise RmtDeployError(f"model {text[:40]}…: {problem}")
    if is_dir(path):
        if not (path / "model.safetensors").is_file():
            raise RmtDeployError(
                f"{path} is a folder without model.safetensors: give a `rmt-deploy compress` "
                "output folder, its model.safetensors, or a model name"
            )
        return path / "model.safetensors"
    if is_file(path):
        if path.suffix != ".safetensors":
            raise RmtDeployError(
                f"{path} is a {path.suffix or 'plain'} file, which does not say which model it "
                f"holds: pass the model name and --checkpoint {path}"
            )
        return path
    return None
