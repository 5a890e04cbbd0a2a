"""CPU suite: dense vs low-rank, 2:4 and the best unstructured strategy, torch and ONNX Runtime.

For each model (default: the pretrained CIFAR ResNet-56 and the CIFAR ViT trained here), every
variant — dense included — gets the same short recovery fine-tune on the CIFAR-10 train
folder, so accuracy differences come from compression, not from extra training. Each variant
is then evaluated on the full 10,000-image test folder (torch), exported to ONNX (verified),
and timed on torch eager and ONNX Runtime (CPU) at each batch size, variants interleaved in
one run so that the speedups are paired ratios. Compressed variants are cached in
`outputs/bench_cpu/`; a rerun skips what is done.

    python benchmarks/bench_cpu.py [--models cifar_resnet56,cifar_vit_tiny] [--batches 1,8,64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402

from rmt_deploy import load_model  # noqa: E402
from rmt_deploy.bench import benchmark, write_report  # noqa: E402
from rmt_deploy.compress import compress_  # noqa: E402
from rmt_deploy.data import eval_transform, load_image_dataset, train_transform  # noqa: E402
from rmt_deploy.evaluate import evaluate  # noqa: E402
from rmt_deploy.exporters import export  # noqa: E402
from rmt_deploy.models import DataConfig, save_checkpoint  # noqa: E402
from rmt_deploy.models.checkpoint import PLAN_METADATA_KEY  # noqa: E402
from rmt_deploy.paths import assets_dir, read_json, write_json_atomic, write_text_atomic  # noqa: E402
from rmt_deploy.recovery import FinetuneConfig, bn_recalibrate, finetune  # noqa: E402
from rmt_deploy.strategies import plan  # noqa: E402

# (variant, strategy, sparsity). "classic_rmt" at 0.5 was the best unstructured strategy in the
# ResNet-56 accuracy table (benchmarks/results/accuracy_resnet56.md).
VARIANTS = {
    "dense": ("dense", 0.0),
    "lowrank": ("lowrank", 0.5),
    "nm24": ("nm24", 0.5),
    "classic_rmt": ("classic_rmt", 0.5),
}
# Recovery per model: the ResNet (trained on lossless CIFAR) gains from SGD steps on the JPEG
# train folder; the ViT was trained on that folder to convergence, and 100 AdamW steps at 1e-4
# cost its dense model 2.7 pp in the pipeline run (runs/cifar_vit_tiny_cpu), so it is
# measured one-shot.
RECIPES = {
    "cifar_resnet56": dict(optimizer="sgd", lr=0.01, weight_decay=1e-6),
    "cifar_vit_tiny": dict(optimizer="adamw", lr=1e-4, weight_decay=0.05, steps=0),
}


def build_variant(model_name, strategy, sparsity, train, calib, steps, work: Path) -> Path:
    """Compress (unless dense), recalibrate BatchNorm, fine-tune; cache the checkpoint."""
    checkpoint = work / f"{strategy}_{sparsity}_{steps}.safetensors"
    if checkpoint.is_file():
        return checkpoint
    model = load_model(model_name)
    metadata = {"rmt_deploy.model": model_name}
    if strategy != "dense":
        data = calib if strategy == "lowrank" else train
        the_plan = plan(model, strategy, sparsity, data=data, name=model_name)
        compress_(model, the_plan)
        metadata[PLAN_METADATA_KEY] = the_plan.to_json()
    bn_recalibrate(model, calib, n_images=2000)
    settings = {k: v for k, v in RECIPES.get(model_name, {}).items() if k != "steps"}
    recipe = FinetuneConfig(max_steps=max(steps, 1), batch_size=128, **settings)
    if steps > 0:
        finetune(model, train, recipe)
    return save_checkpoint(model, checkpoint, metadata)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cifar_resnet56,cifar_vit_tiny")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--lowrank-sparsity", type=float, default=None, help="override 0.5")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--agreement-images", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_cpu"))
    parser.add_argument("--assets", default=None)
    args = parser.parse_args()

    cifar = assets_dir(args.assets) / "cifar10"
    batches = [int(b) for b in args.batches.split(",")]
    variants = {v: VARIANTS[v] for v in args.variants.split(",")}
    if args.lowrank_sparsity is not None and "lowrank" in variants:
        variants["lowrank"] = ("lowrank", args.lowrank_sparsity)
    summary = {"environment": environment(), "finetune_steps": args.finetune_steps, "models": {}}
    for model_name in args.models.split(","):
        work = args.work / model_name
        work.mkdir(parents=True, exist_ok=True)
        config = DataConfig.from_model(load_model(model_name))
        train = load_image_dataset(cifar / "train", train_transform(config))
        calib = load_image_dataset(cifar / "train", eval_transform(config))
        test = load_image_dataset(cifar / "test", eval_transform(config), args.test_images)
        agree = load_image_dataset(cifar / "test", eval_transform(config), args.agreement_images)
        specs, rows = {}, {}
        accuracy_file = work / "accuracy.json"
        known = read_json(accuracy_file, "accuracy cache") if accuracy_file.is_file() else {}
        for name, (strategy, sparsity) in variants.items():
            print(f"== {model_name} {name} ({strategy} s={sparsity})", flush=True)
            began = time.perf_counter()
            steps = RECIPES.get(model_name, {}).get("steps", args.finetune_steps)
            ckpt = build_variant(model_name, strategy, sparsity, train, calib, steps, work)
            model = load_model(model_name, ckpt)
            key = f"{ckpt.name}@{len(test)}"
            if key not in known:
                known[key] = evaluate(model, test, batch_size=500).top1
                write_json_atomic(accuracy_file, known)
            onnx = export(model, work / "onnx" / ckpt.stem, tuple(config.input_size), n_verify=16)
            specs[name] = {"model": model, "onnx": onnx.onnx_path}
            rows[name] = {
                "strategy": strategy,
                "sparsity": sparsity,
                "checkpoint": str(ckpt),
                "test_top1": known[key],
                "onnx_max_abs_diff": onnx.parity.max_abs_diff if onnx.parity else None,
                "prepare_seconds": round(time.perf_counter() - began, 1),
            }
        suite = benchmark(
            specs,
            ["torch", "onnxruntime"],
            batches,
            tuple(config.input_size),
            data=agree,
            reference="dense",
            runs=args.runs,
        )
        out = RESULTS / "bench_cpu" / model_name
        write_report(suite, out, f"{model_name} on CPU: {', '.join(specs)}")
        speedups = {
            f"{r.variant}/{r.backend}/b{r.batch}": round(r.extra["speedup_vs_reference"], 3)
            for r in suite.results
        }
        dense_top1 = rows["dense"]["test_top1"] if "dense" in rows else None
        for row in rows.values():
            row["top1_drop_pp"] = None if dense_top1 is None else dense_top1 - row["test_top1"]
        summary["models"][model_name] = {
            "variants": rows,
            "speedups": speedups,
            "finetune_steps": RECIPES.get(model_name, {}).get("steps", args.finetune_steps),
        }
        _write_summary(summary, batches, len(test))
        del specs, suite
    print(json.dumps(summary["models"], indent=1))


def _write_summary(summary: dict, batches: list[int], n_test: int) -> None:
    write_json_atomic(RESULTS / "bench_cpu.json", summary)
    env = summary["environment"]
    lines = [
        "# CPU suite: dense vs compressed, torch and ONNX Runtime",
        "",
        f"{env['cpu']}, {env['torch_threads']} threads, torch {env['torch']}; within a model "
        "every variant (dense too) gets the same recovery: BatchNorm re-estimation and the "
        "fine-tune steps (batch 128, CIFAR-10 train folder) named under its heading; "
        f"top-1 on {n_test} test images; speedup = dense median latency / variant median "
        "latency, measured interleaved in one run (batch sizes as columns).",
        "",
        f"Command: `{env['command']}`",
        "",
    ]
    for model_name, block in summary["models"].items():
        head = " | ".join(f"{b} {k}" for k in ("torch", "ORT") for b in batches)
        lines += [
            f"## {model_name} ({block['finetune_steps']} fine-tune steps)",
            "",
            f"| variant | top-1 % | Δ pp | {head} |",
            "|---|---:|---:|" + "---:|" * (2 * len(batches)),
        ]
        for name, row in block["variants"].items():
            cells = [
                block["speedups"].get(f"{name}/{backend}/b{b}")
                for backend in ("torch", "onnxruntime")
                for b in batches
            ]
            drop = row["top1_drop_pp"]
            drop = None if drop is None else round(drop, 2) + 0.0  # no "-0.00" for dense
            lines.append(
                f"| {name} ({row['strategy']} {row['sparsity']}) | {row['test_top1']:.2f} | "
                f"{'–' if drop is None else f'{0.0 - drop:+.2f}'} | "
                + " | ".join("–" if c is None else f"×{c:.2f}" for c in cells)
                + " |"
            )
        lines += ["", f"Full tables and plots: `bench_cpu/{model_name}/bench.md`.", ""]
    write_text_atomic(RESULTS / "bench_cpu.md", "\n".join(lines))


if __name__ == "__main__":
    main()
