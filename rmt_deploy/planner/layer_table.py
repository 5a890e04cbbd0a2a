"""The per-layer table: each layer's options (dense, low rank at a few ranks, 2:4 on CUDA), their
predicted output error and their latency measured on the deployment, in context.

Timed alone, a layer is not what it is inside the model: ONNX Runtime reorders a lone
convolution's input and output into its blocked (NCHWc) layout and back, which costs more than
many convolutions themselves, so isolated dense convs of ResNet-56 added up to more than the
whole model. Each form here is timed inside a sandwich that keeps the layout the model gives
it — a per-channel 1×1 convolution before and after a conv (ONNX Runtime and OpenVINO keep
those in their blocked layout), nothing around a Linear — and the forms of one layer are timed
interleaved over rounds. Ranks are rounded up to a multiple of 8 (the CPU kernels' block).
The table is saved with what it was measured on (model fingerprint, deployment, batch, CPU,
threads, versions) and refused for anything else.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ..calibration import WhitenedFactors, rank_for_error
from ..errors import RmtDeployError
from ..layers import lowrank_like, nm_mask
from ..layers.views import LayerView
from ..paths import read_json, write_json_atomic
from ..progress import tqdm
from ..runtimes import RUNTIMES, Deployment
from .timing import spread, time_interleaved

TABLE_SCHEMA = 1
# The per-layer output errors a layer's low-rank options are placed at.
OPTION_ERRORS = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15)


class TableMismatchError(RmtDeployError):
    """A saved layer table measured for another model, deployment, batch or machine."""


@dataclass
class LayerOption:
    form: str  # dense | lowrank | nm24
    rank: int | None = None
    error: float = 0.0  # predicted relative output error (cross-validated; 0 for dense)
    trusted: bool = True
    params: int = 0
    ms: float | None = None  # median latency in context on the deployment
    q1_ms: float | None = None
    q3_ms: float | None = None

    @property
    def key(self) -> str:
        return self.form if self.rank is None else f"{self.form}:{self.rank}"


@dataclass
class LayerEntry:
    name: str
    kind: str  # linear | conv2d
    input_shape: list[int]
    matrix_shape: list[int]
    edge_rank: int
    options: list[LayerOption]  # options[0] is dense
    sensitivity: float | None = None  # final-output error per unit of layer error
    note: str = ""  # why a layer has no compressed option

    @property
    def dense(self) -> LayerOption:
        return self.options[0]

    def saving_ms(self, option: LayerOption) -> float:
        """How much faster than dense `option` was measured in context (an untimed side 0)."""
        return (self.dense.ms or 0.0) - (option.ms or 0.0)


@dataclass
class LayerTable:
    fingerprint: str
    deployment: str
    batch: int
    machine: dict
    layers: list[LayerEntry] = field(default_factory=list)
    schema: int = TABLE_SCHEMA

    def entry(self, name: str) -> LayerEntry:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LayerTable:
        if data.get("schema") != TABLE_SCHEMA:
            raise TableMismatchError(f"not a layer table (schema {TABLE_SCHEMA} expected)")
        layers = [
            LayerEntry(**{**e, "options": [LayerOption(**o) for o in e["options"]]})
            for e in data["layers"]
        ]
        return cls(data["fingerprint"], data["deployment"], data["batch"], data["machine"], layers)

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LayerTable:
        return cls.from_dict(read_json(path, "layer table", TableMismatchError))

    def check(self, fingerprint: str, deployment: str, batch: int, machine: dict) -> None:
        """Refuse a table measured for something else, naming both."""
        wanted = {"model": fingerprint, "deployment": deployment, "batch": batch, **machine}
        have = {
            "model": self.fingerprint,
            "deployment": self.deployment,
            "batch": self.batch,
            **self.machine,
        }
        diff = [k for k in wanted if wanted[k] != have.get(k)]
        if diff:
            raise TableMismatchError(
                "the saved layer table was measured for another "
                + ", ".join(f"{k} ({have.get(k)!r}, here {wanted[k]!r})" for k in diff)
                + ": delete it or plan without it"
            )


def machine_signature(threads: int) -> dict:
    """What a latency measurement depends on besides the model."""
    from ..machine import cpu_name

    cpu = cpu_name()
    import onnxruntime

    return {"cpu": cpu, "threads": threads, "onnxruntime": onnxruntime.__version__}


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's state (names, shapes, values): a table belongs to one model."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def layer_options(
    view: LayerView,
    factors: WhitenedFactors,
    edge_rank: int,
    rank_multiple: int,
    nm24_error: float | None = None,
) -> list[LayerOption]:
    """Dense, then one low-rank option per level of OPTION_ERRORS (ranks rounded up to a
    multiple, never below the MP edge, below break-even only), then 2:4 where timed on CUDA.
    A rank whose estimate is untrusted moves to the safe rank where its worst fold meets the
    level."""
    m, n = view.matrix_shape
    options = [LayerOption("dense", params=m * n)]
    seen: set[int] = set()
    for level in OPTION_ERRORS:
        rank = rank_for_error(factors.predicted, level, edge_rank, rank_multiple)
        trusted = factors.trusted_at(rank)
        if not trusted and factors.fold_worst is not None:
            rank = max(rank, rank_for_error(factors.fold_worst, level, edge_rank, rank_multiple))
        if rank in seen or rank * (m + n) >= m * n:
            continue
        seen.add(rank)
        options.append(
            LayerOption(
                "lowrank",
                rank,
                float(factors.predicted[rank]),
                trusted,
                rank * (m + n),
            )
        )
    if nm24_error is not None:
        options.append(LayerOption("nm24", None, nm24_error, True, m * n // 2))
    return options


def _scale(channels: int) -> nn.Module:
    """A per-channel 1×1 convolution: cheap, and kept in the blocked layout by CPU runtimes."""
    conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
    nn.init.ones_(conv.weight)
    return conv


def form_module(view: LayerView, option: LayerOption) -> nn.Module:
    """The layer in the form `option` names (weights are irrelevant to its latency)."""
    if option.form == "dense":
        return copy.deepcopy(view.module).float()
    if option.form == "lowrank":
        return lowrank_like(view, option.rank)
    if option.form == "nm24":
        from ..layers.semi_structured import SemiStructuredLinear

        weight = view.weight.detach().cuda().half()
        return SemiStructuredLinear(weight * nm_mask(weight.float()).half(), None)
    raise RmtDeployError(f"unknown layer form {option.form!r}")


def sandwich(view: LayerView, form: nn.Module) -> nn.Module:
    if view.kind != "conv2d":
        return form
    out_channels, in_per_group = view.weight.shape[:2]
    return nn.Sequential(_scale(in_per_group * view.groups), form, _scale(out_channels))


def _runner(deployment: Deployment, module: nn.Module, shape, folder: Path, tag: str, threads):
    """A callable running `module` as `deployment` would, or None when it cannot."""
    return RUNTIMES[deployment.runtime].layer_runner(
        deployment, module, shape, folder, tag, threads
    )


def measure_options(
    entries: list[LayerEntry],
    views: dict[str, LayerView],
    deployment: Deployment,
    threads: int,
    rounds: int = 5,
    runs: int = 10,
    progress: bool = False,
) -> None:
    """Time every option of every entry in its sandwich on `deployment` (in place)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="rmt-table-") as tmp:
        for entry in tqdm(
            entries, desc=f"time layers ({deployment.name})", unit="layer", disable=not progress
        ):
            view = views[entry.name]
            shape = tuple(entry.input_shape)
            runners, inputs = {}, {}
            for i, option in enumerate(entry.options):
                if option.form == "nm24" and deployment.device != "cuda":
                    continue
                module = sandwich(view, form_module(view, option))
                run = _runner(deployment, module, shape, Path(tmp), f"{i}", threads)
                if run is not None:
                    runners[i] = run
                    inputs[i] = rng.standard_normal(shape).astype(np.float32)
            samples = time_interleaved(
                runners, inputs, rounds, runs, cuda=deployment.device == "cuda"
            )
            for i, values in samples.items():
                stats = spread(values)
                option = entry.options[i]
                option.ms, option.q1_ms, option.q3_ms = (
                    stats["median_ms"],
                    stats["q1_ms"],
                    stats["q3_ms"],
                )
            entry.options = [o for o in entry.options if o.ms is not None]
