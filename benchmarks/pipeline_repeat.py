"""Figures people can trust: the whole pipeline run N times into fresh folders, per model.

    python benchmarks/pipeline_repeat.py --model vit --repeats 5
    python benchmarks/pipeline_repeat.py --model resnet56 --repeats 5
    python benchmarks/pipeline_repeat.py --model effnet --repeats 5 --tag xeon_amx
    python benchmarks/pipeline_repeat.py --model resnet56_channels --repeats 3
    python benchmarks/pipeline_repeat.py --model resnet56_joint --repeats 3

Each repetition runs `rmt-deploy run` on the model's example config (planning, timing and
benchmarking from scratch) and reads its report.json. The result file keeps every run and
the median and range of each figure — speedup of the shipped engine over the best dense
deployment and over dense ONNX Runtime fp32, the planner's predicted and measured speedups,
top-1 lost on the test images, which engine shipped — with the CPU named. Run it on an idle
machine: another job on the cores moves every figure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import sys
import time
from pathlib import Path

from _common import RESULTS, environment

from rmt_deploy.paths import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "vit": "examples/cpu_onnxruntime.yaml",
    "resnet56": "examples/cpu_onnxruntime_resnet56.yaml",
    "effnet": "examples/cpu_onnxruntime_effnet_lite1.yaml",
    "resnet56_channels": "examples/cpu_resnet56_channels.yaml",
    "resnet56_joint": "examples/cpu_resnet56_joint.yaml",
}
FIGURES = (
    "speedup_vs_best_baseline",
    "speedup_vs_best_dense",
    "speedup_vs_onnxruntime_fp32",
    "predicted_speedup",
    "planner_measured_speedup",
    "planner_confirmed_speedup",
    "measured_speedup_same_deployment",
    "loss_pp",
    "shipped_top1",
    "shipped_loss_pp",
    "plan_seconds",
    "total_seconds",
)


def one_run(config_path: str, out: Path, assets: str | None) -> dict:
    import rmt_deploy as rd

    config = rd.load_config(ROOT / config_path)
    config.output = str(out)
    if assets:
        config.assets = assets
    shutil.rmtree(out, ignore_errors=True)
    began = time.perf_counter()
    result = rd.run(config, progress=False, log=lambda line: print("   ", line, flush=True))
    seconds = time.perf_counter() - began
    coverage = result.summaries.get("plan", {}).get("coverage")
    return {**read_run(out), "plan": coverage, "total_seconds": round(seconds, 1)}


def read_run(out: Path) -> dict:
    """The figures of one finished run folder, from its report.json and planner.json."""
    report = json.loads((out / "report.json").read_text())
    headline = report.get("headline", {})
    accuracy = report.get("accuracy", {})
    manifest = json.loads((out / "manifest.json").read_text())
    planner_path = out / "plan" / "planner.json"  # absent when the config plans otherwise
    planner = json.loads(planner_path.read_text()) if planner_path.is_file() else {}
    return {
        **{k: headline.get(k) for k in FIGURES if k in headline},
        "shipped": headline.get("shipped"),
        "best_dense": headline.get("best_dense"),
        "best_dense_ms": headline.get("best_dense_ms"),
        "best_baseline": headline.get("best_baseline"),
        "shipped_ms": headline.get("shipped_ms"),
        "loss_pp": accuracy.get("loss_pp"),
        "reference": accuracy.get("reference"),  # dense_finetuned where the dense recovered too
        "top1": accuracy.get("top1"),
        "test_images": accuracy.get("test_images"),
        "plan_seconds": manifest["stages"]["plan"]["seconds"],
        # why the plan is what it is: each deployment's probe κ, the outcome, the baselines'
        # notes (INT8 losses), kept so the README's explanations have a committed source
        "kappa": {d: c.get("kappa") for d, c in planner.get("calibrations", {}).items()},
        "outcome": planner.get("outcome"),
        "baseline_notes": {
            b.get("label"): b.get("note") for b in planner.get("baselines", []) if b.get("note")
        },
        "shipped_top1": headline.get("shipped_top1"),
        # every engine of the benchmark stage at the deployment batch: ms and top-1 on the
        # test part in its own runtime (the baselines a user would pick, and the shipped one)
        "engines": _engines(out, headline.get("batch")),
        "int8_recipe": planner.get("int8_recipe", {}).get("label"),
        "int8_float_nodes": planner.get("int8_float_nodes"),
        # the planner's own head-to-head timings: every baseline and finalist, ms and bound
        "planner_engines": {
            e["label"]: {"ms": e.get("measured_ms"), "loss_upper": e.get("heldout_loss_upper"),
                         "within_budget": e.get("within_budget")}
            for e in [*planner.get("baselines", []), *planner.get("finalists", [])]
        },  # fmt: skip
        "int8_mixed": [
            {"float_layers": m["float_layers"], "loss_upper": m["loss_upper"]}
            for m in planner.get("int8_mixed", [])
        ],
    }


def _engines(out: Path, batch: int | None) -> dict:
    bench = json.loads((out / "bench" / "bench.json").read_text())
    return {
        f"{r['variant']} / {r['backend']}": {
            "ms": r["latency"]["median_ms"],
            "top1": r.get("top1"),
        }
        for r in bench["results"]
        if r["batch"] == batch
    }


def _child(config_path: str, out: Path, assets: str | None, conn) -> None:
    try:
        conn.send(one_run(config_path, out, assets))
    except BaseException as exc:
        conn.send(f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def in_fresh_process(config_path: str, out: Path, assets: str | None) -> dict:
    """One repetition in a spawned process, as `rmt-deploy run` would be: the benchmark stage
    leaves OpenVINO and ONNX Runtime loaded, and the next run's training in the same process
    died here with a segmentation fault."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(config_path, out, assets, child))
    process.start()
    child.close()
    try:
        answer = parent.recv()
    except EOFError:
        answer = f"the run's process died (exit code {process.exitcode})"
    process.join()
    if isinstance(answer, str):
        raise SystemExit(f"run into {out} failed: {answer}")
    return answer


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for key in FIGURES:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            summary[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "n": len(values),
            }
    shipped = [r.get("shipped") for r in runs]
    summary["shipped"] = {s: shipped.count(s) for s in set(shipped)}
    return summary


def write(model: str, env: dict, runs: list[dict], summary: dict, tag: str = "") -> None:
    stem = RESULTS / f"pipeline_repeat_{model}{'_' + tag if tag else ''}"
    write_json_atomic(
        stem.with_suffix(".json"), {"environment": env, "runs": runs, "summary": summary}
    )
    lines = [
        f"# {model}: the pipeline {len(runs)} times into fresh folders",
        "",
        f"CPU: {env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} threads), "
        f"{env['date']}; `{env['command']}`.",
        "",
        "| figure | median | min | max | runs |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in FIGURES:
        if key in summary:
            s = summary[key]
            lines.append(
                f"| {key} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} | {s['n']} |"
            )
    lines += ["", "Shipped: " + ", ".join(f"{k} ×{v}" for k, v in summary["shipped"].items()), ""]
    lines += [
        "| run | shipped | × best dense | × ORT fp32 | predicted × | loss pp | plan |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for i, r in enumerate(runs):

        def fmt(key, r=r):
            return "–" if r.get(key) is None else f"{r[key]:.3f}"

        lines.append(
            f"| {i} | {r.get('shipped')} | {fmt('speedup_vs_best_dense')} | "
            f"{fmt('speedup_vs_onnxruntime_fp32')} | {fmt('predicted_speedup')} | "
            f"{fmt('loss_pp')} | {r.get('plan')} |"
        )
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {stem}.md and .json")


def refresh(args) -> int:
    """The summary again from the run folders, their reports rewritten by the current code
    (the timings and accuracies are the runs' own; only what is read from them changes)."""
    from rmt_deploy.paths import assets_dir
    from rmt_deploy.pipeline import RunConfig
    from rmt_deploy.pipeline.report import write_run_report
    from rmt_deploy.pipeline.stages import RunContext

    stem = RESULTS / f"pipeline_repeat_{args.model}{'_' + args.tag if args.tag else ''}"
    saved = json.loads(stem.with_suffix(".json").read_text())
    runs = []
    for i, old in enumerate(saved["runs"]):
        out = args.workdir / f"{args.model}{i}"
        config = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
        write_run_report(RunContext(config, out, assets_dir(args.assets), progress=False))
        runs.append({**old, **read_run(out)})
    write(args.model, saved["environment"], runs, summarize(runs), args.tag)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--assets", default=None)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "repeat")
    parser.add_argument(
        "--tag", default="", help="result file suffix, e.g. the machine (keeps machines apart)"
    )
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="rewrite each existing run's report (rmt-deploy report) and the summary, no runs",
    )
    args = parser.parse_args()
    if args.refresh:
        return refresh(args)
    env = environment()
    runs = []
    for i in range(args.repeats):
        print(f"== {args.model} run {i + 1}/{args.repeats}", flush=True)
        runs.append(
            in_fresh_process(CONFIGS[args.model], args.workdir / f"{args.model}{i}", args.assets)
        )
        print("  ", json.dumps(runs[-1]), flush=True)
        # after every run: partial results survive
        write(args.model, env, runs, summarize(runs), args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
