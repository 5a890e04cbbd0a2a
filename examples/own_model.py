"""rmt-deploy on your own nn.Module: analyze, plan for the target, compress, export, benchmark.

    python examples/own_model.py [--assets ../shared/assets]

The model here is a small CNN+MLP defined below (random init, then a few hundred steps of
training on CIFAR-10 so its spectra carry signal); replace `MyNet` with yours.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

import rmt_deploy as rd
from rmt_deploy.bench import benchmark
from rmt_deploy.data import eval_transform, load_image_dataset, train_transform
from rmt_deploy.exporters import export
from rmt_deploy.paths import assets_dir


class MyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 8 * 8, 512), nn.ReLU(), nn.Linear(512, 10)
        )
        # Tell rmt-deploy how to feed it (the same keys as timm's pretrained_cfg).
        self.pretrained_cfg = {"input_size": (3, 32, 32), "crop_pct": 1.0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", default=None)
    parser.add_argument("--train-steps", type=int, default=300)
    args = parser.parse_args()
    cifar = assets_dir(args.assets) / "cifar10"

    model = MyNet()
    config = rd.DataConfig.from_model(model)
    train = load_image_dataset(cifar / "train", train_transform(config))
    calib = load_image_dataset(cifar / "train", eval_transform(config))
    test = load_image_dataset(cifar / "test", eval_transform(config), limit=2000)
    val = load_image_dataset(cifar / "test", eval_transform(config), limit=500)
    rd.finetune(model, train, rd.FinetuneConfig(max_steps=args.train_steps, lr=0.05))
    model.eval()

    spectrum = rd.analyze(model)  # 1. which parts of each weight are MP noise
    for layer in spectrum.fitted:
        print(
            f"{layer.name}: {layer.fit.n_spikes} spikes, noise share {layer.fit.noise_fraction:.0%}"
        )

    # 2. plan for the target: the fastest engine at batch 8 (every deployment this machine
    #    offers, dense or compressed) whose held-out top-1 loss stays within 1 pp (the val
    #    subset overlaps the test subset here; use disjoint folders for real work)
    plan, search = rd.latency_plan(
        model, calib, heldout=val, targets="auto", batch=8, accuracy_budget=1.0
    )
    chosen, best = search.engine(search.chosen), search.best_baseline()
    print(plan.coverage_line())
    print(f"ships {chosen.label}: {chosen.measured_ms:.2f} ms", end=" ")
    print(f"(best dense: {best.label}, {best.measured_ms:.2f} ms)")

    dense = copy.deepcopy(model)
    compressed = rd.compress_(model, plan)  # 3. rewrite the layers (in place; dense if none)
    rd.finetune(compressed, train, rd.FinetuneConfig(max_steps=100, lr=0.01))
    compressed.eval()

    with tempfile.TemporaryDirectory() as tmp:  # 4. ONNX, verified against ONNX Runtime
        dense_onnx = export(dense, Path(tmp) / "dense", (3, 32, 32), verify_data=test)
        small_onnx = export(compressed, Path(tmp) / "small", (3, 32, 32), verify_data=test)
        suite = benchmark(  # 5. paired latency and accuracy
            {
                "dense": {"model": dense, "onnx": dense_onnx.onnx_path},
                "compressed": {"model": compressed, "onnx": small_onnx.onnx_path},
            },
            [plan.config["deployment"]] if plan.config.get("deployment") else ["onnxruntime"],
            [1, 8],
            (3, 32, 32),
            data=test,
            reference="dense",
        )
    for r in suite.results:
        print(
            f"{r.variant:>10} batch {r.batch}: {r.latency.median_ms:.3f} ms "
            f"×{r.extra['speedup_vs_reference']:.2f}, top-1 {r.top1:.2f} %"
        )


if __name__ == "__main__":
    main()
