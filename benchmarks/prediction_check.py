"""How far the planner's predictions are from its whole-model measurements, per deployment.

    python benchmarks/prediction_check.py runs/repeat/vit0 runs/repeat/vit1 ... --name vit

Reads each run's `plan/planner.json`: for every finalist, the speedup the per-layer table
predicted (its own ratio: the dense time it was predicted from over its predicted time) and the
speedup measured whole, interleaved with the dense model on the same deployment. Prints and
saves, per deployment, the median and range of measured / predicted over every finalist of
every run (1.00 = exact; the issue's goal: within ±15 %).
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
        predicted = planner["candidates"][f["candidate"]]["predicted_speedup"]
        measured = dense[f["deployment"]] / f["measured_ms"]
        out.append(
            {
                "run": run.name,
                "engine": f["label"],
                "deployment": f["deployment"],
                "predicted_speedup": predicted,
                "measured_speedup": measured,
                "measured_over_predicted": measured / predicted,
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
    by = {}
    for r in rows:
        by.setdefault(r["deployment"], []).append(r["measured_over_predicted"])
    lines = [
        f"# {args.name}: predicted vs measured speedup of every finalist",
        "",
        f"{len(args.runs)} runs; CPU: {environment()['cpu']}. measured / predicted (1.00 = exact).",
        "",
        "| deployment | finalists | median | min | max | within ±15 % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for deployment, values in sorted(by.items()):
        inside = sum(0.85 <= v <= 1.15 for v in values)
        lines.append(
            f"| {deployment} | {len(values)} | {statistics.median(values):.2f} | "
            f"{min(values):.2f} | {max(values):.2f} | {inside} of {len(values)} |"
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
