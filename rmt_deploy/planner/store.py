"""The saved per-layer tables and whole-model timings of a search (`table=`): reused when they
match this model, batch and machine — so the same config on the same table chooses the same
plan — measured and written otherwise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..deploy import Deployment
from . import layer_table
from .layer_table import LayerEntry, LayerTable, TableMismatchError


class TableStore:
    """Per-deployment layer tables, the whole-model timing cache and the measured
    sensitivities of one search, read from `path` when it matches and written back there."""

    def __init__(self, path, fingerprint: str, batch: int, machine: dict):
        self.path, self.fingerprint, self.batch, self.machine = path, fingerprint, batch, machine
        self.saved = _load(path, fingerprint, batch, machine)
        self.tables: dict[str, LayerTable] = {}
        self.whole: dict[str, dict] = self.saved.get("whole", {})

    @property
    def sensitivity(self) -> dict | None:
        return self.saved.get("sensitivity")

    def table(
        self,
        deployment: Deployment,
        entries: Callable[[Deployment], list[LayerEntry]],
        views: dict,
        threads: int,
        progress: bool,
    ) -> LayerTable:
        """The deployment's table: the saved one, or `entries` measured now."""
        saved = self.saved.get("tables", {})
        if deployment.name in saved:
            table = LayerTable.from_dict(saved[deployment.name])
            table.check(self.fingerprint, deployment.name, self.batch, self.machine)
        else:
            table = LayerTable(
                self.fingerprint, deployment.name, self.batch, self.machine, entries(deployment)
            )
            layer_table.measure_options(table.layers, views, deployment, threads, progress=progress)
        self.tables[deployment.name] = table
        return table

    def save(self, sensitivity: dict | None = None) -> dict:
        """The tables as one record (written to the path when there is one)."""
        from ..paths import write_json_atomic

        record = {
            "fingerprint": self.fingerprint,
            "batch": self.batch,
            "machine": self.machine,
            "tables": {name: t.to_dict() for name, t in self.tables.items()},
            "whole": self.whole,
            "sensitivity": sensitivity,
        }
        if self.path is not None:
            write_json_atomic(self.path, record)
        return record


def _load(path, fingerprint: str, batch: int, machine: dict) -> dict:
    from ..paths import read_json

    if path is None or not Path(path).is_file():
        return {}
    data = read_json(path, "layer tables", TableMismatchError)
    if (
        data.get("fingerprint") != fingerprint
        or data.get("batch") != batch
        or data.get("machine") != machine
    ):
        LayerTable(
            data.get("fingerprint", "?"), "?", data.get("batch", 0), data.get("machine", {})
        ).check(fingerprint, "?", batch, machine)
    return data
