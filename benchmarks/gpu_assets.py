"""Prepare the asset subset the GPU suite carries to a lent GPU machine (≤ 20 MB).

The device machine gets the working tree only (64 MiB at most, `../shared` stays behind), so
the CIFAR ViT's recovery and test images travel as a small copy in a git-ignored folder: the
first N images of every class of `cifar10/train` and `cifar10/test`, same layout, so the suite
reads it exactly as it reads the shared assets. The copy is made here and never committed.

    python benchmarks/gpu_assets.py [--out gpu_assets] [--train-per-class 1000]
                                    [--test-per-class 300]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rmt_deploy.paths import assets_dir  # noqa: E402

LIMIT_BYTES = 20 * 2**20


def copy_subset(source: Path, target: Path, per_class: int) -> int:
    """Copy the first `per_class` images of every class folder; returns the bytes copied."""
    copied = 0
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file())[:per_class]
        (target / folder.name).mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copyfile(file, target / folder.name / file.name)
            copied += file.stat().st_size
    return copied


def prepare(assets: Path, out: Path, train_per_class: int, test_per_class: int) -> int:
    """Write the subset under `out` (replacing an older one); returns its size in bytes."""
    parts = {"train": train_per_class, "test": test_per_class}
    for part in parts:
        if not (assets / "cifar10" / part).is_dir():
            raise SystemExit(f"gpu_assets: {assets / 'cifar10' / part} not found (--assets)")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    size = sum(
        copy_subset(assets / "cifar10" / part, partial / "cifar10" / part, n)
        for part, n in parts.items()
    )
    if size > LIMIT_BYTES:
        shutil.rmtree(partial)
        raise SystemExit(f"gpu_assets: {size / 2**20:.1f} MB is over the 20 MB a call carries")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", default=None, help="the shared assets (default: as the CLI)")
    parser.add_argument("--out", type=Path, default=Path("gpu_assets"))
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=300)
    args = parser.parse_args()
    size = prepare(assets_dir(args.assets), args.out, args.train_per_class, args.test_per_class)
    print(f"gpu_assets: {size / 2**20:.1f} MB under {args.out}/cifar10 (train, test)")


if __name__ == "__main__":
    main()
