"""Channel groups: the output channels that must be removed together, found by Torch-Pruning.

A group is one set of channels shared by several layers: the outputs of its producers (a conv
and the BatchNorm after it; in a residual stage, every block's last conv and the shortcut), the
inputs of its consumers. Removing channel k of a group removes it everywhere, which is what keeps
residual additions and depthwise convolutions consistent. The model's output layer is never
pruned (its outputs are the classes). A Conv/Linear that is in no prunable group is reported as
skipped, with the reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import RmtDeployError, one_line
from ..targets import SkippedLayer
from .shortcuts import ShortcutSelect, expose_shortcuts_, forward_with_hooks


class ChannelError(RmtDeployError):
    """A model or a choice of widths that channel pruning cannot handle."""


@dataclass
class ChannelGroup:
    """Channels removed together; named by its first producer in model order."""

    name: str
    channels: int
    producers: list[str]  # learned layers whose output channels are removed
    consumers: list[str]  # layers whose input channels are removed
    fixed: list[str] = field(default_factory=list)  # explicit shortcuts kept in step

    @property
    def layers(self) -> list[str]:
        """Every layer the group's channels pass through: narrowing it changes each one."""
        return self.producers + self.consumers + self.fixed


@dataclass
class ChannelGraph:
    """The model (shortcuts made explicit), Torch-Pruning's graph and the groups it allows."""

    model: nn.Module
    graph: Any  # torch_pruning.DependencyGraph
    groups: dict[str, ChannelGroup]
    roots: dict[str, nn.Module]
    skipped: list[SkippedLayer]

    def pruning_group(self, name: str, idxs: list[int]) -> Any:
        """Torch-Pruning's group that removes channels `idxs` of group `name`."""
        root = self.roots[name]
        fn = self.graph.get_pruner_of_module(root).prune_out_channels
        return self.graph.get_pruning_group(root, fn, idxs)


def _layers(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The last Conv/Linear the forward runs: its outputs are the model's, never pruned."""
    order: list[nn.Module] = []
    forward_with_hooks(
        model, example, {m: lambda mod, *_: order.append(mod) for m in _layers(model)}
    )
    return order[-1:]


def _trace(model: nn.Module, example: torch.Tensor) -> Any:
    import torch_pruning as tp

    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example, verbose=False)
    except Exception as exc:  # noqa: BLE001  (any tracing failure is the user's model)
        raise ChannelError(
            f"Torch-Pruning cannot trace {type(model).__name__} ({one_line(str(exc))}); channel "
            "pruning needs a forward that autograd can trace (use the lowrank form instead)"
        ) from exc


def _group(graph: Any, group: Any, names: dict[nn.Module, str], order: dict[str, int]):
    producers, consumers, fixed = [], [], []
    for dep, _ in group:
        module = dep.target.module
        if module not in names:
            continue
        out = graph.is_out_channel_pruning_fn(dep.handler)
        if isinstance(module, ShortcutSelect):
            fixed.append(names[module])
        elif out and names[module] not in producers:
            producers.append(names[module])
        elif not out and names[module] not in consumers:
            consumers.append(names[module])
    producers.sort(key=order.get)
    return producers, consumers, fixed


def _skipped(
    names: dict[nn.Module, str], head: list[nn.Module], grouped: set[str], broken: dict[str, str]
):
    """Each Conv/Linear in no prunable group, with the reason."""
    skipped = []
    for module, name in names.items():
        if name in grouped:
            continue
        if module in head:
            code, reason = "output_layer", "its outputs are the model's outputs"
        elif name in broken:
            code = "breaks_forward"
            reason = f"one channel fewer breaks the model's forward ({broken[name]}); kept whole"
        else:
            code = "no_channel_group"
            reason = "Torch-Pruning finds no prunable channel group for it"
        skipped.append(SkippedLayer(name, type(module).__name__, code, reason))
    return skipped


def _breaking(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, str]:
    """The groups whose narrowing breaks the forward, with the error: each group loses its
    last channel in turn on a copy of the model, which must still run. Attention's qkv output
    is reshaped by heads: one channel fewer fails there, and any width that happened to fit
    the reshape would mix queries, keys and values — so such a group is never narrowed."""
    broken: dict[str, str] = {}
    work = None
    for name in names:
        if work is None:  # a fresh copy (the last trial broke the one before)
            work = copy.deepcopy(model)
            graph, modules = _trace(work, example), dict(work.named_modules())
        root = modules[name]
        try:
            last = [graph.get_out_channels(root) - 1]
            fn = graph.get_pruner_of_module(root).prune_out_channels
            graph.get_pruning_group(root, fn, last).prune(record_history=False)
            with torch.no_grad():
                work(example)
        except Exception as exc:  # noqa: BLE001  (whatever the user's forward raises)
            broken[name], work = one_line(str(exc)), None
    return broken


def channel_graph(
    model: nn.Module, example: torch.Tensor, check_forward: bool = True
) -> ChannelGraph:
    """Expose the shortcuts of `model` (in place) and find its channel groups; with
    `check_forward`, without those whose narrowing breaks the forward (`_breaking`: a copy
    and a forward per group — off only where the groups to narrow were checked already)."""
    model.eval()
    expose_shortcuts_(model, example)
    head = output_layers(model, example)
    graph = _trace(model, example)  # the head stays traced: it consumes the last group
    names = _layers(model)
    by_name = {n: m for m, n in names.items()}
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    groups: dict[str, ChannelGroup] = {}
    roots: dict[str, nn.Module] = {}
    roots_of = [nn.Conv2d, nn.Linear]
    for group in graph.get_all_groups(ignored_layers=head, root_module_types=roots_of):
        producers, consumers, fixed = _group(graph, group, names, order)
        if not producers:
            continue
        root = by_name[producers[0]]  # a learned layer: a shortcut as root misleads the mapping
        channels = graph.get_out_channels(root)
        if channels is None or channels < 2:
            continue
        groups[producers[0]] = ChannelGroup(producers[0], channels, producers, consumers, fixed)
        roots[producers[0]] = root
    broken = _breaking(model, list(groups), example) if check_forward else {}
    broken = {p: why for name, why in broken.items() for p in groups.pop(name).producers}
    grouped = {n for g in groups.values() for n in g.producers + g.fixed}
    ordered = dict(sorted(groups.items(), key=lambda kv: order[kv[0]]))
    return ChannelGraph(model, graph, ordered, roots, _skipped(names, head, grouped, broken))
