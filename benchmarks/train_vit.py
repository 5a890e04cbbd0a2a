"""Train the CIFAR-10 ViT (`cifar_vit_tiny`) from scratch on the CIFAR-10 JPEG train folder.

No pretrained ViT can be downloaded here, so this script makes one: timm `VisionTransformer`
at 32×32, patch 4, 192 wide, 6 blocks (~2.7 M parameters). AdamW, warm-up + cosine, label
smoothing, random crop + flip. The whole train set is decoded once into a uint8 tensor and
augmented on tensors, so the two CPU cores go to the model, not to JPEG decoding.

State is saved atomically after every epoch; a rerun resumes where it stopped. At the end
the model is evaluated on the 10,000-image test folder through the same `load_model` +
`eval_transform` path the benchmarks use, and the checkpoint and a result file are written:

    python benchmarks/train_vit.py --epochs 10 [--device cuda] [--assets PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402

from rmt_deploy import load_model  # noqa: E402
from rmt_deploy.data import eval_transform, load_image_dataset  # noqa: E402
from rmt_deploy.evaluate import evaluate  # noqa: E402
from rmt_deploy.models import DataConfig, save_checkpoint  # noqa: E402
from rmt_deploy.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from rmt_deploy.models.cifar_vit import VIT_CHECKPOINT, VIT_TINY, cifar_vit_tiny  # noqa: E402
from rmt_deploy.paths import assets_dir, write_json_atomic, write_text_atomic, write_with_atomic  # noqa: E402


def decode_folder(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a class-folder dataset as (N, 3, H, W) uint8 and (N,) labels."""
    dataset = load_image_dataset(root)
    images = np.empty((len(dataset), 32, 32, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(tqdm(dataset.samples, desc=f"decode {root.name}", unit="img")):
        with Image.open(path) as img:
            images[i] = np.asarray(img.convert("RGB").resize((32, 32)))
    labels = torch.tensor([label for _, label in dataset.samples])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32×32 crop of the 4-pixel reflect-padded image and a random horizontal flip."""
    n = batch.shape[0]
    padded = F.pad(batch.float(), (4, 4, 4, 4), mode="reflect")
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


def normalize(batch: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR_STD, device=batch.device).view(1, 3, 1, 1) * 255
    return (batch.float() - mean) / std


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=Path("outputs/train_vit"))
    parser.add_argument("--out", type=Path, default=VIT_CHECKPOINT)
    parser.add_argument("--assets", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cifar = assets_dir(args.assets) / "cifar10"
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    images, labels = decode_folder(cifar / "train")
    model = cifar_vit_tiny().to(device)
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos_embed" in n]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=args.lr,
    )
    steps_per_epoch = len(images) // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)

    state_file = args.work / "state.pt"
    start_epoch, history, seconds = 0, [], 0.0
    if state_file.is_file():
        state = torch.load(state_file, map_location=device, weights_only=True)
        if state["epochs"] != args.epochs:
            raise SystemExit(
                f"{state_file} was made for --epochs {state['epochs']}; delete it or match"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start_epoch, history, seconds = (
            state["epoch"],
            json.loads(state["history"]),
            state["seconds"],
        )
        print(f"resuming after epoch {start_epoch}")

    for epoch in range(start_epoch, args.epochs):
        model.train()
        began = time.perf_counter()
        order = torch.randperm(len(images), generator=generator)
        losses, correct = [], 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", unit="step")
        for i in bar:
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, args.lr)
            index = order[i * args.batch_size : (i + 1) * args.batch_size]
            x = normalize(augment(images[index], generator)).to(device)
            y = labels[index].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss))
            correct += int((logits.argmax(1) == y).sum())
            if i % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        seconds += time.perf_counter() - began
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "train_top1": 100.0 * correct / (steps_per_epoch * args.batch_size),
                "seconds": round(time.perf_counter() - began, 1),
            }
        )
        print(json.dumps(history[-1]))
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "epoch": epoch + 1,
            "epochs": args.epochs,
            "history": json.dumps(history),
            "seconds": seconds,
        }
        args.work.mkdir(parents=True, exist_ok=True)
        write_with_atomic(state_file, lambda tmp, s=state: torch.save(s, tmp))

    model = model.cpu().eval()
    meta = {"rmt_deploy.model": "cifar_vit_tiny", "epochs": str(args.epochs)}
    save_checkpoint(model, args.out, metadata=meta)
    trained = load_model("cifar_vit_tiny", args.out)
    test = load_image_dataset(cifar / "test", eval_transform(DataConfig.from_model(trained)))
    result = evaluate(trained, test, batch_size=500)
    params = sum(p.numel() for p in trained.parameters())
    record = {
        "model": "cifar_vit_tiny",
        "architecture": VIT_TINY,
        "parameters": params,
        "checkpoint": str(args.out.relative_to(Path.cwd()) if args.out.is_absolute() else args.out),
        "checkpoint_bytes": args.out.stat().st_size,
        "test_top1": round(result.top1, 2),
        "test_images": result.n_images,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "train_seconds": round(seconds, 1),
        "device": str(device),
        "history": history,
        "environment": environment(),
    }
    write_json_atomic(RESULTS / "train_vit.json", record)
    lines = [
        "# CIFAR-10 ViT trained from scratch",
        "",
        f"`cifar_vit_tiny`: timm VisionTransformer {VIT_TINY}, {params / 1e6:.2f} M parameters.",
        f"Trained {args.epochs} epochs on the 50,000-image CIFAR-10 JPEG train folder on "
        f"{device} in {seconds / 60:.1f} min; **test top-1 {result.top1:.2f} %** on all "
        f"{result.n_images} test images.",
        "",
        f"Command: `{record['environment']['command']}`",
        "",
        "| epoch | loss | train top-1 % | seconds |",
        "|---:|---:|---:|---:|",
        *[
            f"| {h['epoch']} | {h['loss']:.3f} | {h['train_top1']:.1f} | {h['seconds']} |"
            for h in history
        ],
    ]
    write_text_atomic(RESULTS / "train_vit.md", "\n".join(lines) + "\n")
    print(f"test top-1 {result.top1:.2f} % -> {args.out}")


if __name__ == "__main__":
    main()
