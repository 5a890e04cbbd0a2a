"""`rmt-deploy export`: ONNX with a dynamic batch and its manifest, verified in ONNX Runtime."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import RmtDeployError
from .args import MODEL_HELP, add_preprocess_args, int_at_least, number
from .inputs import data_config, load, resolve_model_arg


def add_parser(sub) -> None:
    export = sub.add_parser("export", help="ONNX with a dynamic batch, verified in ONNX Runtime")
    add_preprocess_args(export)
    export.add_argument("model", help=MODEL_HELP)
    export.add_argument("--checkpoint", type=Path, help="weights for a model given by name")
    export.add_argument("--random-init", action="store_true", help=argparse.SUPPRESS)
    export.add_argument("--out", type=Path, required=True, help="output directory")
    export.add_argument(
        "--data", type=Path, help="image folder for the parity check (default: random inputs)"
    )
    export.add_argument("--verify-images", type=int_at_least(1, "--verify-images"), default=64)
    export.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    export.add_argument(
        "--opset", type=int_at_least(7, "--opset"), help="default 17 (torchscript) or 20 (dynamo)"
    )
    export.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    export.add_argument("--static-batch", action="store_true", help="fix the batch axis to 1")
    export.add_argument(
        "--torch-tensorrt",
        choices=("fp32", "fp16", "bf16"),
        help="also compile with Torch-TensorRT at this precision (GPU only) and save model_trt.ep",
    )
    export.add_argument("--atol", type=number("--atol", 0.0), default=1e-4)
    export.add_argument("--rtol", type=number("--rtol", 0.0), default=1e-3)
    export.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from ..data import eval_transform, load_image_dataset
    from ..paths import ensure_output_dir
    from ..verbs import export_onnx

    resolve_model_arg(args)
    if args.torch_tensorrt:  # fail before the export, not after it
        import importlib.util

        if importlib.util.find_spec("torch_tensorrt") is None:
            raise RmtDeployError(
                "--torch-tensorrt: torch-tensorrt is not installed (it needs an NVIDIA GPU)"
            )
    out = ensure_output_dir(args.out)
    model = load(args)
    config = data_config(args, model)
    data = None
    if args.data is not None:  # parity against PyTorch: the labels are not used
        data = load_image_dataset(args.data, eval_transform(config), args.verify_images)
    artifact = export_onnx(
        model,
        out,
        config,
        source={
            "model": args.model,
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        },
        plan=stored_plan(args.checkpoint),
        name=args.model,
        dynamic_batch=not args.static_batch,
        opset=args.opset,
        exporter=args.exporter,
        simplify=not args.no_simplify,
        verify_data=data,
        n_verify=args.verify_images,
        atol=args.atol,
        rtol=args.rtol,
    )
    if args.torch_tensorrt:
        _torch_tensorrt(model, out, config, args.torch_tensorrt)
    p = artifact.parity
    print(
        f"{args.model}: wrote {artifact.onnx_path} (opset {artifact.opset}, {args.exporter}); "
        f"parity on {p.n_images} {p.source}: max |Δ| {p.max_abs_diff:.2e}, "
        f"rel {p.max_rel_diff:.2e}, top-1 agreement {100 * p.top1_agreement:.2f} %"
    )
    return 0


def stored_plan(checkpoint: Path | None) -> dict | None:
    """The plan a `rmt-deploy compress` checkpoint carries in its metadata, if any."""
    from ..models.checkpoint import read_plan_metadata

    plan_json = read_plan_metadata(checkpoint) if checkpoint else None
    return json.loads(plan_json) if plan_json else None


def _torch_tensorrt(model, out: Path, config, precision: str) -> None:
    from ..exporters.torch_tensorrt_build import compile_torch_tensorrt

    ep = compile_torch_tensorrt(
        model, out / "model_trt.ep", tuple(config.input_size), precision=precision
    )
    print(f"wrote {ep} (Torch-TensorRT ExportedProgram, {precision})")
