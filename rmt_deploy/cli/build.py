"""`rmt-deploy build`: a TensorRT engine from an exported ONNX file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import RmtDeployError
from .args import int_at_least


def add_parser(sub) -> None:
    build = sub.add_parser("build", help="TensorRT engine from an exported ONNX file")
    build.add_argument("onnx", type=Path, help="model.onnx written by `rmt-deploy export`")
    build.add_argument("--out", type=Path, help="engine file (default: beside the ONNX)")
    build.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16")
    build.add_argument("--sparsity", choices=("disable", "enable", "force"), default="enable")
    build.add_argument("--batch", default="1:1:1", help="optimization profile MIN:OPT:MAX")
    build.add_argument("--workspace", type=int_at_least(1, "--workspace"), default=2048, help="MB")
    build.add_argument("--timing-cache", type=Path, help="read and update this timing cache")
    build.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from ..exporters.tensorrt_build import BatchProfile, build_engine

    if not args.onnx.is_file():
        raise RmtDeployError(f"ONNX file not found: {args.onnx}")
    profile = BatchProfile.parse(args.batch)
    engine = args.out or args.onnx.with_name(
        f"{args.onnx.stem}_{args.precision}_b{profile.maximum}.engine"
    )
    report = build_engine(
        args.onnx,
        engine,
        precision=args.precision,
        sparsity=args.sparsity,
        batch=profile,
        workspace_mb=args.workspace,
        timing_cache=args.timing_cache,
    )
    print(
        f"wrote {report.engine_path} (TensorRT {report.tensorrt_version}, {report.precision}, "
        f"{'strongly typed' if report.strongly_typed else 'builder flags'}, batch "
        f"{profile.minimum}:{profile.optimum}:{profile.maximum})"
    )
    _say_sparsity(report)
    return 0


def _say_sparsity(report) -> None:
    from ..exporters.tensorrt_build import engine_layers_path

    if report.sparse_eligible:
        print(
            f"sparse-eligible layers ({len(report.sparse_eligible)}): "
            + ", ".join(report.sparse_eligible)
        )
        print(
            f"sparse kernels picked ({len(report.sparse_picked)}): "
            + (", ".join(report.sparse_picked) or "none")
        )
    s24 = report.sparse_24
    print(
        f"per-layer report: {engine_layers_path(report.engine_path)} "
        f"({len(report.layers)} layers{'; ' + report.layers_reason if report.layers_reason else ''}"
        f"); 2:4 layers with a sparse tactic: {len(s24['sparse'])} of {len(s24['eligible'])}"
        + (f" ({s24['note']})" if s24.get("note") else "")
    )
