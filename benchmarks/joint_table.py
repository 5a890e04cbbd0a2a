"""What the one table of widths and ranks offers and what its DP takes, per model: the
`channels` strategy with `lowrank: true` planned (no recovery, no probing) on calibration
images from the training folder, its table summarized per form (entries, options measured
faster than dense in context, the most they could save) and the chosen allocation (groups
narrowed, layers factorized, predicted time). A plan, not an accuracy: the finalists are not
recovered here.

    python benchmarks/joint_table.py --model cifar_vit_tiny --deployment openvino --speedup 1.5
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
    log(f"{args.model}: planning on {args.deployment} at a predicted ×{args.speedup}")
    target = Target([args.deployment], "cpu", 8)
    made = plan(model, "channels", data=data, target=target, **settings)
    narrowed = {la.name: la.width for la in made.layers if la.action == "channels"}
    ranks = {la.name: la.rank for la in made.layers if la.action == "lowrank"}
    finalist = made.config["finalists_probed"][0]
    result = {"environment": environment(), "args": vars(args), "table": made.config["table"],
              "narrowed": narrowed, "ranks": ranks, "predicted_ms": finalist["predicted_ms"],
              "skipped": [s.name for s in made.skipped]}  # fmt: skip
    stem = result_stem(f"joint_table_{args.model}", args.tag)
    write_json_atomic(stem.with_suffix(".json"), result)
    write_text_atomic(stem.with_suffix(".md"), report(result))
    print(report(result))
    return 0


def report(r: dict) -> str:
    env, a = r["environment"], r["args"]
    lines = [
        f"# One table of widths and ranks: {a['model']} on {a['deployment']}",
        "",
        f"CPU: {env['cpu']} ({env['cpu_count']} cores), {env['date']}; `{env['command']}`. "
        f"Predicted ×{a['speedup']} asked, batch 8, {a['images']} calibration images; a plan "
        "(no recovery), one run.",
        "",
        "| form | entries | with an option faster than dense | most saving (ms) |",
        "|---|---:|---:|---:|",
        *[
            f"| {form} | {t['entries']} | {t['faster']} | {t['most_saving_ms']:.3f} |"
            for form, t in r["table"].items()
        ],
        "",
        f"Chosen: {len(r['narrowed'])} groups narrowed {r['narrowed']}, {len(r['ranks'])} layers "
        f"factorized {r['ranks']}; predicted {r['predicted_ms']:.3f} ms.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
