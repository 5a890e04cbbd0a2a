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
    planner = (
        _read(out / "plan" / "planner.json") if ctx.config.compress.strategy == "latency" else None
    )
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
            f" (latency-aware on {c.backend}, batch {c.batch}, "
            + (
                f"budget: {metric} loss ≤ {c.accuracy_budget} on held-out images)"
                if c.layer_error is None
                else f"fixed layer error {c.layer_error})"
            )
            if c.strategy == "latency"
            else f" at sparsity {c.sparsity}"
        )
        + f"; recovery: {config.finetune.steps} fine-tune steps of {config.finetune.batch_size}.",
        "",
    ]
    if planner and planner.get("outcome", "compressed") != "compressed":
        lines += [
            f"**Shipped: the dense model.** No compressed plan fits the budget: "
            f"{planner['outcome']}. The search is in `plan/planner.md`; a larger budget, "
            "fine-tuning before planning, or another target may find one "
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
    predicted = None
    if planner and planner.get("chosen_layer_error") is not None:
        for cand in planner["candidates"]:
            if cand["layer_error"] == planner["chosen_layer_error"]:
                predicted = cand["predicted_speedup"]
    if rows:
        lines += [
            "## Speed",
            "",
            "Median latency, dense vs compressed, measured interleaved in one run.",
            "",
            "| backend | batch | dense ms | compressed ms | measured × | predicted × |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for (variant, backend, batch), r in rows.items():
            if variant != "compressed" or ("dense", backend, batch) not in rows:
                continue
            dense = rows["dense", backend, batch]["latency"]["median_ms"]
            mine = r["latency"]["median_ms"]
            pred = "–"
            if (
                predicted is not None
                and planner["batch"] == batch
                and backend == planner["backend"]
            ):
                pred = f"×{predicted:.2f}"
            lines.append(
                f"| {backend} | {batch} | {dense:.3f} | {mine:.3f} | ×{dense / mine:.2f} | {pred} |"
            )
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
        "predicted_speedup": predicted,
        "planner_backend": planner and planner["backend"],
        "planner_batch": planner and planner["batch"],
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
