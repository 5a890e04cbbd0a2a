"""What more data would buy a channel-pruned EfficientNet-Lite1: top-1 against recovery images.

The narrowed model is the one the shortened pipeline run shipped (its widths from
`results/run_effnet_lite1_channels/plan/plan.json`, channels ranked by the same group
magnitude). Its test part is that run's own (`evaluate/split.json`: the 500 images that never
chose its widths); the other 800 ImageNet validation images are the pool the recovery images
are drawn from (seeded order). For each number of
recovery images N (nested draws: the 300 contain the 100), the narrowed model gets its
BatchNorm statistics re-estimated on those N images, then the same fixed number of recovery
steps (`--steps` of `--batch-size`, SGD, distillation α 0.9 from the dense model, augmented
crops) — so the curve isolates how many distinct images recovery sees, not how long it runs.
Top-1 on the test part (paired interval against the dense model on the same images).
Prints and saves `results/effnet_recovery_curve[_tag].{json,md}`.

    python benchmarks/effnet_recovery_curve.py --images 0 100 300 800 --steps 60 --tag epyc_zen5
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, hits, log, paired, result_stem  # noqa: E402

from rmt_deploy.channels import (  # noqa: E402
    channel_graph,
    channel_scores,
    keep_top,
    prune_channels_,
)
from rmt_deploy.data import eval_transform, load_image_dataset, train_transform  # noqa: E402
from rmt_deploy.models import DataConfig, load_model  # noqa: E402
from rmt_deploy.paths import assets_dir, write_json_atomic, write_text_atomic  # noqa: E402
from rmt_deploy.recovery import FinetuneConfig, bn_recalibrate, finetune  # noqa: E402

RUN = RESULTS / "run_effnet_lite1_channels"
PREPROCESS = DataConfig((3, 240, 240), (0.5,) * 3, (0.5,) * 3, 1.0, "bilinear")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[0, 100, 300, 800])
    p.add_argument("--steps", type=int, default=60, help="recovery steps at every N")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--run", type=Path, default=RUN, help="the run whose widths and test part")
    p.add_argument("--assets", default=None)
    p.add_argument("--tag", default="")
    return p.parse_args()


def narrowed(model: torch.nn.Module, plan: Path, example: torch.Tensor) -> torch.nn.Module:
    """`model` with every group the plan narrowed cut to its width (top channels kept)."""
    widths = {
        la["name"]: la["width"]
        for la in json.loads(plan.read_text())["layers"]
        if la["action"] == "channels"
    }
    clone = copy.deepcopy(model).eval()
    with torch.enable_grad():
        cg = channel_graph(clone, example)
    missing = sorted(set(widths) - set(cg.groups))
    if missing:
        raise SystemExit(f"{plan}: groups {missing} are not in this model's channel graph")
    keep = {n: keep_top(channel_scores(cg, n, "magnitude"), w) for n, w in widths.items()}
    prune_channels_(clone, keep, example)
    return clone.eval()


def parts(plain, run: Path, most: int) -> tuple[list[int], list[int]]:
    """The run's test part (indices into `plain`) and the other images in a seeded order."""
    names = set(
        json.loads((run / "evaluate" / "split.json").read_text())["parts"]["test"]["images"]
    )
    order = torch.randperm(len(plain), generator=torch.Generator().manual_seed(0)).tolist()
    named = [str(plain.samples[i][0].relative_to(plain.root)) for i in order]
    test = sorted(i for i, n in zip(order, named, strict=True) if n in names)
    pool = [i for i, n in zip(order, named, strict=True) if n not in names]
    if len(test) != len(names) or most > len(pool):
        raise SystemExit(f"{run}: {len(test)} of its test images found, {len(pool)} to recover on")
    return test, pool


def main() -> int:
    args = parse()
    torch.manual_seed(0)
    root = assets_dir(args.assets) / "imagenet-val-1300"
    plain = load_image_dataset(root, eval_transform(PREPROCESS))
    augmented = load_image_dataset(root, train_transform(PREPROCESS))
    test_idx, pool = parts(plain, args.run, max(args.images))
    test = torch.utils.data.Subset(plain, test_idx)
    dense = load_model("efficientnet_lite1", assets=args.assets).eval()
    example = plain[0][0][None]
    base = narrowed(dense, args.run / "plan" / "plan.json", example)
    dense_hits = hits(dense, test, batch_size=50)
    log(f"dense {100 * dense_hits.mean():.2f} % on {len(test)} test images")
    rows = []
    for n in args.images:
        model = copy.deepcopy(base)
        row = {"images": n, "steps": 0, "seconds": 0.0, "test_images": len(test)}
        if n:
            bn_recalibrate(model, torch.utils.data.Subset(plain, pool[:n]), n_images=n)
            recipe = FinetuneConfig(
                max_steps=args.steps, batch_size=args.batch_size, lr=0.01, distill_alpha=0.9,
                warmup_steps=max(1, args.steps // 10), workers=0,
            )  # fmt: skip
            result = finetune(
                model, torch.utils.data.Subset(augmented, pool[:n]), recipe, teacher=dense,
                progress=False,
            )  # fmt: skip
            row.update(steps=result.steps, seconds=round(result.seconds, 1),
                       first_loss=result.first_loss, last_loss=result.last_loss)  # fmt: skip
        got = hits(model, test, batch_size=50)
        row["top1"] = 100 * float(got.mean())
        row["vs_dense_pp"] = paired(got, dense_hits)
        rows.append(row)
        log(f"N={n}: {row['top1']:.2f} % ({row['vs_dense_pp'][0]:+.2f} pp vs dense)")
    write(args, 100 * float(dense_hits.mean()), rows)
    return 0


def write(args, dense_top1: float, rows: list[dict]) -> None:
    env = environment()
    stem = result_stem("effnet_recovery_curve", args.tag)
    write_json_atomic(
        stem.with_suffix(".json"),
        {"environment": env, "args": {**vars(args), "run": str(args.run)},
         "dense_top1": dense_top1, "rows": rows},
    )  # fmt: skip
    lines = [
        "# Channel-pruned EfficientNet-Lite1: top-1 against the number of recovery images",
        "",
        f"CPU: {env['cpu']} ({env['cpu_count']} cores), {env['date']}; `{env['command']}`. "
        f"Widths from `{args.run.name}/plan/plan.json` (the shortened pipeline run); "
        f"BatchNorm re-estimated on the N images, then {args.steps} steps of "
        f"{args.batch_size} (SGD, distillation α 0.9 from the dense model); top-1 on that "
        f"run's {rows[0]['test_images']} test images, which never chose its widths "
        f"(dense: {dense_top1:.2f} %); one run per N.",
        "",
        "| recovery images | steps | seconds | top-1 % | Δ vs dense (pp, 95 %) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d = r["vs_dense_pp"]
        lines.append(
            f"| {r['images']} | {r['steps']} | {r['seconds']:.0f} | {r['top1']:.2f} | "
            f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}] |"
        )
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
