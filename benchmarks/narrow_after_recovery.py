"""Narrow the dense model after its recovery, not before: does starting from the adapted model
close ResNet-56's accuracy gap at the same widths?

A finished `rmt-deploy run` of a channels config (default: the first of the three
`pipeline_repeat --model resnet56_channels` runs) holds its plan (the widths, the kept
channels), the dense model after the run's recovery (`compress/dense_finetuned`, S steps) and
the narrowed model it shipped (narrowed first, then recovered S steps). Here the same plan is
applied to the *recovered* dense model, which is then recovered S more steps by the run's own
recipe (same options, distilled from the recovered dense model): it has seen 2S steps in all,
so the fair reference is the dense model given 2S steps too — the recovered dense model given
S more (from the labels, as the pipeline's reference). Latency is the run's: the widths are the
same. Top-1 on the run's own test part (never used to choose the plan), paired intervals.
Prints and saves `results/narrow_after_recovery[_tag].{json,md}`.

    python benchmarks/narrow_after_recovery.py --run runs/repeat/resnet56_channels0 --tag epyc_zen5
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, hits, log, paired, result_stem  # noqa: E402

from rmt_deploy.models import load_model  # noqa: E402
from rmt_deploy.paths import assets_dir, write_json_atomic, write_text_atomic  # noqa: E402
from rmt_deploy.pipeline import RunConfig  # noqa: E402
from rmt_deploy.pipeline.stages import RunContext, recovery_options  # noqa: E402
from rmt_deploy.verbs import compress_and_recover, recover_  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=ROOT / "runs/repeat/resnet56_channels0")
    p.add_argument("--assets", default=None)
    p.add_argument("--tag", default="")
    return p.parse_args()


def context(run: Path, assets: str | None) -> RunContext:
    for needed in ("config.json", "compress/dense_finetuned.safetensors", "plan/plan.json"):
        if not (run / needed).is_file():
            raise SystemExit(f"{run}: no {needed} (a finished channels run with recovery)")
    config = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    return RunContext(config, run, assets_dir(assets), progress=True)


def main() -> int:
    args = parse()
    ctx = context(args.run, args.assets)
    options = recovery_options(ctx)
    inputs = {"calib": lambda: ctx.calib, "train": lambda: ctx.train}
    recovered = load_model(ctx.config.model, ctx.layout.dense_finetuned).eval()
    began = time.perf_counter()
    log(f"narrowing the recovered dense model, then {options.steps} steps")
    after, info = compress_and_recover(
        recovered, ctx.load_plan(), options, teacher=recovered, **inputs
    )
    seconds = {"narrowed_after": round(time.perf_counter() - began, 1)}
    log(f"the fair reference: the recovered dense model given {options.steps} more steps")
    began = time.perf_counter()
    reference = copy.deepcopy(recovered)
    recover_(reference, options, **inputs)
    seconds["reference_2s"] = round(time.perf_counter() - began, 1)
    models = {
        "dense (pretrained)": ctx.dense,
        f"dense, {options.steps} steps": recovered,
        f"dense, {2 * options.steps} steps": reference,
        f"narrowed, then {options.steps} steps (the run's)": ctx.compressed(),
        f"dense {options.steps} steps, narrowed, {options.steps} more": after.eval(),
    }
    got = {}
    for name, model in models.items():
        got[name] = hits(model.eval(), ctx.test)
        log(f"{name}: {100 * got[name].mean():.2f} %")
    write(args, options.steps, got, seconds, info)
    return 0


def write(args, steps: int, got: dict, seconds: dict, info: dict) -> None:
    env = environment()
    names = list(got)
    pairs = [(names[4], names[2]), (names[4], names[1]), (names[3], names[1])]
    rows = [{"model": n, "top1": 100 * float(h.mean())} for n, h in got.items()]
    deltas = [{"model": a, "against": b, "pp": paired(got[a], got[b])} for a, b in pairs]
    stem = result_stem("narrow_after_recovery", args.tag)
    write_json_atomic(
        stem.with_suffix(".json"),
        {"environment": env, "run": str(args.run), "steps": steps,
         "test_images": len(got[names[0]]), "rows": rows, "deltas": deltas, "seconds": seconds,
         "recovery": info},
    )  # fmt: skip
    lines = [
        "# ResNet-56 narrowed after its recovery instead of before",
        "",
        f"CPU: {env['cpu']} ({env['cpu_count']} cores), {env['date']}; `{env['command']}`. "
        f"Widths and kept channels from `{args.run}/plan` (latency as that run measured it); "
        f"recovery {steps} steps per phase by the run's recipe; top-1 on the run's "
        f"{len(got[names[0]])} test images; one run.",
        "",
        "| model | top-1 % |",
        "|---|---:|",
        *[f"| {r['model']} | {r['top1']:.2f} |" for r in rows],
        "",
        "| model | against | Δ pp (95 %) |",
        "|---|---|---:|",
        *[
            f"| {d['model']} | {d['against']} | {d['pp'][0]:+.2f} [{d['pp'][1]:+.2f}, "
            f"{d['pp'][2]:+.2f}] |"
            for d in deltas
        ],
    ]
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
