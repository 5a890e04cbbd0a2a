"""The fixed-error planner: no budget, no whole-model search — every layer takes its fastest
measured option whose predicted output error is within `layer_error`."""

from __future__ import annotations

from .allocate import Allocation
from .layer_table import LayerTable


def fixed_error_allocation(table: LayerTable, layer_error: float, min_gain: float) -> Allocation:
    """Per layer the fastest option within `layer_error` that saves at least `min_gain` of
    the dense time in context; dense otherwise. Damage is not predicted (0)."""
    choices = {}
    for entry in table.layers:
        fits = [
            o
            for o in entry.options[1:]
            if o.error <= layer_error
            and o.ms is not None
            and o.ms < entry.dense.ms * (1 - min_gain)
        ]
        choices[entry.name] = min(fits, key=lambda o: o.ms) if fits else entry.dense
    saving = sum(table.entry(n).dense.ms - o.ms for n, o in choices.items())
    return Allocation(choices, saving, 0.0)
