"""The one registry of runtimes: each family registers itself; deployments, benchmark
backends and their availability are all read from here."""

from __future__ import annotations

from .base import Deployment, Runtime

RUNTIMES: dict[str, Runtime] = {}
# Every deployment by name, and every backend name with its runtime (filled by registration).
DEPLOYMENTS: dict[str, Deployment] = {}
BACKENDS: dict[str, Runtime] = {}


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: one instance of the family, under its name; its deployments and
    backends join the registry (a name already taken is an error, not a silent override)."""
    runtime = cls()
    taken = [name for name in runtime.backends if name in BACKENDS]
    if cls.family in RUNTIMES or taken:
        raise ValueError(f"runtime {cls.family}: already registered ({', '.join(taken)})")
    RUNTIMES[cls.family] = runtime
    DEPLOYMENTS.update({d.name: d for d in runtime.deployments})
    BACKENDS.update(dict.fromkeys(runtime.backends, runtime))
    return cls


def runtime_for(backend: str) -> Runtime | None:
    """The runtime that runs a backend (a deployment's name or a benchmark-only one)."""
    return BACKENDS.get(backend)
