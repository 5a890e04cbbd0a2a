"""`run(config)`: analyze → plan → compress (+recover) → evaluate → export → benchmark → report.

Every stage writes its artifacts into one output folder (atomically) and is recorded in
`manifest.json` with a key: the hash of the config it depends on and of the keys of the
stages before it. A rerun skips a stage whose key is unchanged and whose artifacts are all
there as it wrote them (the sizes the manifest recorded, JSON that parses: a truncated or
edited artifact reruns its stage); a run killed mid-way redoes only the stage it was in
(its files were never moved into place). Changing, say, `benchmark.batches` reruns the
benchmark and the report only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AssetsError, DataError, OutputError, RmtDeployError
from ..layout import RunLayout
from ..paths import (
    assets_dir,
    ensure_output_dir,
    file_sha256,
    is_dir,
    is_file,
    output_lock,
    path_problem,
    read_json,
    write_json_atomic,
)
from .config import ConfigError, RunConfig, check_machine
from .isolate import run_isolated

STAGES = ("analyze", "plan", "compress", "evaluate", "export", "benchmark", "report")
DEPENDS: dict[str, tuple[str, ...]] = {
    "analyze": (),
    "plan": ("analyze",),
    "compress": ("plan",),
    "evaluate": ("compress",),
    "export": ("compress",),
    "benchmark": ("export",),
    "report": ("evaluate", "benchmark"),
}
# The config sections each stage reads (besides what its dependencies read).
_SPLIT = ("data.test", "data.loader", "data.calib", "data.calib_images", "data.val_images")
READS: dict[str, tuple[str, ...]] = {
    "analyze": ("model", "checkpoint", "analyze"),
    "plan": ("compress", "data.train", "data.preprocess", "seed", *_SPLIT),
    "compress": ("finetune", "data.train", "data.calib", "data.preprocess", "seed", "analyze"),
    "evaluate": (*_SPLIT, "data.test_images", "data.preprocess", "compress.budget_metric"),
    "export": (
        "export",
        "data.preprocess",
        "data.test_images",
        "data.calib",
        "data.train",
        "benchmark.backends",
    ),
    "benchmark": ("benchmark", "data.preprocess", "data.test_images"),
    "report": (),
}


# Stages that load the runtimes (ONNX Runtime, OpenVINO, quantizers, TensorRT) run in a process
# of their own (pipeline/isolate.py), so the caller's process never loads them: a second
# `rd.run` in one process died in its training after an earlier benchmark had loaded OpenVINO.
ISOLATED = ("plan", "export", "benchmark")


class StageDependencyError(RmtDeployError):
    """A stage was asked for while a stage it needs has not run (with this config)."""


class StageNameError(ConfigError):
    """`--stages` names no stage, an unknown one, or one twice."""


def check_stages(stages: list[str] | None) -> list[str] | None:
    """The stages asked for, checked: None runs them all; an empty list (`--stages ,`), an
    unknown name or a repeated one is an error listing the stages, not "run everything"."""
    if stages is None:
        return None
    listing = f"stages: {', '.join(STAGES)} (comma-separated, e.g. --stages benchmark,report)"
    if not stages:
        raise StageNameError(f"no stage named; {listing}")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise StageNameError(f"unknown stage(s) {', '.join(unknown)}; {listing}")
    repeated = sorted({s for s in stages if stages.count(s) > 1})
    if repeated:
        raise StageNameError(f"stage(s) {', '.join(repeated)} named twice; {listing}")
    return list(stages)


@dataclass
class RunResult:
    output: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report: Path | None = None
    summaries: dict[str, dict] = field(default_factory=dict)  # per stage, from the manifest


class Manifest:
    """`manifest.json`: per stage its key, artifacts (with their sizes), timing and a small
    summary."""

    def __init__(self, out: Path):
        self.out = out
        self.path = RunLayout(out).manifest
        self.data = read_json(self.path, "run manifest") if self.path.is_file() else {}
        self.data.setdefault("stages", {})

    def stage(self, name: str) -> dict | None:
        return self.data["stages"].get(name)

    def has_key(self, name: str, key: str) -> bool:
        """Whether stage `name` was last run with `key` (its artifacts aside)."""
        entry = self.stage(name)
        return entry is not None and entry.get("key") == key

    def artifact_problem(self, name: str) -> str | None:
        """Why an artifact of stage `name` is not as the stage wrote it (None when all are):
        missing, another size (truncated, overwritten) or JSON that does not parse."""
        entry = self.stage(name) or {}
        sizes = entry.get("sizes", {})
        for artifact in entry.get("artifacts", []):
            problem = _artifact_problem(self.out / artifact, sizes.get(artifact))
            if problem is not None:
                return f"{artifact} {problem}"
        return None

    def done(self, name: str, key: str, out: Path | None = None) -> bool:
        """Run with `key`, and every artifact still as the stage wrote it."""
        return self.has_key(name, key) and self.artifact_problem(name) is None

    def record(self, name: str, entry: dict) -> None:
        """Record `name` as done (with its artifacts' sizes) and forget every stage downstream
        of it: their artifacts were made from what `name` has just replaced."""
        sizes = {a: (self.out / a).stat().st_size for a in entry.get("artifacts", [])}
        self.data["stages"][name] = {**entry, "sizes": sizes}
        for later in STAGES:
            if later != name and name in _needed([later]):
                self.data["stages"].pop(later, None)
        write_json_atomic(self.path, self.data)


def _artifact_problem(path: Path, size: int | None) -> str | None:
    """What is wrong with one recorded artifact, or None. Sizes are compared where the
    manifest has them (not in one written before they were recorded)."""
    if not path.is_file():
        return "is missing" if not path.exists() else None
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"has {actual} bytes, not the {size} its stage wrote"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return "is not valid JSON"
    return None


def _lookup(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def stage_keys(config: RunConfig, assets: Path | None = None) -> dict[str, str]:
    """Each stage's key: hash of what it reads and of its dependencies' keys (the analysis
    also hashes the checkpoint file and the assets folder that models and data come from)."""
    raw = config.to_dict()
    checkpoint = config.checkpoint
    model_id = file_sha256(checkpoint) if checkpoint and is_file(checkpoint) else ""
    keys: dict[str, str] = {}
    for stage in STAGES:
        payload = {
            "stage": stage,
            "reads": {r: _lookup(raw, r) for r in READS[stage]},
            "deps": [keys[d] for d in DEPENDS[stage]],
            "checkpoint_sha256": model_id if stage == "analyze" else "",
            "assets": str(assets.resolve()) if assets is not None and stage == "analyze" else "",
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        keys[stage] = hashlib.sha256(blob).hexdigest()[:16]
    return keys


def _needed(stages: list[str]) -> list[str]:
    """The requested stages plus everything they depend on, in pipeline order."""
    want: set[str] = set()

    def add(stage: str) -> None:
        if stage not in want:
            want.add(stage)
            for dep in DEPENDS[stage]:
                add(dep)

    for stage in stages:
        add(stage)
    return [s for s in STAGES if s in want]


def run(
    config: RunConfig,
    *,
    stages: list[str] | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Run the pipeline; `stages` limits it to some stages, whose dependencies must already be
    done in the output folder (with this config); `force` reruns them even if up to date.

    Everything that can be checked without running a stage is checked first — the config, the
    stage names, the data folders and their labels, the model on a batch — so bad input fails
    in one line with nothing written. The output folder is locked while the run lasts
    (`.rmt-deploy.lock`): a second run into it is refused instead of mixing the results."""
    config = RunConfig.from_dict(config.to_dict())  # edited in place since loading? checked again
    stages = check_stages(stages)
    out_path = Path(config.output)
    check_output_place(config, out_path)
    existed = is_dir(out_path)
    out = ensure_output_dir(out_path)
    try:
        with output_lock(out), _caches_out_of_home():
            return _run_locked(config, out, stages, force, progress, log)
    finally:
        if not existed:  # refused before anything was written: leave no empty folder behind
            with contextlib.suppress(OSError):
                out.rmdir()


@contextlib.contextmanager
def _caches_out_of_home():
    """While the run lasts (its stage processes inherit it), the libraries that would write
    under HOME write nowhere or in the temp directory: ONNX Runtime's telemetry store and
    device id (~/.cache/Microsoft) off, matplotlib's config and font cache (~/.config and
    ~/.cache/matplotlib) in a private temp folder, kept between runs. A value the user set is
    kept. (OpenVINO's and NNCF's telemetry still write ~/intel: only HOME moves it.)"""
    wanted = {"ORT_DISABLE_TELEMETRY": "1", "MPLCONFIGDIR": str(_private_temp("matplotlib"))}
    added = {key: value for key, value in wanted.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _private_temp(name: str) -> Path:
    """`name` in this user's own folder of the temp directory (another user's, or a link
    there, is not used: a fresh folder is made instead)."""
    base = Path(tempfile.gettempdir()) / f"rmt-deploy-{os.getuid()}"
    with contextlib.suppress(OSError):
        base.mkdir(mode=0o700, exist_ok=True)
    info = base.lstat() if base.exists() else None
    if info is None or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return Path(tempfile.mkdtemp(prefix=f"rmt-deploy-{name}-"))
    if info.st_mode & 0o022:  # writable by others: not ours alone
        return Path(tempfile.mkdtemp(prefix=f"rmt-deploy-{name}-"))
    (base / name).mkdir(exist_ok=True)
    return base / name


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_output_place(config: RunConfig, out: Path) -> None:
    """Refuse, before anything is written, an output folder inside the data the run reads or
    the shared assets (the run would write among the images), and a per-layer `table` that
    does not exist outside the output folder (a new table is written only inside it)."""
    try:
        assets = assets_dir(config.assets)
    except AssetsError:
        assets = None
    inputs = {key: Path(value) for key, (value, _) in _data_folders(config).items()}
    inputs = {
        k: (p if p.is_absolute() or assets is None else assets / p) for k, p in inputs.items()
    }
    if assets is not None:
        inputs["the shared assets"] = assets
    for key, folder in inputs.items():
        if is_dir(folder) and _inside(out, folder):
            raise OutputError(
                f"output {out} is inside {key} ({folder}): the run would write among its "
                "files; choose an output folder outside it"
            )
    table = config.compress.settings.get("table")
    if table and not Path(table).is_file() and not _inside(Path(table), out):
        raise OutputError(
            f"compress.settings.table: {table} does not exist, and a new table is written only "
            f"inside the output folder {out}: point it at an existing table or into {out}"
        )


def _run_locked(
    config: RunConfig,
    out: Path,
    stages: list[str] | None,
    force: bool,
    progress: bool,
    log: Callable[[str], None],
) -> RunResult:
    from .stages import STAGE_FUNCTIONS, RunContext

    manifest = Manifest(out)
    try:
        assets = assets_dir(config.assets)
    except AssetsError:  # fine while every data path is absolute; loading says otherwise
        assets = Path(config.assets or "../shared/assets")
    keys = stage_keys(config, assets)
    selected = list(STAGES) if not stages else [s for s in STAGES if s in stages]
    if stages:
        _check_dependencies(selected, manifest, keys, out)
    ctx = RunContext(config, out, assets, progress, log)
    if any(not manifest.done(s, keys[s], out) or force for s in selected if s != "report"):
        check_machine(config)  # a device, target or power meter this machine lacks
        check_data(ctx)  # missing folders, labels that would be wrong: before any stage runs
        ctx.validate()  # bad data, split or budget: one clear error before any stage runs
    write_json_atomic(RunLayout(out).config, config.to_dict())
    result = RunResult(out)
    for stage in selected:
        if not force and manifest.has_key(stage, keys[stage]):
            problem = manifest.artifact_problem(stage)
            if problem is None:
                log(f"[{stage}] up to date, skipped")
                result.skipped.append(stage)
                continue
            log(f"[{stage}] {problem}: not up to date, running it again")
        log(f"[{stage}] running")
        began = time.perf_counter()
        if stage in ISOLATED:
            artifacts, summary = run_isolated(stage, config, out, assets, progress, log)
        else:
            artifacts, summary = STAGE_FUNCTIONS[stage](ctx)
        seconds = time.perf_counter() - began
        manifest.record(
            stage,
            {
                "key": keys[stage],
                "artifacts": [str(Path(a).relative_to(out)) for a in artifacts],
                "seconds": round(seconds, 1),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "summary": summary,
            },
        )
        log(f"[{stage}] done in {seconds:.1f} s")
        result.ran.append(stage)
    report = RunLayout(out).report_md
    result.report = report if report.is_file() else None
    result.summaries = {
        name: entry.get("summary", {}) for name, entry in manifest.data["stages"].items()
    }
    return result


def _check_dependencies(
    selected: list[str], manifest: Manifest, keys: dict[str, str], out: Path
) -> None:
    """Every stage the selected ones need is selected too, or done with this config."""
    for stage in selected:
        for dep in _needed([stage]):
            if dep not in selected and not manifest.done(dep, keys[dep], out):
                damaged = manifest.has_key(dep, keys[dep]) and manifest.artifact_problem(dep)
                state = f"is damaged ({damaged})" if damaged else "has not run"
                raise StageDependencyError(
                    f"stage {stage} needs {dep}, which {state} in {out} with this config: "
                    f"run it first (--stages {dep},{stage}) or run the whole pipeline"
                )


def _data_folders(config: RunConfig) -> dict[str, tuple[str, bool]]:
    """The data folders this run reads: config key → (value, whether its labels are used)."""
    d, c = config.data, config.compress
    folders: dict[str, tuple[str, bool]] = {}
    from ..strategies import needs_training

    trains = config.finetune.steps > 0 or needs_training(c.strategy)
    if d.train not in (None, "calib") and (trains or d.calib == "train"):
        folders["data.train"] = (d.train, trains)
    if d.loader is None and d.test is not None:
        folders["data.test"] = (d.test, True)
    if d.calib not in ("train", "test"):
        folders["data.calib"] = (d.calib, False)
    return folders


def check_data(ctx) -> None:
    """Every data folder the run reads exists, and its class labels are the model's.

    The stages label class sub-folders by the model's class names where it has them, else by
    sorted position (`verbs.labelled_images`, as the CLI does), which is right only when a
    folder holds exactly the reference classes in order: the training folder's classes for the
    test folder, the model's `label_names` for the training folder. A test folder with only
    some of the classes would be scored against shifted labels (0 % top-1), so it is refused
    here, with the fix."""
    from ..data import (
        class_folders,
        class_index,
        load_image_dataset,
        model_label_names,
        model_num_outputs,
    )

    folders = _data_folders(ctx.config)
    paths = {}
    for key, (value, _) in folders.items():
        problem = path_problem(value)
        if problem:
            raise DataError(f"{key}: {value}: {problem}")
        path = ctx.data_path(value)
        if not is_dir(path):
            where = "" if Path(value).is_absolute() else f" (nor inside the assets {ctx.assets})"
            raise DataError(
                f"{key}: folder {value} not found{where}: fix the path, or set "
                "RMT_DEPLOY_ASSETS / --assets to the folder that holds it"
            )
        paths[key] = path
    labelled = {key: paths[key] for key, (_, used) in folders.items() if used}
    if not labelled:
        return
    label_names = model_label_names(ctx.dense)
    outputs = model_num_outputs(ctx.dense, ctx.input_shape)
    train_classes = class_folders(paths["data.train"]) if "data.train" in paths else None
    for key, path in labelled.items():
        names = class_folders(path)
        if names is None:  # labels.csv (checked against the outputs) or unlabelled images
            if (path / "labels.csv").is_file():
                load_image_dataset(path, num_outputs=len(label_names or []) or outputs)
            continue
        reference, source = label_names, "the model's label_names"
        if key == "data.test" and train_classes is not None:
            reference, source = train_classes, f"data.train ({paths['data.train']})"
        _, index = class_index(names, reference, outputs, f"{key} ({path})")
        if any(index[name] != i for i, name in enumerate(names)):
            missing = [c for c in (reference or []) if c not in index]
            raise DataError(
                f"{key} ({path}) holds {len(names)} class folders, not the {len(reference or [])} "
                f"classes of {source} (missing: {', '.join(missing[:5]) or 'none'}"
                f"{', …' if len(missing) > 5 else ''}): labelled by position its labels would be "
                "wrong; give the full folder (one sub-folder per class) or a labels.csv"
            )
