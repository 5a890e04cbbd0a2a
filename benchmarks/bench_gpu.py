"""GPU suite: torch CUDA fp16/bf16 — dense, low-rank, 2:4 sparse kernels, and both.

For each model (default: the CIFAR ViT trained here, and a ViT-B/16-sized timm model with
random weights, whose accuracy is not meaningful but whose shapes are), variants are built on
the CPU with the library's strategies, moved to the GPU, and 2:4 layers are swapped for
`torch.sparse.to_sparse_semi_structured` kernels. Latency by CUDA events after a time-based
warm-up, variants interleaved per round, batch 1 to 256; top-1 on the CIFAR-10 test folder for
the trained ViT. Needs an NVIDIA GPU (2:4 kernels: Ampere or newer); runs nowhere else.

    PYTHONPATH=. python benchmarks/bench_gpu.py [--out DIR] [--dtype fp16]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402

from rmt_deploy import load_model  # noqa: E402
from rmt_deploy.bench.backends import Prepared  # noqa: E402
from rmt_deploy.bench.runner import time_runs  # noqa: E402
from rmt_deploy.bench.stats import summarize  # noqa: E402
from rmt_deploy.compress import compress_  # noqa: E402
from rmt_deploy.data import eval_transform, load_image_dataset  # noqa: E402
from rmt_deploy.layers import semi_structured_  # noqa: E402
from rmt_deploy.models import DataConfig  # noqa: E402
from rmt_deploy.paths import assets_dir, write_json_atomic, write_text_atomic  # noqa: E402
from rmt_deploy.strategies import plan  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def variants(model_name: str, calib, lowrank_sparsity: float) -> dict[str, torch.nn.Module]:
    dense = load_model(model_name, pretrained=model_name == "cifar_vit_tiny")
    low = compress_(copy.deepcopy(dense), plan(dense, "lowrank", lowrank_sparsity, data=calib))
    sparse = compress_(copy.deepcopy(dense), plan(dense, "nm24", 0.5))
    both = compress_(copy.deepcopy(low), plan(low, "nm24", 0.5))
    return {"dense": dense, "lowrank": low, "nm24": sparse, "lowrank+nm24": both}


def prepared(model: torch.nn.Module, dtype: torch.dtype) -> tuple[Prepared, int]:
    swapped = semi_structured_(model, dtype)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch).to("cuda", dtype)).float().cpu().numpy()

    label = f"torch {torch.cuda.get_device_name()} {str(dtype).replace('torch.', '')}"
    return Prepared(run, label, torch.get_num_threads(), torch.cuda.synchronize, True), swapped


def top1(p: Prepared, data, batch_size: int = 250) -> float:
    correct = seen = 0
    for images, labels in torch.utils.data.DataLoader(data, batch_size=batch_size):
        correct += int((p.run(images.numpy()).argmax(1) == labels.numpy()).sum())
        seen += len(labels)
    return 100.0 * correct / seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cifar_vit_tiny,vit_base_patch16_224")
    parser.add_argument("--batches", default="1,8,32,64,128,256")
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--lowrank-sparsity", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--assets", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_gpu")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs an NVIDIA GPU; none is visible here")
    dtype = DTYPES[args.dtype]
    assets = assets_dir(args.assets)
    batches = [int(b) for b in args.batches.split(",")]
    record = {"environment": environment(), "device": torch.cuda.get_device_name(), "models": {}}
    lines = [
        f"# GPU suite on {torch.cuda.get_device_name()} ({args.dtype})",
        "",
        "Median latency by CUDA events; speedup = dense / variant in the same run.",
        "",
    ]
    for model_name in args.models.split(","):
        probe = load_model(model_name, pretrained=model_name == "cifar_vit_tiny")
        config = DataConfig.from_model(probe)
        calib_root = assets / (
            "cifar10/train" if model_name.startswith("cifar") else "imagenet-val-1300"
        )
        calib = load_image_dataset(calib_root, eval_transform(config), limit=512)
        test = None
        if model_name.startswith("cifar"):
            test = load_image_dataset(assets / "cifar10" / "test", eval_transform(config))
        runners, info = {}, {}
        for name, model in variants(model_name, calib, args.lowrank_sparsity).items():
            runners[name], swapped = prepared(model, dtype)
            info[name] = {"sparse_layers": swapped}
            if test is not None:
                info[name]["top1"] = top1(runners[name], test)
        samples: dict[tuple[str, int], list[float]] = {}
        rng = np.random.default_rng(0)
        for batch in batches:
            x = rng.standard_normal((batch, *config.input_size)).astype(np.float32)
            for _ in range(args.rounds):
                for name, runner in runners.items():
                    samples.setdefault((name, batch), []).extend(
                        time_runs(runner, x, 0.5 / args.rounds, args.runs // args.rounds)
                    )
        stats = {key: summarize(v, key[1]) for key, v in samples.items()}
        rows = {
            name: {
                **info[name],
                **{
                    f"b{b}": {
                        "median_ms": stats[name, b].median_ms,
                        "p99_ms": stats[name, b].p99_ms,
                        "speedup": stats["dense", b].median_ms / stats[name, b].median_ms,
                    }
                    for b in batches
                },
            }
            for name in runners
        }
        record["models"][model_name] = rows
        lines += [
            f"## {model_name}",
            "",
            "| variant | top-1 % | " + " | ".join(f"b{b}" for b in batches) + " |",
            "|---|---:|" + "---:|" * len(batches),
        ]
        for name, row in rows.items():
            acc = f"{row['top1']:.2f}" if "top1" in row else "–"
            cells = " | ".join(
                f"{row[f'b{b}']['median_ms']:.3f} ms ×{row[f'b{b}']['speedup']:.2f}"
                for b in batches
            )
            lines.append(f"| {name} | {acc} | {cells} |")
        lines.append("")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "bench_gpu.json", record)
    write_text_atomic(args.out / "bench_gpu.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
