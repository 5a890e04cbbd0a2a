"""report.md for one pipeline run: accuracy, plan, predicted vs measured speed, timings."""

from __future__ import annotations

from pathlib import Path

from ..paths import read_json, write_json_atomic, write_text_atomic
from ..plan import CompressionPlan


def plan_coverage(plan: dict) -> str:
    """The plan's coverage line (planned / skipped by reason) from its JSON."""
    return CompressionPlan.from_dict(plan).coverage_line()


def _read(path: Path) -> dict | None:
    return read_json(path, path.name) if path.is_file() else None


def write_run_report(ctx) -> list[Path]:
    out = ctx.out
    manifest = _read(out / "manifest.json") or {"stages": {}}
    accuracy = _read(out / "evaluate" / "accuracy.json") or {}
    plan = _read(out / "plan" / "plan.json") or {}
    planner = _read(out / "plan" / "planner.json")
    bench = _read(out / "bench" / "bench.json") or {"results": [], "skipped": []}
    split = _read(out / "evaluate" / "split.json") or {}
    config = ctx.config
    c = config.compress
    metric = c.budget_metric
    lines = [
        f"# rmt-deploy run: {config.model}",
        "",
        f"Strategy `{c.strategy}`"
        + (
            f" (for {', '.join(c.targets)} on {c.device}, batch {c.batch}"
            + (
                f", budget: {metric} loss ≤ {c.accuracy_budget} on held-out images)"
                if c.accuracy_budget is not None
                else ")"
            )
            if c.strategy == "latency"
            else f" at sparsity {c.sparsity}"
        )
        + f"; recovery: {config.finetune.steps} fine-tune steps of {config.finetune.batch_size}.",
        "",
    ]
    if planner and planner.get("outcome", "compressed") != "compressed":
        lines += [
            f"**Shipped: the dense model** on {planner.get('chosen_deployment')}. No compressed "
            f"plan ships: {planner['outcome']}. The search is in `plan/planner.md`; a larger "
            "budget, fine-tuning before planning, or another target may find one "
            "(`--require-compression` makes this an error).",
            "",
        ]
    if split.get("parts"):
        lines += ["## Data", "", "| part | images | from | labels |", "|---|---:|---|---|"]
        for part, label in (("calib", "calibration"), ("val", "plan validation"), ("test", "test")):
            if part in split["parts"]:
                entry = split["parts"][part]
                lines.append(
                    f"| {label} | {entry['count']} | `{entry['from']}` | "
                    f"{'yes' if entry['labelled'] else 'no'} |"
                )
        lines += [
            "",
            "The parts are disjoint (a seeded permutation, seed "
            f"{split.get('seed')}; the file names are in `evaluate/split.json`): plans are chosen "
            "on the validation part and reported on the test part only.",
            "",
        ]
    lines += ["## Accuracy", ""]
    if accuracy:
        reference = accuracy["reference"]
        if accuracy.get("top1"):
            lines += [
                f"Top-1 on the {accuracy['test_images']} test images:",
                "",
                "| model | top-1 % |",
                "|---|---:|",
                *[f"| {name} | {value:.2f} |" for name, value in accuracy["top1"].items()],
                "",
                f"**Cost: {accuracy['loss_pp']:+.2f} pp** against `{reference}` "
                "(positive = the compressed model is worse).",
                "",
            ]
        if accuracy.get("fidelity"):
            lines += [
                f"Fidelity to `{reference}` on the {accuracy['test_images']} test images:",
                "",
                "| model | 1 − cosine | top-1 changed (pp) | KL (nats) |",
                "|---|---:|---:|---:|",
            ]
            for name, row in accuracy["fidelity"].items():
                lines.append(
                    f"| {name} | {row['cosine_distance']:.5f} | "
                    + (
                        f"{row['disagreement_pp']:.2f} | {row['kl']:.4f} |"
                        if "kl" in row
                        else "– | – |"
                    )
                )
            lines.append("")
        if accuracy.get("budget_loss") is not None:
            lines += [
                f"Budget metric `{accuracy['budget_metric']}` on the test part: "
                f"{accuracy['budget_loss']:.4g} ± {accuracy.get('budget_loss_se') or 0:.2g} "
                f"(standard error; budget {c.accuracy_budget}).",
                "",
            ]
    summary = plan.get("summary", {})
    if summary:
        coverage = plan_coverage(plan)
        lines += [
            "## Plan",
            "",
            f"{coverage}; {summary['params_before']:,} → {summary['params_after']:,} weights "
            f"in the planned layers ({100 * summary['sparsity']:.1f} % fewer). Per-layer reasons: "
            "`plan/plan.json`" + (", search: `plan/planner.md`." if planner else "."),
            "",
        ]
        for entry in plan.get("skipped", [])[:8]:
            lines.append(f"- skipped `{entry['name']}` ({entry['kind']}): {entry['reason']}")
        if len(plan.get("skipped", [])) > 8:
            lines.append(f"- … {len(plan['skipped']) - 8} more in `plan/plan.json`")
        lines.append("")
    rows = {(r["variant"], r["backend"], r["batch"]): r for r in bench["results"]}
    headline = speed_headline(rows, planner, config.compress.batch)
    top1 = accuracy.get("top1") or {}
    if "shipped_top1" in headline and config.benchmark.agreement_images is None and top1:
        # the shipped engine in its runtime against the reference model, same test images
        headline["shipped_loss_pp"] = top1[accuracy["reference"]] - headline["shipped_top1"]
    command = kit_command(out, headline.get("shipped", ""), config.compress.batch, split)
    if command:
        headline["kit_command"] = command
    if rows:
        lines += speed_lines(rows, headline, config.compress.batch)
        lines += baseline_lines(rows, planner, headline, config.compress.batch, split)
        lines += ["", "![latency vs accuracy](bench/pareto.png)", ""]
        lines += ["![latency by batch](bench/latency_by_batch.png)", ""]
        for s in bench.get("skipped", []):
            lines.append(f"- not run: {s['variant']} / {s['backend']}: {s['reason']}")
        lines.append("")
    lines += ["## Stages", "", "| stage | seconds | finished |", "|---|---:|---|"]
    for name, entry in manifest["stages"].items():
        lines.append(f"| {name} | {entry.get('seconds', '–')} | {entry.get('finished', '')} |")
    lines.append("")
    record = {
        "model": config.model,
        "accuracy": accuracy,
        "plan_summary": summary,
        "shipped": accuracy.get("shipped"),
        "headline": headline,
        "measured": {
            f"{b}/b{n}": rows["dense", b, n]["latency"]["median_ms"] / r["latency"]["median_ms"]
            for (v, b, n), r in rows.items()
            if v == "compressed" and ("dense", b, n) in rows
        },
    }
    return [
        write_text_atomic(out / "report.md", "\n".join(lines)),
        write_json_atomic(out / "report.json", record),
    ]


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


def speed_headline(rows: dict, planner: dict | None, batch: int) -> dict:
    """The shipped engine against the best dense deployment within budget and against dense
    ONNX Runtime fp32, at the deployment batch, from the benchmark stage's interleaved run."""
    deployment = (planner or {}).get("chosen_deployment") or "onnxruntime"
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
    best = min(dense, key=lambda b: dense[b]["latency"]["median_ms"])
    mine = shipped["latency"]["median_ms"]
    out = {
        "batch": batch,
        "shipped": f"{variant} / {deployment}",
        "shipped_ms": mine,
        "best_dense": best,
        "best_dense_ms": dense[best]["latency"]["median_ms"],
        "speedup_vs_best_dense": dense[best]["latency"]["median_ms"] / mine,
    }
    field = field_baselines(dense, planner)
    if field:
        best_field = min(field, key=lambda b: field[b]["latency"]["median_ms"])
        out["best_baseline"] = best_field
        out["best_baseline_ms"] = field[best_field]["latency"]["median_ms"]
        out["speedup_vs_best_baseline"] = out["best_baseline_ms"] / mine
    if shipped.get("top1") is not None:  # in its own runtime and precision, on the test part
        out["shipped_top1"] = shipped["top1"]
    if ("dense", "onnxruntime", batch) in rows:
        ort = rows["dense", "onnxruntime", batch]["latency"]["median_ms"]
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
            out["measured_speedup_same_deployment"] = measured_same["latency"]["median_ms"] / mine
    return out


def speed_lines(rows: dict, headline: dict, batch: int) -> list[str]:
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
    for (variant, backend, n), r in sorted(
        rows.items(), key=lambda kv: kv[1]["latency"]["median_ms"]
    ):
        if n != batch:
            continue
        median = r["latency"]["median_ms"]
        ratio = f"×{best / median:.2f}" if best else "–"
        top1 = "–" if r.get("top1") is None else f"{r['top1']:.2f}"
        mark = " **(ships)**" if f"{variant} / {backend}" == headline.get("shipped") else ""
        lines.append(
            f"| {variant}{mark} | {backend} | {median:.3f} | {r['latency']['p90_ms']:.3f} | "
            f"{ratio} | {top1} |"
        )
    if headline:
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
        lines += ["", text]
    others = sorted({n for (_, _, n) in rows} - {batch})
    if others:
        lines += [
            "",
            "Other batch sizes (dense vs compressed on the same deployment):",
            "",
            "| deployment | batch | dense ms | compressed ms | × |",
            "|---|---:|---:|---:|---:|",
        ]
        for (variant, backend, n), r in rows.items():
            if variant == "compressed" and n in others and ("dense", backend, n) in rows:
                dense = rows["dense", backend, n]["latency"]["median_ms"]
                mine = r["latency"]["median_ms"]
                lines.append(
                    f"| {backend} | {n} | {dense:.3f} | {mine:.3f} | ×{dense / mine:.2f} |"
                )
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
        top1 = "–" if r.get("top1") is None else f"{r['top1']:.2f}"
        lines.append(
            f"| {backend} | {what} | {r['latency']['median_ms']:.3f} | {top1} | {budget} |"
        )
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
