"""What the one table of widths and ranks offers and what its DP takes, per model: the
`channels` strategy with `lowrank: true` planned (no recovery, no probing) on calibration
images from the training folder, its table summarized per form (entries, options measured
faster than dense in context, the most they could save) and the chosen allocation (groups
narrowed, layers factorized, predicted time). A plan, not an accuracy: the finalists are not
recovered here.

    python benchmarks/joint_table.py --model cifar_vit_tiny --deployment openvino --speedup 1.5 \
        --repeats 3 --tag epyc_zen5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, log, result_stem  # noqa: E402

from rmt_deploy.data import eval_transform, load_image_dataset  # noqa: E402
from rmt_deploy.models import DataConfig, load_model  # noqa: E402
from rmt_deploy.paths import assets_dir, write_json_atomic, write_text_atomic  # noqa: E402
from rmt_deploy.strategies import Target, plan  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar_vit_tiny")
    p.add_argument("--train", default="cifar10/train", help="folder under the assets")
    p.add_argument("--deployment", default="openvino")
    p.add_argument("--speedup", type=float, default=1.5)
    p.add_argument("--images", type=int, default=256, help="calibration images")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--assets", default=None)
    p.add_argument("--tag", default="")
    return p.parse_args()


def main() -> int:
    args = parse()
    torch.manual_seed(0)
    model = load_model(args.model, assets=args.assets).eval()
    folder = load_image_dataset(
        assets_dir(args.assets) / args.train, eval_transform(DataConfig.from_model(model))
    )
    step = max(1, len(folder) // args.images)  # evenly spaced: a folder sorted by class
    data = torch.utils.data.Subset(folder, list(range(0, len(folder), step))[: args.images])
    settings = {"speedup": args.speedup, "lowrank": True, "probe_steps": 0}
    settings.update(deployment=args.deployment, calib_images=args.images)
    runs = []
    for i in range(args.repeats):  # the table is timed afresh each time: how stable is the plan
        log(f"{args.model}: run {i + 1}, planning on {args.deployment} at ×{args.speedup}")
        runs.append(one_plan(model, data, args.deployment, settings))
    result = {"environment": environment(), "args": vars(args), "runs": runs}
    stem = result_stem(f"joint_table_{args.model}", args.tag)
    write_json_atomic(stem.with_suffix(".json"), result)
    write_text_atomic(stem.with_suffix(".md"), report(result))
    print(report(result))
    return 0


def one_plan(model, data, deployment: str, settings: dict) -> dict:
    made = plan(model, "channels", data=data, target=Target([deployment], "cpu", 8), **settings)
    return {
        "table": made.config["table"],
        "narrowed": {la.name: la.width for la in made.layers if la.action == "channels"},
        "ranks": {la.name: la.rank for la in made.layers if la.action == "lowrank"},
        "predicted_ms": made.config["finalists_probed"][0]["predicted_ms"],
        "kept_by_reason": made.summary()["dense_by_reason"],
    }


def report(r: dict) -> str:
    env, a = r["environment"], r["args"]
    lines = [
        f"# One table of widths and ranks: {a['model']} on {a['deployment']}",
        "",
        f"CPU: {env['cpu']} ({env['cpu_count']} cores), {env['date']}; `{env['command']}`. "
        f"Predicted ×{a['speedup']} asked, batch 8, {a['images']} calibration images; plans "
        f"(no recovery), {len(r['runs'])} runs, each timing its table afresh. Layers kept, by "
        f"reason (run 1): {r['runs'][0]['kept_by_reason']}.",
        "",
        "| run | widths: faster / entries, most saving ms | ranks: faster / entries, most saving "
        "ms | groups narrowed | layers factorized | predicted ms |",
        "|---:|---|---|---|---|---:|",
    ]
    for i, run in enumerate(r["runs"], 1):
        t = {form: f"{v['faster']}/{v['entries']}, {v['most_saving_ms']:.3f}"
             for form, v in run["table"].items()}  # fmt: skip
        narrowed = ", ".join(f"{n} → {w}" for n, w in run["narrowed"].items()) or "none"
        lines.append(
            f"| {i} | {t.get('channels', '–')} | {t.get('lowrank', '–')} | {narrowed} | "
            f"{len(run['ranks'])} | {run['predicted_ms']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
