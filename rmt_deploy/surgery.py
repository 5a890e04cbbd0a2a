"""The one module-replacement helper every transformation goes through."""

from __future__ import annotations

from torch import nn


def get_submodule(model: nn.Module, fqn: str) -> nn.Module:
    return model.get_submodule(fqn) if fqn else model


def replace_module(model: nn.Module, fqn: str, new: nn.Module) -> nn.Module:
    """Put `new` at the dotted path `fqn` (works inside Sequential/ModuleList too)."""
    if not fqn:
        raise ValueError("cannot replace the root module")
    parent_name, _, child = fqn.rpartition(".")
    parent = get_submodule(model, parent_name)
    if not hasattr(parent, child):
        raise KeyError(f"no submodule {fqn!r}")
    old = getattr(parent, child)
    new.train(old.training)
    setattr(parent, child, new)
    return old
