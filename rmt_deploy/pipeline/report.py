"""report.md for one pipeline run: accuracy, plan, predicted vs measured speed, timings."""

from __future__ import annotations

from pathlib import Path

from ..paths import read_json, write_json_atomic, write_text_atomic


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
    config = ctx.config
    lines = [
        f"# rmt-deploy run: {config.model}",
        "",
        f"Strategy `{config.compress.strategy}`"
        + (
            f" (latency-aware on {config.compress.backend}, batch {config.compress.batch}, "
            + (
                f"accuracy budget {config.compress.accuracy_budget} pp)"
                if config.compress.layer_error is None
                else f"fixed layer error {config.compress.layer_error})"
            )
            if config.compress.strategy == "latency"
            else f" at sparsity {config.compress.sparsity}"
        )
        + f"; recovery: {config.finetune.steps} fine-tune steps of {config.finetune.batch_size}.",
        "",
        "## Accuracy",
        "",
    ]
    if accuracy:
        lines += [
            f"Top-1 on {accuracy['test_images']} test images (disjoint from the "
            f"{config.data.val_images} images that validated the plan):",
            "",
            "| model | top-1 % |",
            "|---|---:|",
            *[f"| {name} | {value:.2f} |" for name, value in accuracy["top1"].items()],
            "",
            f"**Cost: {accuracy['loss_pp']:+.2f} pp** against `{accuracy['reference']}` "
            "(positive = the compressed model is worse).",
            "",
        ]
    summary = plan.get("summary", {})
    if summary:
        lines += [
            "## Plan",
            "",
            f"{summary['layers']} layers: {summary['lowrank_layers']} low-rank, "
            f"{summary['nm24_layers']} 2:4, {summary['mask_layers']} masked, "
            f"{summary['dense_layers']} dense; {summary['params_before']:,} → "
            f"{summary['params_after']:,} weights ({100 * summary['sparsity']:.1f} % fewer). "
            "Per-layer reasons: `plan/plan.json`"
            + (", search: `plan/planner.md`." if planner else "."),
            "",
        ]
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
