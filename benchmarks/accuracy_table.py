"""Real accuracy table: every strategy on the pretrained CIFAR-10 ResNet-56.

For each (strategy, sparsity): plan on the real weights, compress, top-1 on the CIFAR-10 test
folder one-shot (after BatchNorm recalibration on 2,000 train images), then after the same
short recovery fine-tune (default 10,000 train images ≈ 1/5 epoch) as the dense reference.
Rows are saved as they finish; a rerun skips finished rows.

    python benchmarks/accuracy_table.py [--recovery-images 10000] [--test-limit N]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402

from rmt_deploy import load_model  # noqa: E402
from rmt_deploy.compress import compress_  # noqa: E402
from rmt_deploy.data import eval_transform, load_image_dataset, train_transform  # noqa: E402
from rmt_deploy.evaluate import evaluate  # noqa: E402
from rmt_deploy.layers import MASKED_TYPES  # noqa: E402
from rmt_deploy.models import DataConfig  # noqa: E402
from rmt_deploy.paths import assets_dir, write_json_atomic, write_text_atomic  # noqa: E402
from rmt_deploy.recovery import FinetuneConfig, bn_recalibrate, finetune  # noqa: E402
from rmt_deploy.strategies import plan  # noqa: E402

SPARSE = ["magnitude", "classic_rmt", "seb", "ser", "hybrid"]
ROWS = (  # the s = 0.5 comparison first, then the structured rows, then the other levels
    [("dense", 0.0)]
    + [(s, 0.5) for s in SPARSE]
    + [("nm24", 0.5), ("lowrank", 0.5)]
    + [(s, 0.7) for s in SPARSE]
    + [("lowrank", 0.3), ("lowrank", 0.7)]
    + [(s, 0.3) for s in SPARSE]
)


def count_cost(model: torch.nn.Module) -> tuple[int, int, int]:
    """(non-zero parameters, dense FLOPs, effective FLOPs with masked layers at their density).

    FLOPs come from torch's FlopCounterMode on one 32×32 image; a masked layer's FLOPs are
    scaled by its density (what a sparse kernel would execute).
    """
    nonzero = sum(int((p != 0).sum()) for n, p in model.named_parameters())
    for module in model.modules():
        if isinstance(module, MASKED_TYPES):
            nonzero -= int((module.weight != 0).sum()) - int((module.masked_weight() != 0).sum())
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    per_module = counter.get_flop_counts()
    dense = int(counter.get_total_flops())
    effective = dense
    for name, module in model.named_modules():
        if isinstance(module, MASKED_TYPES):
            key = f"{type(model).__name__}.{name}"
            flops = sum(per_module.get(key, {}).values())
            effective -= int(flops * (1 - module.density))
    return nonzero, dense, effective


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet56")
    parser.add_argument("--recovery-images", type=int, default=10_000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--raw", action="store_true", help="also measure before BN recal")
    parser.add_argument("--rows", default=None, help="comma list strategy:sparsity to run")
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy_resnet56")
    args = parser.parse_args()
    torch.manual_seed(0)

    assets = assets_dir()
    dense = load_model(args.model)
    cfg = DataConfig.from_model(dense)
    test = load_image_dataset(assets / "cifar10" / "test", eval_transform(cfg), args.test_limit)
    calib = load_image_dataset(assets / "cifar10" / "train", eval_transform(cfg))
    train = load_image_dataset(assets / "cifar10" / "train", train_transform(cfg))
    recipe = FinetuneConfig(
        max_steps=max(1, args.recovery_images // 128), batch_size=128, lr=args.lr
    )
    rows = ROWS
    if args.rows:
        rows = [(r.split(":")[0], float(r.split(":")[1])) for r in args.rows.split(",")]

    json_path = args.out.with_suffix(".json")
    done = json.loads(json_path.read_text())["rows"] if json_path.exists() else []
    finished = {(r["strategy"], r["sparsity"]) for r in done}
    base_params, base_flops, _ = count_cost(dense)
    for strategy, sparsity in rows:
        if (strategy, sparsity) in finished:
            continue
        print(f"== {strategy} s={sparsity}", flush=True)
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        summary = {}
        if strategy != "dense":
            p = plan(
                model,
                strategy,
                sparsity,
                data=calib if strategy == "lowrank" else train,
                name=args.model,
            )
            compress_(model, p)
            summary = p.summary()
        plan_s = time.perf_counter() - start
        raw = None  # right-after-compression accuracy: skipped by default (--raw) to save time
        if args.raw and strategy != "dense":
            raw = evaluate(model, test, progress=False).top1
        bn_recalibrate(model, calib, n_images=2000)
        one_shot = evaluate(model, test, progress=False).top1
        tuned = finetune(model, train, recipe, progress=False)
        recovered = evaluate(model, test, progress=False).top1
        params, flops, eff_flops = count_cost(model)
        row = {
            "strategy": strategy,
            "sparsity": sparsity,
            "achieved_sparsity": summary.get("sparsity", 0.0),
            "top1_raw": raw,
            "top1_one_shot_bn": one_shot,
            "top1_recovered": recovered,
            "nonzero_params": params,
            "params_ratio": params / base_params,
            "flops": flops,
            "effective_flops": eff_flops,
            "effective_flops_ratio": eff_flops / base_flops,
            "plan_seconds": plan_s,
            "finetune_steps": tuned.steps,
            "finetune_images": tuned.images,
            "finetune_seconds": tuned.seconds,
        }
        done.append(row)
        print(json.dumps(row), flush=True)
        write_json_atomic(
            json_path,
            {
                "model": args.model,
                "recovery": vars(recipe),
                "test_images": len(test),
                "rows": done,
                "environment": environment(),
            },
        )
    write_text_atomic(args.out.with_suffix(".md"), render(done, len(test), recipe))
    plot(done, args.out.with_suffix(".png"))
    return 0


def render(rows: list[dict], n_test: int, recipe: FinetuneConfig) -> str:
    dense = next((r for r in rows if r["strategy"] == "dense"), None)
    ref = dense["top1_recovered"] if dense else None
    lines = [
        "# ResNet-56 on CIFAR-10 (JPEG test folder): accuracy by strategy",
        "",
        f"Top-1 on {n_test} test images. *raw*: right after compression; *one-shot*: after "
        f"BatchNorm recalibration on 2,000 train images; *recovered*: after {recipe.max_steps} "
        f"fine-tune steps of batch {recipe.batch_size} (SGD, lr {recipe.lr}, cosine). The dense "
        "row gets the same recalibration and fine-tune; Δ is against it. Hybrid and SER use "
        "training data while planning (cycles / reservoir), so their one-shot is not data-free.",
        "",
        "| strategy | s | raw | one-shot | recovered | Δ vs dense recovered (pp) "
        "| non-zero params | eff. FLOPs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = "–" if ref is None else f"{r['top1_recovered'] - ref:+.2f}"
        raw = "–" if r["top1_raw"] is None else f"{r['top1_raw']:.2f}"
        lines.append(
            f"| {r['strategy']} | {r['sparsity']:.1f} | {raw} | {r['top1_one_shot_bn']:.2f} | "
            f"{r['top1_recovered']:.2f} | {delta} | {r['nonzero_params']:,} "
            f"({100 * r['params_ratio']:.0f} %) | {r['effective_flops'] / 1e6:.1f} M "
            f"({100 * r['effective_flops_ratio']:.0f} %) |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in sorted({r["strategy"] for r in rows} - {"dense"}):
        pts = sorted(
            (r["sparsity"], r["top1_recovered"]) for r in rows if r["strategy"] == strategy
        )
        ax.plot(*zip(*pts, strict=True), "o-", label=strategy)
    dense = [r for r in rows if r["strategy"] == "dense"]
    if dense:
        ax.axhline(dense[0]["top1_recovered"], color="k", ls="--", label="dense (same recovery)")
    ax.set_xlabel("sparsity s (share of conv/linear weights removed)")
    ax.set_ylabel("top-1 after recovery (%)")
    ax.set_title("ResNet-56, CIFAR-10 JPEG test folder")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from rmt_deploy.paths import write_with_atomic

    write_with_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
