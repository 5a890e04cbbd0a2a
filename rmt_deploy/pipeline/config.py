"""The pipeline's config: one YAML file, validated into plain dataclasses with clear errors.

Every key is optional except `model`; unknown keys and wrong types are refused with the path
of the offending key (e.g. `finetune.steps: expected an integer, got 'many'`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import RmtDeployError, one_line
from ..ranges import AT_LEAST_0, AT_LEAST_1, NONNEG, Range


class ConfigError(RmtDeployError):
    """The run config is malformed: unknown key, wrong type, impossible value."""


@dataclass
class PreprocessSection:
    """How images are fed to the model; each key overrides the model's own `pretrained_cfg`."""

    input_size: list[int] | None = None  # [channels, height, width] or [height, width]
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None  # bilinear | bicubic | nearest | …
    crop_pct: float | None = None  # resize to size/crop_pct, then center-crop to size


@dataclass
class DataSection:
    """Where images come from; relative paths are taken inside the assets folder.

    `test` (a folder, or `loader`'s images) is split into disjoint parts: calibration (when
    `calib: test`), plan validation (`val_images`) and the test images that report results.
    Folders are labelled (one sub-folder per class, or a labels.csv) or not (images only)."""

    # fine-tuning images; null: none (no fine-tuning); calib: the calibration images alone
    train: str | None = "cifar10/train"
    test: str | None = "cifar10/test"
    calib: str = "train"  # calibration images: train | test (split off) | a folder
    loader: str | None = None  # "pkg.mod:fn" / "file.py:fn" → DataLoader (or (loader, metric))
    calib_images: int = 512  # activations for the whitened SVD and BatchNorm statistics
    val_images: int = 2000  # validate plans; never tested on
    test_images: int | None = None  # cap on the test part (quick runs)
    preprocess: PreprocessSection = field(default_factory=PreprocessSection)


@dataclass
class AnalyzeSection:
    plots: bool = True  # one spectrum plot per fitted layer


@dataclass
class CompressSection:
    """Every strategy is planned the same way: `strategy` with its `settings`, validated against
    the budget on held-out images where it searches (latency), for the deployment `targets` at
    `batch` on `device`."""

    strategy: str = "latency"
    sparsity: float = 0.5  # fixed strategies: share of weights to remove
    settings: dict[str, Any] = field(default_factory=dict)  # the strategy's own settings
    accuracy_budget: float | None = 1.0  # the most budget_metric may lose on held-out images
    budget_metric: str = "top1"  # top1 (pp) | agreement (pp) | kl (nats) | cosine | loader | pkg:fn
    require_compression: bool = False  # no plan within budget: fail instead of shipping dense
    targets: list[str] = field(default_factory=lambda: ["auto"])  # deployments, or auto
    device: str = "cpu"
    batch: int = 8  # the deployment batch size latency is measured at


@dataclass
class FinetuneSection:
    steps: int = 100
    batch_size: int = 128
    lr: float | None = None  # default: 0.01 for SGD, 1e-4 for AdamW
    optimizer: str | None = None  # default: AdamW for transformers, SGD otherwise
    distill_alpha: float = 0.0
    bn_recal_images: int = 2000
    # The seed's regularized recovery (group lasso scaled by the MP fit, L1, L2); `seed: true`
    # sets all three to the seed's values and scales gradients by s_ℓ, as its training does.
    seed_regularizers: bool = False
    group_lasso: float | None = None  # seed: 1e-6 (× s_ℓ = 1/(1 + 1e4·L∞_ℓ))
    l1: float | None = None  # seed: 5e-7
    l2: float | None = None  # seed: 2e-7


@dataclass
class TensorRTSection:
    precision: str = "fp16"
    batch: str = "1:8:32"  # optimization profile MIN:OPT:MAX
    sparsity: str = "enable"


@dataclass
class ExportSection:
    onnx: bool = True
    opset: int | None = None
    verify_images: int = 64
    tensorrt: TensorRTSection | None = None  # built only where TensorRT is installed


@dataclass
class BenchmarkSection:
    # auto: every deployment this machine offers (the dense baselines) and the chosen one
    backends: list[str] = field(default_factory=lambda: ["auto"])
    batches: list[int] = field(default_factory=lambda: [1, 8, 64])
    runs: int = 60
    warmup_s: float = 1.0
    # top-1 and agreement of every engine: on this many evenly spaced test images (None: the
    # whole test part, so the report's top-1 is the shipped engine's on the test part)
    agreement_images: int | None = None
    power: bool = False  # Jetson: tegrastats / jtop


@dataclass
class RunConfig:
    model: str
    checkpoint: str | None = None
    assets: str | None = None
    output: str = "runs/run"
    seed: int = 0
    analyze: AnalyzeSection = field(default_factory=AnalyzeSection)
    data: DataSection = field(default_factory=DataSection)
    compress: CompressSection = field(default_factory=CompressSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    export: ExportSection = field(default_factory=ExportSection)
    benchmark: BenchmarkSection = field(default_factory=BenchmarkSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        config = _build(cls, data, "")
        _check_values(config)
        return config


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a YAML (or JSON) run config."""
    from ..paths import path_problem

    path = Path(path)
    problem = path_problem(path)
    if problem:
        raise ConfigError(f"config file {path}: {problem}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {one_line(str(exc))}") from exc
    except (ConfigError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        return RunConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: YAML itself keeps the last one
    silently, so an edited copy of a key would quietly override the original. Keys brought in
    by a merge (`<<: *defaults`) may still be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise ConfigError(
                    f"duplicate key {key!r} at line {line} (first at line {first}): each key "
                    "may appear once in a mapping; remove one of them"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _build(cls: type, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping of keys, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(_join(where, k) for k in unknown)} (allowed: {', '.join(sorted(names))})"
        )
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in data
    ]
    if missing:
        raise ConfigError(f"missing required key {', '.join(_join(where, k) for k in missing)}")
    values = {k: _convert(hints[k], v, _join(where, k)) for k, v in data.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _convert(inner, value, where)
    if dataclasses.is_dataclass(hint):
        if value is None:  # `finetune: null` read as "the defaults" fine-tuned 100 steps
            off = " (to turn fine-tuning off: finetune: {steps: 0})" if where == "finetune" else ""
            raise ConfigError(f"{where}: null is not a section: leave it out for its defaults{off}")
        return _build(hint, value, where)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_kind(value)}")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_kind(value)}")
        _check_finite_inside(value, where)
        return dict(value)
    if hint is Any:
        _check_finite_inside(value, where)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {_kind(value)}")
        if not math.isfinite(value) and _generic(where) not in NON_FINITE_ALLOWED:
            rule = _RULES.get(_generic(where))
            valid = f" {rule.describe()}" if rule is not None and not rule.two_sided else ""
            extra = f" (it must lie in {rule.interval()})" if rule and rule.two_sided else ""
            raise ConfigError(f"{where} must be a finite number{valid}{extra}, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_kind(value)}")
        return value
    raise ConfigError(f"{where}: unsupported config type {hint}")  # a bug in this module


# Float keys that may be ±inf or NaN (none today): every other float must be finite.
NON_FINITE_ALLOWED: frozenset[str] = frozenset()


# Every numeric key and its valid range (list items as key[]): refused at load, with the key's
# path, instead of failing — or quietly doing the wrong thing — stages later.
_RULES: dict[str, Range] = {
    "seed": Range(0, 2**63 - 1, integer=True),
    "data.calib_images": AT_LEAST_1,
    "data.val_images": AT_LEAST_0,
    "data.test_images": AT_LEAST_1,
    "data.preprocess.input_size[]": AT_LEAST_1,
    "data.preprocess.mean[]": Range(),
    "data.preprocess.std[]": Range(0.0, low_open=True),
    "data.preprocess.crop_pct": Range(0.0, 1.0, low_open=True),
    "compress.sparsity": Range(0.0, 1.0, high_open=True),
    "compress.accuracy_budget": NONNEG,
    "compress.batch": AT_LEAST_1,
    "finetune.steps": AT_LEAST_0,
    "finetune.batch_size": AT_LEAST_1,
    "finetune.lr": NONNEG,
    "finetune.distill_alpha": Range(0.0, 1.0),
    "finetune.bn_recal_images": AT_LEAST_0,
    "finetune.group_lasso": NONNEG,
    "finetune.l1": NONNEG,
    "finetune.l2": NONNEG,
    # the TorchScript exporter the pipeline uses (torch.onnx ONNX_MIN_OPSET to
    # ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET): an opset outside fails only in the export stage
    "export.opset": Range(7, 20, integer=True),
    "export.verify_images": AT_LEAST_1,
    "benchmark.batches[]": AT_LEAST_1,
    "benchmark.runs": AT_LEAST_1,
    "benchmark.warmup_s": NONNEG,
    "benchmark.agreement_images": AT_LEAST_0,
}


def _generic(where: str) -> str:
    """`benchmark.batches[2]` → `benchmark.batches[]`: the key a rule is written for."""
    return re.sub(r"\[\d+\]", "[]", where)


def _check_finite_inside(value: Any, where: str) -> None:
    """NaN/inf anywhere in a free-form value (`compress.settings`) is refused too."""
    if isinstance(value, float) and not math.isfinite(value):
        if where not in NON_FINITE_ALLOWED:
            raise ConfigError(f"{where} must be a finite number, got {value}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite_inside(item, _join(where, key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_finite_inside(item, f"{where}[{i}]")


def _check_ranges(config: RunConfig) -> None:
    raw = config.to_dict()
    for key, rule in _RULES.items():
        path = key.removesuffix("[]")
        value: Any = raw
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if key.endswith("[]"):
            items = [(f"{path}[{i}]", v) for i, v in enumerate(value or [])]
        else:
            items = [(path, value)]
        for where, v in items:
            if isinstance(v, int | float) and not isinstance(v, bool) and not rule.holds(v):
                raise ConfigError(rule.message(where, v))


def _check_values(config: RunConfig) -> None:
    """What types alone cannot say: ranges, names from the registries, keys that need each
    other; checked in a fixed order so that the first problem reported is always the same."""
    _check_ranges(config)
    _check_strategy_names(config)
    _check_data_sources(config)
    _check_targets(config.compress)
    f = config.finetune
    if f.optimizer not in (None, "sgd", "adamw"):
        raise ConfigError(f"finetune.optimizer: sgd or adamw, got {f.optimizer!r}")
    _check_backends(config.benchmark)
    _check_preprocess(config.data.preprocess)
    if config.export.tensorrt is not None:
        _check_tensorrt(config.export.tensorrt)
    _check_strategy_settings(config)
    _check_backend_exports(config)


def _check_strategy_names(config: RunConfig) -> None:
    """The strategy and budget metric must name registered ones (or the loader's own / a
    user's callable), so that a typo fails at load, not after the analysis stage."""
    from ..budget import METRICS
    from ..strategies import STRATEGIES

    c = config.compress
    if c.strategy not in STRATEGIES:
        raise ConfigError(
            f"compress.strategy: unknown {c.strategy!r} ({', '.join(sorted(STRATEGIES))})"
        )
    if c.budget_metric not in (*METRICS, "loader") and ":" not in c.budget_metric:
        raise ConfigError(
            f"compress.budget_metric: one of {', '.join(METRICS)}, loader (data.loader's own) or "
            f"'package.module:callable', got {c.budget_metric!r}"
        )
    if c.budget_metric == "loader" and config.data.loader is None:
        raise ConfigError("compress.budget_metric is loader but no data.loader is set")


def _check_data_sources(config: RunConfig) -> None:
    """Every image source a stage will read must be given: test images always, training
    images where calibration or fine-tuning takes them."""
    d = config.data
    if d.calib not in ("train", "test") and not d.calib.strip():
        raise ConfigError("data.calib: train, test or a folder")
    if d.test is None and d.loader is None:
        raise ConfigError("data: give a test folder (data.test) or a data.loader")
    if d.train == "calib" and d.calib == "train":
        raise ConfigError(
            "data.train: calib fine-tunes on the calibration images, and data.calib: train takes "
            "them from data.train: set data.calib to test (split off) or a folder"
        )
    if d.calib == "train" and d.train is None:
        raise ConfigError(
            "data.calib is train but data.train is null: calibrate on the test images "
            "(data.calib: test) or name a folder"
        )
    if d.train is None and config.finetune.steps > 0:
        raise ConfigError(
            "finetune.steps > 0 needs training images: set data.train, or finetune.steps: 0"
        )


def _check_targets(c: CompressSection) -> None:
    """Deployment targets (auto alone, or known deployments once each) and the device."""
    from ..deploy import DEPLOYMENTS

    unknown_targets = [t for t in c.targets if t != "auto" and t not in DEPLOYMENTS]
    if unknown_targets or not c.targets or ("auto" in c.targets and len(c.targets) > 1):
        raise ConfigError(
            f"compress.targets: auto or deployments from {', '.join(DEPLOYMENTS)}, got {c.targets}"
        )
    _refuse_duplicates("compress.targets", c.targets)
    from ..devices import DEVICE_PATTERN

    if not DEVICE_PATTERN.match(c.device):
        raise ConfigError(f"compress.device: cpu, cuda or cuda:N (N a GPU index), got {c.device!r}")


def _check_backends(b: BenchmarkSection) -> None:
    """Benchmark backends (auto alone, or known backends once each) and at least one batch."""
    from ..bench import BACKENDS

    unknown = [name for name in b.backends if name not in BACKENDS and name != "auto"]
    if unknown:
        raise ConfigError(
            f"benchmark.backends: unknown {', '.join(unknown)} (available: {', '.join(BACKENDS)})"
        )
    if not b.backends or ("auto" in b.backends and len(b.backends) > 1):
        raise ConfigError(f"benchmark.backends: auto, or backends from the list, got {b.backends}")
    _refuse_duplicates("benchmark.backends", b.backends)
    if not b.batches:
        raise ConfigError("benchmark.batches: give at least one batch size, e.g. [1, 8]")


def _refuse_duplicates(key: str, items: list[str]) -> None:
    """A name listed twice is a slip (an edited copy of a line); refuse it rather than guess."""
    duplicated = _duplicates(items)
    if duplicated:
        raise ConfigError(f"{key}: {', '.join(duplicated)} given twice")


def _check_preprocess(p: PreprocessSection) -> None:
    """Input size and interpolation overrides must be ones the image loader can apply."""
    if p.input_size is not None and len(p.input_size) not in (2, 3):
        raise ConfigError(
            f"data.preprocess.input_size: [height, width] or [channels, height, width], "
            f"got {p.input_size}"
        )
    from ..models import INTERPOLATIONS

    if p.interpolation is not None and p.interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"data.preprocess.interpolation: one of {', '.join(INTERPOLATIONS)}, "
            f"got {p.interpolation!r}"
        )


def _check_tensorrt(t: TensorRTSection) -> None:
    """The TensorRT build settings, checked here so that a bad profile fails before the
    stages that come ahead of the export."""
    from ..exporters.tensorrt_build import PRECISIONS, SPARSITY_MODES, BatchProfile

    try:
        BatchProfile.parse(t.batch)
    except RmtDeployError as exc:
        raise ConfigError(f"export.tensorrt.batch: {str(exc).removeprefix('--batch ')}") from exc
    if t.precision not in PRECISIONS:
        raise ConfigError(f"export.tensorrt.precision: one of {PRECISIONS}, got {t.precision!r}")
    if t.sparsity not in SPARSITY_MODES:
        raise ConfigError(f"export.tensorrt.sparsity: one of {SPARSITY_MODES}, got {t.sparsity!r}")


def _check_strategy_settings(config: RunConfig) -> None:
    """The latency search's budget needs validation images, and `compress.settings` must be
    the strategy's own keys with its defaults' types, so that neither fails mid-run."""
    from ..strategies import STRATEGIES

    c = config.compress
    if c.strategy == "latency" and c.accuracy_budget is not None and config.data.val_images == 0:
        raise ConfigError(
            "compress.accuracy_budget needs held-out images: set data.val_images > 0 "
            "(or compress.accuracy_budget: null with settings.layer_error)"
        )
    if c.strategy in STRATEGIES:
        _check_settings_of(c.strategy, c.settings)


def _check_settings_of(strategy: str, settings: dict[str, Any]) -> None:
    """Each setting alone (so the error names compress.settings.<key>), against the
    strategy's registry (its types, then its ranges); then all of them together."""
    from ..strategies import STRATEGIES, StrategyError, check_settings

    for key, value in settings.items():
        where = f"compress.settings.{key}"
        try:
            coerced = check_settings(strategy, {key: value}, ranges=False).get(key, value)
        except StrategyError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        rule = STRATEGIES[strategy].rules.get(key)
        if rule is not None and coerced is not None and not rule.holds(coerced):
            raise ConfigError(f"{rule.message(where, coerced)} (strategy {strategy})")
    try:
        check_settings(strategy, settings)
    except StrategyError as exc:
        raise ConfigError(f"compress.settings: {exc}") from exc


def check_machine(config: RunConfig) -> None:
    """What the config asks of this machine — the compress device, the planning targets named,
    the power meter — checked by `run` before the first stage. Loading stays machine-free, so
    a GPU config can be read (and checked) anywhere."""
    _check_device_here(config.compress.device)
    if config.compress.strategy == "latency":
        _check_targets_here(config.compress.targets)
    if config.benchmark.power:
        _check_power_here()


def _check_device_here(device: str) -> None:
    """A CUDA device must be visible, and cuda:N one of them."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"compress.device: {device}, but no CUDA device is visible here "
            "(torch.cuda.is_available() is False): set compress.device: cpu, or run on a "
            "machine with an NVIDIA GPU and a CUDA build of torch"
        )
    index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"compress.device: {device}, but this machine has {count} CUDA device(s): "
            f"use cuda:0 to cuda:{count - 1}"
        )


# What each GPU runtime needs, said when a target of it cannot run here.
_RUNTIME_NEEDS = {
    "tensorrt": "TensorRT needs an NVIDIA GPU and the tensorrt package (pip install tensorrt)",
    "torch": "PyTorch CUDA needs an NVIDIA GPU and a CUDA build of torch",
}


def _check_targets_here(targets: list[str]) -> None:
    """Named GPU targets must run here (CPU ones are checked when planning starts: asking
    OpenVINO would load it into this process)."""
    from ..deploy import DEPLOYMENTS, unavailable

    for name in targets:
        deployment = DEPLOYMENTS.get(name)
        if deployment is None or deployment.device != "cuda":
            continue
        why = unavailable(deployment)
        if why is not None:
            needs = _RUNTIME_NEEDS.get(deployment.runtime, "it needs an NVIDIA GPU")
            raise ConfigError(
                f"compress.targets: {name} cannot run on this machine ({why}): {needs}; "
                "or plan for deployments this machine offers (compress.targets: [auto])"
            )


def _check_power_here() -> None:
    """Power is sampled by tegrastats or jtop, which only a Jetson has."""
    import importlib.util
    import shutil

    if shutil.which("tegrastats") is None and importlib.util.find_spec("jtop") is None:
        raise ConfigError(
            "benchmark.power: true needs a Jetson (tegrastats on PATH, or jetson-stats' jtop) "
            "and neither is here: set benchmark.power: false"
        )


def _check_backend_exports(config: RunConfig) -> None:
    """Backends that run an exported file need that export configured."""
    backends, export = config.benchmark.backends, config.export
    if "tensorrt" in backends and not export.onnx:
        raise ConfigError("benchmark.backends has tensorrt but export.onnx is false")
    if "tensorrt" in backends and export.tensorrt is None:
        raise ConfigError("benchmark.backends has tensorrt but export.tensorrt is not configured")
    if any(name.startswith("onnxruntime") for name in backends) and not export.onnx:
        raise ConfigError("benchmark.backends has onnxruntime but export.onnx is false")


def _duplicates(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({item for item in items if item in seen or seen.add(item)})


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"
