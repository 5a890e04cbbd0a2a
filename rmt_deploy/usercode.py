"""The user's code: `package.module:callable` or `path/to/file.py:callable` (models, data
loaders, metrics), imported and called so that its failures read as the user's, not ours."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import BudgetError, DataError, RmtDeployError


class UserCodeError(RmtDeployError):
    """The user's model, loader or metric could not be imported, or raised."""


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename}:{last.lineno} in {last.name})"


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise UserCodeError(f"{spec}: file {path} not found")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"rmt_deploy_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    sys.path.insert(0, str(path.resolve().parent))  # so it can import its neighbours
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as exc:
        sys.modules.pop(name, None)
        raise UserCodeError(
            f"importing {path} failed: {type(exc).__name__}: {exc}{_where(exc)}"
        ) from exc
    return module


def load_callable(spec: str, what: str) -> Callable:
    """Import `spec` ("package.module:callable" or "path/file.py:callable") and return the
    callable; `what` names it in errors ("model factory", "data loader", …)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UserCodeError(
            f"{what} {spec!r}: expected 'package.module:callable' or 'path/file.py:callable'"
        )
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _import_file(Path(target), spec)
    else:
        if os.getcwd() not in sys.path:  # `examples.foo:bar` from the project folder
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise UserCodeError(f"cannot import {what} {spec!r}: {exc}") from exc
        except Exception as exc:
            raise UserCodeError(
                f"importing {target} for {what} {spec!r} failed: "
                f"{type(exc).__name__}: {exc}{_where(exc)}"
            ) from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise UserCodeError(f"{what} {spec!r}: {target} has no attribute {attr!r}")
    if not callable(fn):
        raise UserCodeError(f"{what} {spec!r} is a {type(fn).__name__}, not a callable")
    return fn


def call_user(fn: Callable, spec: str, *args: Any, **kwargs: Any) -> Any:
    """Call the user's `fn`; anything it raises becomes one UserCodeError naming `spec` and
    the last frame (ours stay ours: an RmtDeployError passes through)."""
    try:
        return fn(*args, **kwargs)
    except RmtDeployError:
        raise
    except TypeError as exc:
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
            raise UserCodeError(f"{spec} cannot be called this way: {exc}") from exc
        raise UserCodeError(f"{spec} raised TypeError: {exc}{_where(exc)}") from exc
    except Exception as exc:
        raise UserCodeError(f"{spec} raised {type(exc).__name__}: {exc}{_where(exc)}") from exc


def _described(value: Any) -> str:
    """A short picture of what user code returned: 'a tuple of 2 (Tensor 1×10, Tensor 1×10)'."""
    import torch

    def one(item: Any) -> str:
        if isinstance(item, torch.Tensor):
            return f"Tensor {'×'.join(str(d) for d in item.shape) or 'scalar'}"
        return type(item).__name__

    if isinstance(value, Mapping):
        keys = ", ".join(repr(k) for k in list(value)[:4])
        return f"a {type(value).__name__} with keys {keys}{', …' if len(value) > 4 else ''}"
    if isinstance(value, (tuple, list)):
        parts = ", ".join(one(v) for v in value[:3])
        return (
            f"a {type(value).__name__} of {len(value)} ({parts}{', …' if len(value) > 3 else ''})"
        )
    return f"a {type(value).__name__}"


def logits_of(output: Any, what: str = "the model"):
    """`output` when it is the logits tensor. A tuple (aux heads) or a dict (Hugging Face) is
    refused with the wrapper to write: picking an element for the user could score, compress
    and ship the wrong head without a word."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        key = "logits" if "logits" in output else next(iter(output), "logits")
        pick = f"self.model(x)[{key!r}]"
    elif isinstance(output, (tuple, list)):
        pick = "self.model(x)[i], i the element that holds the logits (none is guessed)"
    else:
        pick = "the logits tensor"
    raise UserCodeError(
        f"{what} returns {_described(output)}, not the logits tensor rmt-deploy scores, "
        f"compresses and exports: wrap it in an nn.Module whose forward(self, x) returns "
        f"{pick}, and give that module instead"
    )


def check_model_output(model, input_size: tuple[int, ...], what: str) -> None:
    """Run `model` once on a blank image and refuse an output that is not a tensor, when the
    model is loaded, not deep inside a later stage. A forward that fails here (e.g. on a size
    the preprocessing overrides) is left to the stage that feeds it real images."""
    import torch

    training = model.training
    try:
        with torch.inference_mode():
            output = model.eval()(torch.zeros(1, *input_size))
    except Exception:
        return
    finally:
        model.train(training)
    logits_of(output, what)


def labels_tensor(labels: Any, where: str):
    """The batch's labels as a tensor of class indices; strings, nested lists or other objects
    are refused naming what came and what to yield (torch's own error names neither)."""
    import torch

    if isinstance(labels, torch.Tensor):
        return labels
    flat = labels if isinstance(labels, (tuple, list)) else [labels]
    if isinstance(labels, (tuple, list)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in labels
    ):
        return torch.as_tensor(labels)
    raise DataError(
        f"{where} yields labels as {_described(labels)}"
        f"{f' (first: {flat[0]!r})' if flat and isinstance(flat[0], str) else ''}, not class "
        "indices: each sample's label must be one integer class index (a tensor of N integers "
        "per batch); map class names to indices in the dataset, e.g. classes.index(name)"
    )


def metric_value(value: Any, spec: str, n_inputs: int):
    """A user metric's result as the budget uses it: one finite number, or one finite loss per
    input (a tensor of `n_inputs`). NaN, ±inf or a non-number would otherwise pass every
    comparison silently and break the JSON the planner writes."""
    import math
    import numbers

    import torch

    if isinstance(value, torch.Tensor) and value.dim() == 1 and len(value) == n_inputs:
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise BudgetError(
                f"budget metric {spec} returned {bad} non-finite losses (NaN or ±inf) of "
                f"{n_inputs}: it must return finite numbers (lower is better); guard its "
                "divisions and logarithms, e.g. clamp(min=1e-12) before log"
            )
        return value.double()
    if (
        isinstance(value, bool)
        or not isinstance(value, (numbers.Real, torch.Tensor))
        or (isinstance(value, torch.Tensor) and value.numel() != 1)
    ):
        raise BudgetError(
            f"budget metric {spec} returned {type(value).__name__}, not a number: return one "
            f"float (lower is better), or a tensor of {n_inputs} losses, one per input"
        )
    number = float(value)
    if not math.isfinite(number):
        raise BudgetError(
            f"budget metric {spec} returned {number}: it must return a finite number (lower "
            "is better); guard its divisions and logarithms, e.g. clamp(min=1e-12) before log"
        )
    return number
