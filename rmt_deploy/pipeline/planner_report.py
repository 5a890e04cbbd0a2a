"""planner.md and planner.json: what the latency-aware plan search measured and chose — the
baselines, the validated plans, the finalists timed whole and head to head."""

from __future__ import annotations

from pathlib import Path

from ..paths import write_json_atomic, write_text_atomic


def write_planner(folder: Path, report, outcome: str | None = None) -> list[Path]:
    """planner.md / planner.json (and layer_tables.json, reusable as compress.settings.table
    on the same model, batch and machine) in `folder`; `outcome` says why no plan ships."""
    lines = _header(report, outcome)
    for section in (_engines, _head_to_head, _calibrations, _candidates):
        lines += section(report)
    for note in report.notes:
        lines += [f"Note: {note}", ""]
    if report.calibration:
        lines += [
            "Calibration: output errors are cross-validated over folds of calibration images; "
            "ranks whose folds disagree by more than 2× move to the safe rank where the worst "
            "fold meets the error. Per-layer tables: `plan/layer_tables.json`.",
        ]
    record = {**report.to_dict(), "outcome": outcome or report.outcome}
    written = [
        write_json_atomic(folder / "planner.json", record),
        write_text_atomic(folder / "planner.md", "\n".join(lines) + "\n"),
    ]
    if report.tables:
        written.append(write_json_atomic(folder / "layer_tables.json", report.tables))
    return written


def _header(report, outcome: str | None) -> list[str]:
    if report.budget is None:
        budget = "Fixed per-layer error."
    else:
        dense = report.dense_heldout_top1
        budget = (
            f"Budget: {report.budget_metric} loss ≤ {report.budget} (95 % upper bound) on "
            f"{report.heldout_images} held-out images"
            + (f" (dense top-1 {dense:.2f} %)." if dense is not None else ".")
        )
    skipped = report.skipped_deployments
    not_here = (
        "; not here: " + "; ".join(f"{n} ({why})" for n, why in skipped.items()) if skipped else ""
    )
    lines = [
        f"# Latency-aware plan (batch {report.batch})",
        "",
        f"Deployments: {', '.join(report.deployments)}{not_here}. {budget}",
        "",
    ]
    if outcome:
        lines += [f"**No compressed plan ships: {outcome}.**", ""]
    return lines


def _number(value, form: str) -> str:
    return "–" if value is None else format(value, form)


def _engines(report) -> list[str]:
    engines = [*report.baselines, *report.finalists]
    if not engines:
        return []
    lines = [
        "## Engines timed whole (interleaved)",
        "",
        "| engine | predicted ms | measured ms (IQR) | held-out loss ± se | 95 % bound | "
        "within budget | chosen |",
        "|---|---:|---:|---:|---:|:-:|:-:|",
    ]
    for e in engines:
        measured = (
            "–" if e.measured_ms is None else f"{e.measured_ms:.2f} ({e.q1_ms:.2f}–{e.q3_ms:.2f})"
        )
        loss = "–" if e.heldout_loss is None else f"{e.heldout_loss:.3g} ± {e.heldout_loss_se:.2g}"
        lines.append(
            f"| {e.label} | {_number(e.predicted_ms, '.2f')} | {measured} | {loss} | "
            f"{_number(e.heldout_loss_upper, '.3g')} | {'yes' if e.within_budget else 'no'} | "
            f"{'✔' if e.label == report.chosen else ''} |"
        )
        if e.note:
            lines.append(f"| ↳ {e.note} | | | | | | |")
    return [*lines, ""]


def _head_to_head(report) -> list[str]:
    confirmed = [e for e in report.finalists if e.confirmed]
    if not confirmed:
        return []
    lines = [
        "## Head to head with the best dense engine",
        "",
        "A plan ships only when the one-sided 95 % lower bound of its speedup, timed alone "
        "with the best dense engine (paired per-call ratios, bootstrap), reaches "
        "`min_speedup`.",
        "",
        "| plan | against | × median | 95 % bounds | pairs |",
        "|---|---|---:|---:|---:|",
    ]
    for e in confirmed:
        c = e.confirmed
        lines.append(
            f"| {e.label} | {c['against']} | ×{c['median']:.3f} | "
            f"×{c['low']:.3f}–×{c['high']:.3f} | {c['pairs']} |"
        )
    return [*lines, ""]


def _calibrations(report) -> list[str]:
    if not report.calibrations:
        return []
    lines = [
        "## Prediction calibration",
        "",
        "Predicted ms = dense ms − κ · (the table's summed per-layer savings); κ is measured "
        "on a whole-model probe (the most aggressive allocation) timed with the dense model.",
        "",
        "| deployment | probe layers | predicted saving | measured saving | κ |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, c in report.calibrations.items():
        measured = "–" if c["measured_share"] is None else f"{100 * c['measured_share']:.1f} %"
        lines.append(
            f"| {name} | {c['probe_layers']} | {100 * c['predicted_share']:.1f} % | "
            f"{measured} | {c['kappa']:.2f} |"
        )
    return [*lines, ""]


def _candidates(report) -> list[str]:
    if not report.candidates:
        return []
    lines = [
        "## Plans validated",
        "",
        "| deployment | low-rank layers | params | predicted damage | table ms | "
        "predicted ms | predicted × | held-out loss ± se | 95 % bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cand in report.candidates:
        loss = (
            "–"
            if cand.heldout_loss is None
            else f"{cand.heldout_loss:.3g} ± {cand.heldout_loss_se:.2g}"
        )
        lines.append(
            f"| {cand.deployment} | {cand.lowrank_layers} | {cand.params_after:,} | "
            f"{cand.damage:.2e} | {_number(cand.table_ms, '.2f')} | {cand.predicted_ms:.2f} | "
            f"×{cand.predicted_speedup:.2f} | {loss} | {_number(cand.heldout_loss_upper, '.3g')} |"
        )
    return [*lines, ""]
