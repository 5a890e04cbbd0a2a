"""How far the planner's predictions are from its whole-model measurements, per deployment.

    python benchmarks/prediction_check.py runs/repeat/vit0 runs/repeat/vit1 ... --name vit

Reads each run's `plan/planner.json`: for every finalist, the speedup the planner predicted (its
own ratio: the dense time it was predicted from over its predicted time; the per-layer table's
savings scaled by the deployment's whole-model probe), the table's uncalibrated prediction, and
the speedup measured whole, interleaved with the dense model on the same deployment. Prints
and saves, per deployment, the median and range of measured / predicted over every finalist of
every run (1.00 = exact; the issue's goal: within ±15 %), calibrated and uncalibrated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from _common import RESULTS, environment


def ratios(run: Path) -> list[dict]:
    planner = json.loads((run / "plan" / "planner.json").read_text())
    dense = {b["deployment"]: b["measured_ms"] for b in planner["baselines"]}
    out = []
    for f in planner["finalists"]:
        cand = planner["candidates"][f["candidate"]]
        predicted = cand["predicted_speedup"]
        measured = dense[f["deployment"]] / f["measured_ms"]
        table_ms = cand.get("table_ms")  # absent in runs before the probe calibration
        table = None if table_ms is None else predicted * cand["predicted_ms"] / table_ms
        out.append(
            {
                "run": run.name,
                "engine": f["label"],
                "deployment": f["deployment"],
                "predicted_speedup": predicted,
                "measured_speedup": measured,
                "measured_over_predicted": measured / predicted,
                "table_speedup": table,
                "measured_over_table": None if table is None else measured / table,
                "chosen": f["label"] == planner.get("chosen"),
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run output folders")
    parser.add_argument("--name", required=True, help="the result file's name")
    args = parser.parse_args()
    rows = [r for run in args.runs for r in ratios(run)]
    by, by_table = {}, {}
    for r in rows:
        by.setdefault(r["deployment"], []).append(r["measured_over_predicted"])
        if r["measured_over_table"] is not None:
            by_table.setdefault(r["deployment"], []).append(r["measured_over_table"])
    lines = [
        f"# {args.name}: predicted vs measured speedup of every finalist",
        "",
        f"{len(args.runs)} runs; CPU: {environment()['cpu']}. measured / predicted (1.00 = exact).",
        "",
        "| deployment | finalists | median | min | max | within ±15 % | uncalibrated: "
        "median | min | max | within ±15 % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cells(values):
        if not values:
            return "– | – | – | –"
        inside = sum(0.85 <= v <= 1.15 for v in values)
        return (
            f"{statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | "
            f"{inside} of {len(values)}"
        )

    for deployment, values in sorted(by.items()):
        lines.append(
            f"| {deployment} | {len(values)} | {cells(values)} | "
            f"{cells(by_table.get(deployment, []))} |"
        )
    chosen = [r for r in rows if r["chosen"]]
    lines += ["", "Chosen plans:", ""]
    lines += [
        f"- {r['run']}: {r['engine']}: predicted ×{r['predicted_speedup']:.2f}, measured "
        f"×{r['measured_speedup']:.2f} (measured / predicted {r['measured_over_predicted']:.2f})"
        for r in chosen
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    stem = RESULTS / f"prediction_{args.name}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
