"""`run(config)`: analyze → plan → compress (+recover) → evaluate → export → benchmark → report.

Every stage writes its artifacts into one output folder (atomically) and is recorded in
`manifest.json` with a key: the hash of the config it depends on and of the keys of the
stages before it. A rerun skips a stage whose key is unchanged and whose artifacts are all
there; a run killed mid-way redoes only the stage it was in (its files were never moved into
place). Changing, say, `benchmark.batches` reruns the benchmark and the report only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AssetsError, RmtDeployError
from ..paths import assets_dir, ensure_output_dir, file_sha256, read_json, write_json_atomic
from .config import RunConfig
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


# Stages run in a process of their own (pipeline/isolate.py): planning loads every runtime.
ISOLATED = ("plan",)


class StageDependencyError(RmtDeployError):
    """A stage was asked for while a stage it needs has not run (with this config)."""


@dataclass
class RunResult:
    output: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report: Path | None = None
    summaries: dict[str, dict] = field(default_factory=dict)  # per stage, from the manifest


class Manifest:
    """`manifest.json`: per stage its key, artifacts, timing and a small summary."""

    def __init__(self, out: Path):
        self.path = out / "manifest.json"
        self.data = read_json(self.path, "run manifest") if self.path.is_file() else {}
        self.data.setdefault("stages", {})

    def stage(self, name: str) -> dict | None:
        return self.data["stages"].get(name)

    def done(self, name: str, key: str, out: Path) -> bool:
        entry = self.stage(name)
        return (
            entry is not None
            and entry.get("key") == key
            and all((out / a).exists() for a in entry.get("artifacts", []))
        )

    def record(self, name: str, entry: dict) -> None:
        """Record `name` as done and forget every stage downstream of it: their artifacts
        were made from what `name` has just replaced."""
        self.data["stages"][name] = entry
        for later in STAGES:
            if later != name and name in _needed([later]):
                self.data["stages"].pop(later, None)
        write_json_atomic(self.path, self.data)


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
    model_id = file_sha256(checkpoint) if checkpoint and Path(checkpoint).is_file() else ""
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
    done in the output folder (with this config); `force` reruns them even if up to date."""
    from .stages import STAGE_FUNCTIONS, RunContext

    unknown = [s for s in stages or [] if s not in STAGES]
    if unknown:
        raise RmtDeployError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    out = ensure_output_dir(config.output)
    manifest = Manifest(out)
    try:
        assets = assets_dir(config.assets)
    except AssetsError:  # fine while every data path is absolute; loading says otherwise
        assets = Path(config.assets or "../shared/assets")
    keys = stage_keys(config, assets)
    selected = list(STAGES) if not stages else [s for s in STAGES if s in stages]
    if stages:
        for stage in selected:
            for dep in _needed([stage]):
                if dep not in selected and not manifest.done(dep, keys[dep], out):
                    raise StageDependencyError(
                        f"stage {stage} needs {dep}, which has not run in {out} with this config: "
                        f"run it first (--stages {dep},{stage}) or run the whole pipeline"
                    )
    ctx = RunContext(config, out, assets, progress, log)
    if any(not manifest.done(s, keys[s], out) or force for s in selected if s != "report"):
        ctx.validate()  # bad data, split or budget: one clear error before any stage runs
    write_json_atomic(out / "config.json", config.to_dict())
    result = RunResult(out)
    for stage in selected:
        if not force and manifest.done(stage, keys[stage], out):
            log(f"[{stage}] up to date, skipped")
            result.skipped.append(stage)
            continue
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
    report = out / "report.md"
    result.report = report if report.is_file() else None
    result.summaries = {
        name: entry.get("summary", {}) for name, entry in manifest.data["stages"].items()
    }
    return result
