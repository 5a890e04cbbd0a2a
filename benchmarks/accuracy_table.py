"""What RMT adds, measured: every strategy at s ∈ {0.3, 0.5, 0.7} with the same recovery.

ResNet-56 (CIFAR-10): plan on the real weights, compress, re-estimate BatchNorm on 2,000
train images (*one-shot*), then fine-tune the same 78 steps of batch 128 (≈ 1/5 epoch, SGD
lr 0.01, cosine) as the dense reference (*recovered*); top-1 on all 10,000 test images.
EfficientNet-Lite1 (ImageNet, the 1,300 images of the assets): no ImageNet training data
here, so one-shot + BatchNorm re-estimation on 400 calibration images, top-1 on the other 900.
Every top-1 and every Δ against the dense model has a 95 % bootstrap interval over the test
images (2,000 resamples, paired for Δ). Rows are saved as they finish; a rerun skips them.

    python benchmarks/accuracy_table.py --model cifar_resnet56
    python benchmarks/accuracy_table.py --model efficientnet_lite1
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402

from rmt_deploy import load_model  # noqa: E402
from rmt_deploy.budget import model_outputs  # noqa: E402
from rmt_deploy.compress import compress_  # noqa: E402
from rmt_deploy.data import (  # noqa: E402
    eval_transform,
    load_image_dataset,
    split_parts,
    train_transform,  # noqa: E402
)
from rmt_deploy.layers import MASKED_TYPES  # noqa: E402
from rmt_deploy.models import DataConfig  # noqa: E402
from rmt_deploy.paths import assets_dir, write_json_atomic, write_text_atomic  # noqa: E402
from rmt_deploy.recovery import FinetuneConfig, bn_recalibrate, finetune  # noqa: E402
from rmt_deploy.strategies import plan  # noqa: E402

LEVELS = (0.3, 0.5, 0.7)
# label → (strategy, settings); every label at every level unless it is one-level (2:4)
RESNET = {
    "magnitude": ("magnitude", {}),
    "classic_rmt": ("classic_rmt", {}),
    "seb": ("seb", {}),
    "ser": ("ser", {}),
    "hybrid": ("hybrid", {"variant": "threshold"}),
    "hybrid_fixed": ("hybrid", {"variant": "fixed"}),
    "lowrank": ("lowrank", {}),
}
# No ImageNet training data: the strategies that train while planning (SER, hybrid) cannot run.
EFFNET = {
    "magnitude": ("magnitude", {}),
    "classic_rmt": ("classic_rmt", {}),
    "seb": ("seb", {}),
    "lowrank": ("lowrank", {}),
}


def rows_for(model: str) -> list[tuple[str, str, float, dict]]:
    table = RESNET if model == "cifar_resnet56" else EFFNET
    rows = [("dense", "dense", 0.0, {})]
    for level in (0.5, 0.3, 0.7):  # the s = 0.5 comparison first
        rows += [
            (label, strategy, level, settings) for label, (strategy, settings) in table.items()
        ]
        if level == 0.5:
            rows.append(("nm24", "nm24", 0.5, {}))
    return rows


def pack(correct: np.ndarray) -> str:
    return base64.b64encode(np.packbits(correct.astype(bool)).tobytes()).decode()


def unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(float)


def bootstrap(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean of `values` over resampled test images."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def count_cost(model: torch.nn.Module, input_size=(3, 32, 32)) -> tuple[int, int, int]:
    """(non-zero parameters, dense FLOPs, effective FLOPs with masked layers at their density).

    FLOPs come from torch's FlopCounterMode on one image; a masked layer's FLOPs are
    scaled by its density (what a sparse kernel would execute).
    """
    nonzero = sum(int((p != 0).sum()) for n, p in model.named_parameters())
    for module in model.modules():
        if isinstance(module, MASKED_TYPES):
            nonzero -= int((module.weight != 0).sum()) - int((module.masked_weight() != 0).sum())
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_size))
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
    parser.add_argument(
        "--model", default="cifar_resnet56", choices=("cifar_resnet56", "efficientnet_lite1")
    )
    parser.add_argument("--recovery-images", type=int, default=10_000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--rows", default=None, help="comma list label:sparsity to run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    out = args.out or RESULTS / f"accuracy_{args.model.replace('cifar_', '')}"
    assets = assets_dir()
    dense = load_model(args.model)
    cfg = DataConfig.from_model(dense)
    imagenet = args.model == "efficientnet_lite1"
    if imagenet:  # the 1,300 images: 400 for BN / calibration, 900 to test on
        images = load_image_dataset(assets / "imagenet-val-1300", eval_transform(cfg))
        parts = split_parts(images, {"calib": 400, "test": None})
        calib = train = parts["calib"]
        test = parts["test"]
        recipe = None
        bn_images = 400
    else:
        test = load_image_dataset(assets / "cifar10" / "test", eval_transform(cfg), args.test_limit)
        calib = load_image_dataset(assets / "cifar10" / "train", eval_transform(cfg))
        train = load_image_dataset(assets / "cifar10" / "train", train_transform(cfg))
        recipe = FinetuneConfig(
            max_steps=max(1, args.recovery_images // 128), batch_size=128, lr=args.lr
        )
        bn_images = 2000
    rows = rows_for(args.model)
    if args.rows:
        wanted = {(r.split(":")[0], float(r.split(":")[1])) for r in args.rows.split(",")}
        rows = [r for r in rows if (r[0], r[2]) in wanted]
    json_path = out.with_suffix(".json")
    done = json.loads(json_path.read_text())["rows"] if json_path.exists() else []
    finished = {(r["label"], r["sparsity"]) for r in done}
    base_params, base_flops, _ = count_cost(dense, tuple(cfg.input_size))
    for label, strategy, sparsity, settings in rows:
        if (label, sparsity) in finished:
            continue
        print(f"== {label} s={sparsity}", flush=True)
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        summary = {}
        if strategy != "dense":
            data = calib if strategy == "lowrank" else train
            p = plan(model, strategy, sparsity, data=data, name=args.model, **settings)
            compress_(model, p)
            summary = p.summary()
        plan_s = time.perf_counter() - start
        bn_recalibrate(model, calib, n_images=bn_images)
        outputs, labels = model_outputs(model, test)
        one_shot = (outputs.argmax(1) == labels).numpy().astype(float)
        recovered, tuned = None, None
        if recipe is not None:
            tuned = finetune(model, train, recipe, progress=False)
            outputs, _ = model_outputs(model, test)
            recovered = (outputs.argmax(1) == labels).numpy().astype(float)
        params, flops, eff_flops = count_cost(model, tuple(cfg.input_size))
        final = recovered if recovered is not None else one_shot
        row = {
            "label": label,
            "strategy": strategy,
            "settings": settings,
            "sparsity": sparsity,
            "achieved_sparsity": summary.get("sparsity", 0.0),
            "top1_one_shot_bn": 100 * one_shot.mean(),
            "top1_one_shot_ci": [100 * v for v in bootstrap(one_shot)],
            "top1_recovered": None if recovered is None else 100 * recovered.mean(),
            "top1_recovered_ci": None
            if recovered is None
            else [100 * v for v in bootstrap(recovered)],
            "correct": pack(final),
            "nonzero_params": params,
            "params_ratio": params / base_params,
            "effective_flops": eff_flops,
            "effective_flops_ratio": eff_flops / base_flops,
            "plan_seconds": plan_s,
            "finetune_steps": tuned.steps if tuned else 0,
        }
        done.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "correct"}), flush=True)
        write_json_atomic(
            json_path,
            {
                "model": args.model,
                "recovery": vars(recipe) if recipe else None,
                "bn_images": bn_images,
                "test_images": len(test),
                "rows": done,
                "environment": environment(),
            },
        )
    write_text_atomic(out.with_suffix(".md"), render(done, len(test), recipe, args.model))
    plot(done, out.with_suffix(".png"), args.model)
    return 0


def render(rows: list[dict], n_test: int, recipe, model: str) -> str:
    key = "top1_recovered" if recipe is not None else "top1_one_shot_bn"
    dense = next((r for r in rows if r["label"] == "dense"), None)
    dense_correct = unpack(dense["correct"], n_test) if dense else None
    if recipe is not None:
        how = (
            f"*one-shot*: after BatchNorm re-estimation on 2,000 train images; *recovered*: then "
            f"{recipe.max_steps} fine-tune steps of batch {recipe.batch_size} (SGD, lr {recipe.lr},"
            " cosine) — the same recovery for every row, the dense one included. SER, hybrid and "
            "classic RMT also train while planning (reservoir, cycles, regularized steps); that "
            "is part of those methods, not of the recovery."
        )
    else:
        how = (
            "one-shot + BatchNorm re-estimation on 400 calibration images (no ImageNet training "
            "data here: SER and hybrid, which train while planning, cannot run)."
        )
    lines = [
        f"# {model}: accuracy by strategy",
        "",
        f"Top-1 on {n_test} test images with 95 % bootstrap intervals (2,000 resamples over the "
        f"test images; each Δ paired, image by image, on the final top-1: recovered where there is "
        f"a recovery, else one-shot). {how}",
        "",
        "| strategy | s | one-shot | recovered | Δ vs dense (pp, 95 % CI) "
        "| Δ vs magnitude, same s (pp, 95 % CI) | non-zero params |",
        "|---|---|---|---|---|---|---|",
    ]
    magnitude = {r["sparsity"]: r for r in rows if r["label"] == "magnitude"}
    for r in sorted(rows, key=lambda r: (r["sparsity"], r["label"])):

        def cell(value, ci):
            return "–" if value is None else f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"

        delta = "–"
        if dense_correct is not None and r["label"] != "dense":
            diff = 100 * (unpack(r["correct"], n_test) - dense_correct)
            lo, hi = bootstrap(diff)
            delta = f"{r[key] - dense[key]:+.2f} [{lo:+.2f}, {hi:+.2f}]"
        versus = "–"
        base = magnitude.get(r["sparsity"])
        if base is not None and r["label"] != "magnitude":
            diff = 100 * (unpack(r["correct"], n_test) - unpack(base["correct"], n_test))
            lo, hi = bootstrap(diff)
            versus = f"{r[key] - base[key]:+.2f} [{lo:+.2f}, {hi:+.2f}]"
        lines.append(
            f"| {r['label']} | {r['sparsity']:.1f} | "
            f"{cell(r['top1_one_shot_bn'], r['top1_one_shot_ci'])} | "
            f"{cell(r['top1_recovered'], r['top1_recovered_ci'])} | {delta} | {versus} | "
            f"{r['nonzero_params']:,} ({100 * r['params_ratio']:.0f} %) |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    key = (
        "top1_recovered"
        if rows and rows[0].get("top1_recovered") is not None
        else ("top1_one_shot_bn")
    )
    for label in sorted({r["label"] for r in rows} - {"dense"}):
        pts = sorted((r["sparsity"], r[key]) for r in rows if r["label"] == label)
        ax.plot(*zip(*pts, strict=True), "o-", label=label)
    dense = [r for r in rows if r["label"] == "dense"]
    if dense:
        ax.axhline(dense[0][key], color="k", ls="--", label="dense (same recovery)")
    ax.set_xlabel("sparsity s (share of conv/linear weights removed)")
    ax.set_ylabel(f"top-1 ({key.replace('top1_', '').replace('_', ' ')}, %)")
    ax.set_title(model)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from rmt_deploy.paths import write_with_atomic

    write_with_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
