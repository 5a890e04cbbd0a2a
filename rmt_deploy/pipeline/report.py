"""report.md for one pipeline run: accuracy, plan, predicted vs measured speed, timings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..bench import BenchResult, BenchSuite
from ..layout import RunLayout
from ..paths import read_json, write_json_atomic, write_text_atomic
from ..plan import CompressionPlan
from .config import RunConfig


def plan_coverage(plan: dict) -> str:
    """The plan's coverage line (planned / skipped by reason) from its JSON."""
    return CompressionPlan.from_dict(plan).coverage_line()


def _read(path: Path) -> dict | None:
    return read_json(path, path.name) if path.is_file() else None


@dataclass
class _RunFiles:
    """The stage outputs the report is made from, read once; a stage that has not run (or was
    skipped) reads as empty, so that a partial run still gets its report."""

    manifest: dict
    accuracy: dict
    plan: dict
    planner: dict | None
    bench: dict
    split: dict
    finetune: dict

    @classmethod
    def read(cls, out: Path) -> _RunFiles:
        """Each file from the run folder `out`, or its empty stand-in."""
        at = RunLayout(out)
        return cls(
            manifest=_read(at.manifest) or {"stages": {}},
            accuracy=_read(at.accuracy) or {},
            plan=_read(at.plan) or {},
            planner=_read(at.planner),
            bench=_read(at.bench) or {"results": [], "skipped": []},
            split=_read(at.split) or {},
            finetune=_read(at.finetune) or {},
        )


def write_run_report(ctx) -> list[Path]:
    """report.md and report.json from whatever stages of the run in `ctx.out` have finished."""
    out = ctx.out
    files = _RunFiles.read(out)
    config = ctx.config
    batch = config.compress.batch
    lines = [
        *_intro_lines(config, files.planner),
        *_data_lines(files.split),
        *_accuracy_lines(files.accuracy, config.compress.accuracy_budget),
        *_plan_lines(files.plan, files.planner),
        *recovery_lines(files.finetune),
    ]
    rows = bench_rows(files.bench)
    headline = _report_headline(out, files, rows, config)
    if rows:
        lines += speed_lines(rows, headline, batch)
        lines += baseline_lines(rows, files.planner, headline, batch, files.split)
        lines += _figure_and_skipped_lines(files.bench)
    lines += _stage_lines(files.manifest)
    record = {
        "model": config.model,
        "accuracy": files.accuracy,
        "plan_summary": files.plan.get("summary", {}),
        "shipped": files.accuracy.get("shipped"),
        "headline": headline,
        "measured": _measured_speedups(rows),
    }
    return [
        write_text_atomic(RunLayout(out).report_md, "\n".join(lines)),
        write_json_atomic(RunLayout(out).report_json, record),
    ]


def _strategy_line(config: RunConfig) -> str:
    """What was asked for in one sentence: the latency search names its targets and budget,
    a fixed strategy its sparsity; recovery follows either way."""
    c = config.compress
    if c.strategy == "latency":
        budget = (
            f", budget: {c.budget_metric} loss ≤ {c.accuracy_budget} on held-out images)"
            if c.accuracy_budget is not None
            else ")"
        )
        how = f" (for {', '.join(c.targets)} on {c.device}, batch {c.batch}{budget}"
    else:
        how = f" at sparsity {c.sparsity}"
    return (
        f"Strategy `{c.strategy}`{how}; recovery: {config.finetune.steps} fine-tune steps of "
        f"{config.finetune.batch_size}."
    )


def recovery_lines(finetune: dict) -> list[str]:
    """What recovery did: steps and time for the compressed model and for the dense reference
    given the same, and the compressed model's top-1 on the validation part before and after."""
    done = {k: v for k, v in finetune.items() if v.get("steps")}
    if not done:
        return []
    lines = ["## Recovery", "", "| model | steps | images | seconds | first → last loss |"]
    lines.append("|---|---:|---:|---:|---|")
    for name, r in done.items():
        lines.append(
            f"| {name} | {r['steps']} | {r['images']} | {r['seconds']:.1f} | "
            f"{r['first_loss']:.3f} → {r['last_loss']:.3f} |"
        )
    check = finetune.get("compressed", {}).get("check")
    if check:
        what = "top-1" if check["metric"] == "top1" else "top-1 agreement with dense"
        lines += [
            "",
            f"Compressed model, {what} on the {check['images']} validation images (never the "
            f"test part): **{check['before']:.2f} % before recovery, {check['after']:.2f} % "
            "after**.",
        ]
    return [*lines, ""]


def _intro_lines(config: RunConfig, planner: dict | None) -> list[str]:
    """Title and request, then, when the planner found no plan worth shipping, say up front
    that the dense model ships and what might find one."""
    lines = [f"# rmt-deploy run: {config.model}", "", _strategy_line(config), ""]
    if planner and planner.get("outcome", "compressed") != "compressed":
        lines += [
            f"**Shipped: the dense model** on {planner.get('chosen_deployment')}. No compressed "
            f"plan ships: {planner['outcome']}. The search is in `plan/planner.md`; a larger "
            "budget, fine-tuning before planning, or another target may find one "
            "(`--require-compression` makes this an error).",
            "",
        ]
    return lines


_SPLIT_PARTS = (("calib", "calibration"), ("val", "plan validation"), ("test", "test"))


def _data_lines(split: dict) -> list[str]:
    """The disjoint data parts, so that a reader sees results come from unseen images."""
    parts = split.get("parts")
    if not parts:
        return []
    lines = ["## Data", "", "| part | images | from | labels |", "|---|---:|---|---|"]
    for part, label in _SPLIT_PARTS:
        if part in parts:
            entry = parts[part]
            lines.append(
                f"| {label} | {entry['count']} | `{entry['from']}` | "
                f"{'yes' if entry['labelled'] else 'no'} |"
            )
    return lines + [
        "",
        "The parts are disjoint (a seeded permutation, seed "
        f"{split.get('seed')}; the file names are in `evaluate/split.json`): plans are chosen "
        "on the validation part and reported on the test part only.",
        "",
    ]


def _accuracy_lines(accuracy: dict, budget: float | None) -> list[str]:
    """The Accuracy section: top-1, fidelity and the budget metric, each where measured."""
    lines = ["## Accuracy", ""]
    if not accuracy:
        return lines
    if accuracy.get("top1"):
        lines += _top1_lines(accuracy)
    if accuracy.get("fidelity"):
        lines += _fidelity_lines(accuracy)
    if accuracy.get("budget_loss") is not None:
        lines += [
            f"Budget metric `{accuracy['budget_metric']}` on the test part: "
            f"{accuracy['budget_loss']:.4g} ± {accuracy.get('budget_loss_se') or 0:.2g} "
            f"(standard error; budget {budget}).",
            "",
        ]
    return lines


def _top1_lines(accuracy: dict) -> list[str]:
    """Top-1 of each model on the test part and the compressed model's cost in points."""
    return [
        f"Top-1 on the {accuracy['test_images']} test images:",
        "",
        "| model | top-1 % |",
        "|---|---:|",
        *[f"| {name} | {value:.2f} |" for name, value in accuracy["top1"].items()],
        "",
        f"**Cost: {accuracy['loss_pp']:+.2f} pp** against `{accuracy['reference']}` "
        "(positive = the compressed model is worse).",
        "",
    ]


def _fidelity_lines(accuracy: dict) -> list[str]:
    """How close each model's outputs stay to the reference's (labels or not): cosine always,
    top-1 changes and KL where the logits allowed them."""
    lines = [
        f"Fidelity to `{accuracy['reference']}` on the {accuracy['test_images']} test images:",
        "",
        "| model | 1 − cosine | top-1 changed (pp) | KL (nats) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in accuracy["fidelity"].items():
        rest = f"{row['disagreement_pp']:.2f} | {row['kl']:.4f} |" if "kl" in row else "– | – |"
        lines.append(f"| {name} | {row['cosine_distance']:.5f} | " + rest)
    return lines + [""]


def _plan_lines(plan: dict, planner: dict | None) -> list[str]:
    """The Plan section: coverage, weights before and after, and the first skipped layers
    (the rest are counted, not listed, to keep the report short)."""
    summary = plan.get("summary", {})
    if not summary:
        return []
    lines = [
        "## Plan",
        "",
        f"{plan_coverage(plan)}; {summary['params_before']:,} → {summary['params_after']:,} "
        f"weights in the planned layers ({100 * summary['sparsity']:.1f} % fewer). Per-layer "
        "reasons: `plan/plan.json`" + (", search: `plan/planner.md`." if planner else "."),
        "",
    ]
    skipped = plan.get("skipped", [])
    for entry in skipped[:8]:
        lines.append(f"- skipped `{entry['name']}` ({entry['kind']}): {entry['reason']}")
    if len(skipped) > 8:
        lines.append(f"- … {len(skipped) - 8} more in `plan/plan.json`")
    return lines + [""]


def _report_headline(out: Path, files: _RunFiles, rows: dict, config: RunConfig) -> dict:
    """`speed_headline` plus what needs the rest of the run: the shipped engine's top-1 loss
    against the reference (only when both were measured on the whole test part) and the kit
    command that reproduces it."""
    batch = config.compress.batch
    timed_on = files.plan.get("config", {}).get("deployment")  # a strategy's own deployment
    headline = speed_headline(rows, files.planner, batch, timed_on)
    top1 = files.accuracy.get("top1") or {}
    if "shipped_top1" in headline and config.benchmark.agreement_images is None and top1:
        # the shipped engine in its runtime against the reference model, same test images
        reference = top1[files.accuracy["reference"]]
        headline["shipped_loss_pp"] = reference - headline["shipped_top1"]
    command = kit_command(out, headline.get("shipped", ""), batch, files.split)
    if command:
        headline["kit_command"] = command
    return headline


def _figure_and_skipped_lines(bench: dict) -> list[str]:
    """The benchmark's plots and the variant/backend pairs it could not run, with why."""
    lines = ["", "![latency vs accuracy](bench/pareto.png)", ""]
    lines += ["![latency by batch](bench/latency_by_batch.png)", ""]
    for s in bench.get("skipped", []):
        lines.append(f"- not run: {s['variant']} / {s['backend']}: {s['reason']}")
    return lines + [""]


def _stage_lines(manifest: dict) -> list[str]:
    """Each stage's time and when it finished, from the run's manifest."""
    lines = ["## Stages", "", "| stage | seconds | finished |", "|---|---:|---|"]
    for name, entry in manifest["stages"].items():
        lines.append(f"| {name} | {entry.get('seconds', '–')} | {entry.get('finished', '')} |")
    return lines + [""]


def _measured_speedups(rows: dict[tuple[str, str, int], BenchResult]) -> dict[str, float]:
    """Compressed against dense on the same deployment and batch (`backend/bN` → ×), from the
    benchmark stage's own interleaved timings (`bench_rows`)."""
    return {
        f"{b}/b{n}": rows["dense", b, n].latency.median_ms / r.latency.median_ms
        for (v, b, n), r in rows.items()
        if v == "compressed" and ("dense", b, n) in rows
    }


# What a user gets from the field's own tools with their defaults: ONNX Runtime fp32, OpenVINO
# at its default precision and f32 (bf16), NNCF's INT8. ONNX Runtime's INT8 counts when its file
# is the full model by the default recipe; mixed or tuned, it is this tool's own engine.
FIELD_BASELINES = ("onnxruntime", "openvino", "openvino-f32", "openvino-bf16", "openvino-nncf-int8")


def field_baselines(dense: dict, planner: dict | None) -> dict:
    """The dense rows (deployment → row, within budget) that are the field's own engines."""
    from ..exporters.quantize import DEFAULT_RECIPE

    field = set(FIELD_BASELINES)
    recipe = (planner or {}).get("int8_recipe", {}).get("recipe")
    default = recipe is None or recipe == DEFAULT_RECIPE.to_dict()
    if default and not (planner or {}).get("int8_float_nodes"):
        field.add("onnxruntime-int8")
    return {b: r for b, r in dense.items() if b in field}


def bench_rows(bench: dict | None) -> dict:
    """The benchmark's results, typed, by (variant, backend, batch)."""

    if not bench or not bench.get("results"):
        return {}
    return {(r.variant, r.backend, r.batch): r for r in BenchSuite.from_dict(bench).results}


def speed_headline(
    rows: dict, planner: dict | None, batch: int, timed_on: str | None = None
) -> dict:
    """The shipped engine against the best dense deployment within budget and against dense
    ONNX Runtime fp32, at the deployment batch, from the benchmark stage's interleaved run.
    The shipped deployment is the planner's choice, else the one a strategy timed its plan on
    (`channels`), else ONNX Runtime fp32."""
    deployment = (planner or {}).get("chosen_deployment") or timed_on or "onnxruntime"
    variant = "compressed" if ("compressed", deployment, batch) in rows else "dense"
    shipped = rows.get((variant, deployment, batch))
    within = {
        e["deployment"]
        for e in (planner or {}).get("baselines", [])
        if e.get("within_budget", True)
    } or {b for (v, b, n) in rows if v == "dense"}
    dense = {b: r for (v, b, n), r in rows.items() if v == "dense" and n == batch and b in within}
    if shipped is None or not dense:
        return {}
    best = min(dense, key=lambda b: dense[b].latency.median_ms)
    mine = shipped.latency.median_ms
    out = {
        "batch": batch,
        "shipped": f"{variant} / {deployment}",
        "shipped_ms": mine,
        "best_dense": best,
        "best_dense_ms": dense[best].latency.median_ms,
        "speedup_vs_best_dense": dense[best].latency.median_ms / mine,
    }
    field = field_baselines(dense, planner)
    if field:
        best_field = min(field, key=lambda b: field[b].latency.median_ms)
        out["best_baseline"] = best_field
        out["best_baseline_ms"] = field[best_field].latency.median_ms
        out["speedup_vs_best_baseline"] = out["best_baseline_ms"] / mine
    if shipped.top1 is not None:  # in its own runtime and precision, on the test part
        out["shipped_top1"] = shipped.top1
    if ("dense", "onnxruntime", batch) in rows:
        ort = rows["dense", "onnxruntime", batch].latency.median_ms
        out["speedup_vs_onnxruntime_fp32"] = ort / mine
    chosen = next(
        (e for e in (planner or {}).get("finalists", []) if e["label"] == planner["chosen"]), None
    )
    if chosen is not None:
        baseline = next(e for e in planner["baselines"] if e["deployment"] == chosen["deployment"])
        # The prediction's own ratio (table latency against the dense time it was made from):
        # dividing by a baseline timed later mixes two moments of a drifting machine.
        candidates = planner.get("candidates", [])
        index = chosen.get("candidate")
        if index is not None and index < len(candidates):
            out["predicted_speedup"] = candidates[index]["predicted_speedup"]
        else:
            out["predicted_speedup"] = baseline["measured_ms"] / chosen["predicted_ms"]
        out["planner_measured_speedup"] = baseline["measured_ms"] / chosen["measured_ms"]
        if chosen.get("confirmed"):  # head to head with the best dense engine
            out["planner_confirmed_speedup"] = chosen["confirmed"]["median"]
            out["planner_confirmed_low"] = chosen["confirmed"]["low"]
        measured_same = rows.get(("dense", deployment, batch))
        if measured_same is not None:
            out["measured_speedup_same_deployment"] = measured_same.latency.median_ms / mine
    return out


def speed_lines(rows: dict, headline: dict, batch: int) -> list[str]:
    """The Speed section: every engine at the deployment batch, fastest first, the shipped
    one marked, then the headline sentence and the other batch sizes."""
    lines = [
        "## Speed",
        "",
        f"Every engine at the deployment batch {batch}, timed interleaved in one run (one call "
        "each in turn); × against the best dense deployment within budget.",
        "",
        "| model | deployment | median ms | p90 ms | × vs best dense | top-1 % |",
        "|---|---|---:|---:|---:|---:|",
    ]
    best = headline.get("best_dense_ms")
    for (variant, backend, n), r in sorted(rows.items(), key=lambda kv: kv[1].latency.median_ms):
        if n != batch:
            continue
        median = r.latency.median_ms
        ratio = f"×{best / median:.2f}" if best else "–"
        top1 = "–" if r.top1 is None else f"{r.top1:.2f}"
        mark = " **(ships)**" if f"{variant} / {backend}" == headline.get("shipped") else ""
        lines.append(
            f"| {variant}{mark} | {backend} | {median:.3f} | {r.latency.p90_ms:.3f} | "
            f"{ratio} | {top1} |"
        )
    if headline:
        lines += ["", _shipped_sentence(headline)]
    lines += _other_batch_lines(rows, batch)
    return lines


def _shipped_sentence(headline: dict) -> str:
    """The Speed section's verdict: the shipped engine against the dense baselines, then what
    the planner predicted and measured beside what this run measures (drift shows there)."""
    text = (
        f"**Shipped: {headline['shipped']}: ×{headline['speedup_vs_best_dense']:.2f} over the "
        f"best dense deployment ({headline['best_dense']})"
    )
    if "speedup_vs_best_baseline" in headline:
        text += (
            f", ×{headline['speedup_vs_best_baseline']:.2f} over the best of the field's own "
            f"engines within budget ({headline['best_baseline']})"
        )
    if "speedup_vs_onnxruntime_fp32" in headline:
        text += f", ×{headline['speedup_vs_onnxruntime_fp32']:.2f} over dense ONNX Runtime fp32"
    text += ".**"
    if "predicted_speedup" in headline:
        text += (
            f" On its own deployment the planner predicted ×{headline['predicted_speedup']:.2f}"
            f" from the per-layer table (calibrated on a whole-model probe), measured "
            f"×{headline['planner_measured_speedup']:.2f} whole while planning"
        )
        if "planner_confirmed_speedup" in headline:
            text += (
                f" and ×{headline['planner_confirmed_speedup']:.2f} (95 % lower bound "
                f"×{headline['planner_confirmed_low']:.2f}) head to head with the best dense "
                "engine"
            )
        text += (
            "; this run measures "
            f"×{headline.get('measured_speedup_same_deployment', float('nan')):.2f}."
        )
    return text


def _other_batch_lines(rows: dict, batch: int) -> list[str]:
    """Compressed against dense at the batch sizes other than the deployment's, so that a
    speedup that holds only at one batch is visible."""
    others = sorted({n for (_, _, n) in rows} - {batch})
    if not others:
        return []
    lines = [
        "",
        "Other batch sizes (dense vs compressed on the same deployment):",
        "",
        "| deployment | batch | dense ms | compressed ms | × |",
        "|---|---:|---:|---:|---:|",
    ]
    for (variant, backend, n), r in rows.items():
        if variant == "compressed" and n in others and ("dense", backend, n) in rows:
            dense = rows["dense", backend, n].latency.median_ms
            mine = r.latency.median_ms
            lines.append(f"| {backend} | {n} | {dense:.3f} | {mine:.3f} | ×{dense / mine:.2f} |")
    return lines


def baseline_lines(rows: dict, planner: dict | None, headline: dict, batch: int, split) -> list:
    """Each baseline a user would deploy instead, named, with its time, top-1 and budget
    verdict (and why a deployment was dropped)."""
    from ..deploy import DEPLOYMENTS

    verdicts = {e["deployment"]: e for e in (planner or {}).get("baselines", [])}
    count = (split or {}).get("parts", {}).get("test", {}).get("count")
    where = f" on the {count} test images" if count else ""
    lines = [
        "",
        "## Baselines",
        "",
        "The dense model in every deployment a user would pick instead; the headline is the "
        f"speedup over the fastest of them within budget. Top-1 in each engine's own runtime and "
        f"precision{where}.",
        "",
        "| deployment | what it is | median ms | top-1 % | within budget |",
        "|---|---|---:|---:|---|",
    ]
    for (variant, backend, n), r in sorted(rows.items(), key=lambda kv: kv[0][1]):
        if variant != "dense" or n != batch:
            continue
        verdict = verdicts.get(backend, {})
        budget = {True: "yes", False: "no"}.get(verdict.get("within_budget"), "–")
        if verdict.get("note"):
            budget += f" ({verdict['note']})"
        what = DEPLOYMENTS[backend].summary if backend in DEPLOYMENTS else backend
        top1 = "–" if r.top1 is None else f"{r.top1:.2f}"
        lines.append(f"| {backend} | {what} | {r.latency.median_ms:.3f} | {top1} | {budget} |")
    for name, why in ((planner or {}).get("skipped_deployments") or {}).items():
        lines.append(f"| {name} | not run here | – | – | {why} |")
    if headline.get("shipped_top1") is not None and headline.get("kit_command"):
        lines += [
            "",
            f"The shipped engine ({headline['shipped']}) scores **{headline['shipped_top1']:.2f} %"
            f"** top-1{where}, measured in its own runtime"
            + (
                f" ({headline['shipped_loss_pp']:+.2f} pp lost against the reference model)"
                if "shipped_loss_pp" in headline
                else ""
            )
            + ". The target kit runs it on the same images (from the repository's root):",
            "",
            f"    {headline['kit_command']}",
        ]
    return lines


# The file of a variant's export folder each deployment runs, and the kit's flags for it.
KIT = {
    "onnxruntime": ("model.onnx", ""),
    "onnxruntime-int8": ("model.int8.onnx", ""),
    "openvino": ("model.onnx", " --openvino"),
    "openvino-f32": ("model.onnx", " --openvino f32"),
    "openvino-bf16": ("model.onnx", " --openvino bf16"),
    "openvino-int8": ("model.int8.onnx", " --openvino"),
    "openvino-nncf-int8": ("model.nncf.xml", ""),
}


def kit_command(out: Path, shipped: str, batch: int, split: dict) -> str | None:
    """`python export/run.py …` for the shipped engine on the run's test part."""
    variant, _, deployment = shipped.partition(" / ")
    test = (split or {}).get("parts", {}).get("test", {}).get("from")
    if deployment not in KIT or not test:
        return None
    file, flags = KIT[deployment]
    return (
        f"python export/run.py --model {out / 'export' / variant / file}{flags} --images {test} "
        f"--split {out / 'evaluate' / 'split.json'} --batch {batch}"
    )
