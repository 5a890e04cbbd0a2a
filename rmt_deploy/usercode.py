"""The user's code: `package.module:callable` or `path/to/file.py:callable` (models, data
loaders, metrics), imported and called so that its failures read as the user's, not ours."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import RmtDeployError


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
