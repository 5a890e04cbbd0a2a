"""The GPU suite, one command that fits a short lent GPU: every step in its own process under
its own timeout, results written as each step ends, a summary after every step.

    python3 benchmarks/gpu_suite.py --out DIR [--assets gpu_assets] [--budget-s 300] [--dry-run]

Steps (`gpu_steps.py`): probe (CUDA, cuSPARSELt 2:4 on a 3-D F.linear), latency of a
ViT-B/16-sized and a ResNet-50-sized model (dense / low rank / 2:4 / both, fp16 and bf16,
eager), the CIFAR ViT's accuracy after the same recovery (AMP on CUDA), fine-tuning under DDP
over NCCL (world size 1), and torch.compile for one dtype. `--dry-run` runs every step on the
CPU with tiny sizes (gloo, 2:4 as masked dense, CPU inductor); there a step that does not
finish fails the run. Exit status: 0 all steps ok, 1 a step failed or timed out, 2 no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

# Seconds each step may take on an H200 (the whole suite aims at ≤ 5 min) and in a dry run.
TIMEOUTS = {
    "probe": (60, 120),
    "kernels_24": (40, 120),
    "latency_vit": (75, 300),
    "latency_cnn": (75, 300),
    "accuracy_cifar_vit": (90, 300),
    "ddp": (45, 120),
    "compile_vit": (120, 600),
}


def run_step(name: str, args: argparse.Namespace, timeout: float) -> dict:
    """Run one step in a child process; its log goes to DIR/logs/NAME.log."""
    log = args.out / "logs" / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--step", name,
               "--out", str(args.out), "--assets", str(args.assets)]  # fmt: skip
    if args.dry_run:
        command.append("--dry-run")
    start = time.perf_counter()
    with log.open("w") as sink:
        try:
            code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT,
                                  timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"}
                                  ).returncode  # fmt: skip
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if status != "ok" else []
    return {"status": status, "seconds": round(seconds, 1), "last_line": tail[0] if tail else ""}


def write_summary(out: Path, results: dict, device: str) -> None:
    from rmt_deploy.paths import write_json_atomic, write_text_atomic

    write_json_atomic(out / "summary.json", {"device": device, "steps": results})
    lines = [f"# GPU suite on {device}", "", "| step | status | seconds |", "|---|---|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['status']} {r['last_line']} | {r['seconds']} |")
    write_text_atomic(out / "summary.md", "\n".join(lines) + "\n")


def device_label(dry: bool) -> str:
    if dry:
        return "CPU (dry run)"
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else ""


def drive(args: argparse.Namespace) -> int:
    device = device_label(args.dry_run)
    if not device:
        print("gpu_suite: no CUDA device visible (torch.cuda.is_available() is False); "
              "use --dry-run to run the suite on the CPU", file=sys.stderr)  # fmt: skip
        return 2
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    steps = args.steps.split(",") if args.steps else list(TIMEOUTS)
    deadline = time.perf_counter() + args.budget_s
    results: dict[str, dict] = {}
    for name in steps:
        left = deadline - time.perf_counter()
        if left < 5:
            results[name] = {"status": "not run: the suite's time budget is spent",
                             "seconds": 0, "last_line": ""}  # fmt: skip
        else:
            limit = min(TIMEOUTS[name][args.dry_run], left)
            print(f"== {name} (limit {limit:.0f} s)", flush=True)
            results[name] = run_step(name, args, limit)
        print(f"== {name}: {results[name]['status']} {results[name]['last_line']}", flush=True)
        write_summary(args.out, results, device)
    print(json.dumps({k: v["status"] for k, v in results.items()}))
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--assets",
        type=Path,
        default=Path("gpu_assets"),
        help="a folder with cifar10/train and cifar10/test (gpu_assets.py)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="seconds for the whole suite (default 300 on a GPU, 1800 dry)",
    )
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--steps", default="", help=f"comma list of {', '.join(TIMEOUTS)}")
    parser.add_argument("--step", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 1800.0 if args.dry_run else 300.0
    unknown = set(filter(None, args.steps.split(","))) - set(TIMEOUTS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; steps: {', '.join(TIMEOUTS)}")
    if not (args.assets / "cifar10" / "train").is_dir():
        parser.error(f"{args.assets}/cifar10/train not found: run benchmarks/gpu_assets.py "
                     "or pass --assets ../shared/assets")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.step:
        from gpu_steps import STEPS, Context

        STEPS[args.step](Context(args.out, args.assets, args.dry_run))
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
