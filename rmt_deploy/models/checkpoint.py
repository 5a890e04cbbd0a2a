"""Read checkpoints safely (safetensors, or torch pickles with weights_only=True) into a model."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, NonFiniteWeightsError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
_OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked",)  # absent from older BatchNorm checkpoints
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a flat name→tensor mapping from `.safetensors` or a `.pth/.pt/.th/.bin` file."""
    path = Path(path)
    from ..paths import path_problem

    problem = path_problem(path)
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure means the file is not a usable checkpoint
        if "weights only load failed" not in str(exc).lower():
            raise _unreadable(path, exc) from exc
        # torch's text advises weights_only=False: neither it nor its cause is passed on
        if re.search(r"GLOBAL [\w.]+", str(exc)):
            raise _holds_objects(path, exc) from None
        raise _unreadable(path, exc) from None
    return _unwrap(raw, path)


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):  # its detail, not its advice
        lines = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
    first_line = lines[0] if lines else type(exc).__name__
    return CheckpointError(
        f"cannot read checkpoint {path}: not a valid safetensors/torch file or not loadable "
        f"with weights_only=True ({first_line[:200]})"
    )


def _holds_objects(path: Path, exc: BaseException) -> CheckpointError:
    """A pickle that needs arbitrary Python objects to load: loading it may run any code, so
    it is refused, and the message says how to save the weights safely — never torch's own
    advice to retry with weights_only=False."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f" ({found.group(1)})" if found else ""
    return CheckpointError(
        f"checkpoint {path} holds arbitrary Python objects{what}, which rmt-deploy does not load "
        "(it reads with weights_only=True: unpickling them can run any code): where the file "
        "is trusted, save only the weights, torch.save(model.state_dict(), 'model.pth') or "
        "safetensors.torch.save_file(model.state_dict(), 'model.safetensors'), and pass that file"
    )


def _unwrap(raw: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(raw, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(raw.get(key), Mapping):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError(f"checkpoint {path} holds no state dict (got {type(raw).__name__})")
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {path}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        name = str(key)
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        state[name] = value
    return state


PLAN_METADATA_KEY = "rmt_deploy.plan"


def read_plan_metadata(path: str | os.PathLike[str]) -> str | None:
    """The compression plan (JSON text) stored in a compressed `.safetensors`, if any."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get(PLAN_METADATA_KEY)
    except Exception:  # unreadable files are reported by read_state_dict with a clear message
        return None


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> Path:
    """Write the model's state dict as safetensors, atomically, with optional text metadata."""
    from safetensors.torch import save_file

    from ..paths import write_with_atomic

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return write_with_atomic(
        path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt", **(metadata or {})})
    )


def load_checkpoint_into(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load `path` into `model` strictly: every key must match in name and shape."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_KEY_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    # A float weight stored as integers (or the reverse) loads "fine" through the copy's cast
    # and gives a model that scores chance; float16/bfloat16 into float32 is a plain cast.
    wrong_kind = [
        f"{k}: checkpoint {_dtype(state[k])} vs model {_dtype(expected[k])}"
        for k in state
        if k in expected
        and not k.endswith(_OPTIONAL_KEY_SUFFIXES)
        and state[k].is_floating_point() != expected[k].is_floating_point()
    ]
    if missing or unexpected or mismatched or wrong_kind:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
            ("wrong dtype (floating vs integer)", wrong_kind),
        ):
            if keys:
                shown = ", ".join(keys[:5]) + (f", … (+{len(keys) - 5})" if len(keys) > 5 else "")
                parts.append(f"{len(keys)} {label} ({shown})")
        fix = (
            " (floating weights stored as integers: save them from the float model, e.g. "
            "save_checkpoint(model, path))"
            if wrong_kind
            else ""
        )
        raise CheckpointError(
            f"checkpoint {path} does not match the model: " + "; ".join(parts) + fix
        )
    model.load_state_dict(state, strict=False)
    check_finite(model, source=str(path))
    return model


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def check_finite(model: nn.Module, source: str = "model") -> None:
    """Raise NonFiniteWeightsError naming the tensors that hold NaN or Inf."""
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f", … (+{len(bad) - 5})" if len(bad) > 5 else "")
        raise NonFiniteWeightsError(f"{source}: {len(bad)} tensor(s) hold NaN/Inf values: {shown}")
