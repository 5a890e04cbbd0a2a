"""`rmt-deploy`: one subcommand per pipeline stage; errors in the input exit with status 2."""

from __future__ import annotations

import argparse
import copy
import errno
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import RmtDeployError
from .machine import keep_large_allocations


def _number(
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
):
    """An argparse type: a finite float in the given range; the error names the valid range
    (NaN and inf pass no comparison honestly, so they are refused first)."""
    if low is not None and high is not None:
        valid = f"lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        valid = f"be a finite number {'>' if low_open else '≥'} {low:g}"
    else:
        valid = "be a finite number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"{name} must {valid}, got {text}")
        return value

    return parse


def _fraction(low: float, high: float, name: str):
    return _number(name, low, high, low_open=True, high_open=True)


_sparsity = _number("--sparsity", 0.0, 1.0, high_open=True)


def _settings(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise RmtDeployError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
        if isinstance(out[key], float) and not math.isfinite(out[key]):
            raise RmtDeployError(f"--set {key} must be a finite number, got {raw}")
    return out


def _int_at_least(minimum: int, name: str = ""):
    def parse(text: str) -> int:
        what = f"{name} must be an integer" if name else "expected an integer"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} ≥ {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} ≥ {minimum}, got {value}")
        return value

    return parse


def _device(text: str) -> str:
    """cpu, cuda or cuda:N, refused while parsing: an unknown device found after the other
    stages ran wastes their time."""
    from .devices import DEVICE_PATTERN

    if not DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            f"--device must be cpu, cuda or cuda:N (N a GPU index), got {text!r}"
        )
    return text


MODEL_HELP = (
    "cifar_resnet20|32|44|56, cifar_vit_tiny, a timm model name, package.module:callable, or "
    "a `rmt-deploy compress` output (its folder or its model.safetensors)"
)


def _add_model_args(
    parser: argparse.ArgumentParser, checkpoint: bool = True, random_init: bool = True
) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    if checkpoint:
        parser.add_argument(
            "--checkpoint", type=Path, help="weights: .safetensors or .pth/.pt state dict"
        )
    if random_init:
        parser.add_argument(
            "--random-init",
            action="store_true",
            help="do not load the pretrained CIFAR ResNet checkpoint from the shared assets",
        )


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _int_list_arg(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 240 or 3,240,240, got {text!r}"
        ) from None


def _add_preprocess_args(parser: argparse.ArgumentParser) -> None:
    """Preprocessing for any model (each overrides the model's own pretrained_cfg)."""
    group = parser.add_argument_group("preprocessing (default: the model's own)")
    group.add_argument("--input-size", type=_int_list_arg, help="H,W or C,H,W (e.g. 240,240)")
    group.add_argument("--mean", type=_float_list, help="per-channel mean, e.g. 0.5,0.5,0.5")
    group.add_argument("--std", type=_float_list, help="per-channel std, e.g. 0.5,0.5,0.5")
    group.add_argument("--interpolation", help="resize interpolation: bilinear, bicubic, …")
    group.add_argument(
        "--crop-pct",
        type=_number("--crop-pct", 0.0, 1.0, low_open=True),
        help="resize to size/crop_pct, then crop",
    )


def _preprocess_overrides(args: argparse.Namespace) -> dict[str, object]:
    size = args.input_size
    if size is not None and len(size) == 1:
        size = [size[0], size[0]]
    return {
        "input_size": size,
        "mean": args.mean,
        "std": args.std,
        "interpolation": args.interpolation,
        "crop_pct": args.crop_pct,
    }


def _data_config(args: argparse.Namespace, model):
    """The model's DataConfig with the command line's preprocessing overrides."""
    from .models import DataConfig

    return DataConfig.from_model(model).with_overrides(**_preprocess_overrides(args))


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in the CLI's one-line form (`rmt-deploy: error: …`, exit 2):
    a deployment log gets the problem, not a usage block; `--help` still shows the usage."""

    def error(self, message: str):  # type: ignore[override]
        verb = self.prog.removeprefix("rmt-deploy").strip()
        where = f"{verb}: " if verb else ""
        message = re.sub(r"^argument (\S+): (?=\1 )", "", message)  # our types name the flag
        self.exit(2, f"rmt-deploy: error: {where}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rmt-deploy",
        description="Random-matrix-theory guided compression of vision models for deployment.",
    )
    parser.add_argument(
        "--assets",
        type=Path,
        help="shared assets folder (default: $RMT_DEPLOY_ASSETS, else ../shared/assets)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _parser_analyze,
        _parser_compress,
        _parser_export,
        _parser_build,
        _parser_bench,
        _parser_run,
        _parser_report,
        _parser_eval,
    ):
        add(sub)
    return parser


def _parser_analyze(sub) -> None:
    analyze = sub.add_parser("analyze", help="MP spectral analysis of every Linear/Conv weight")
    _add_model_args(analyze)
    analyze.add_argument("--out", type=Path, required=True, help="output directory")
    analyze.add_argument(
        "--alpha",
        type=_fraction(0, 0.5, "--alpha"),
        default=0.25,
        help="BEMA trims this share at each end of the spectrum (default 0.25)",
    )
    analyze.add_argument(
        "--beta",
        type=_fraction(0, 1, "--beta"),
        default=0.8,
        help="edge at the 1-β Tracy–Widom quantile (default 0.8: liberal)",
    )
    analyze.add_argument(
        "--min-dim",
        type=_int_at_least(1, "--min-dim"),
        default=16,
        help="skip matrices whose smaller side is below this (default 16)",
    )
    analyze.add_argument("--no-plots", action="store_true", help="skip the per-layer PNG plots")
    analyze.set_defaults(func=_cmd_analyze)


def _parser_compress(sub) -> None:
    compress = sub.add_parser(
        "compress", help="plan and apply a compression strategy, optionally recover, save"
    )
    _add_model_args(compress)
    _add_preprocess_args(compress)
    compress.add_argument(
        "--strategy",
        required=True,
        help="magnitude | classic_rmt | seb | ser | hybrid | lowrank | nm24",
    )
    compress.add_argument(
        "--sparsity",
        type=_sparsity,
        default=0.5,
        help="share of conv/linear weights (lowrank: parameters) to remove",
    )
    compress.add_argument(
        "--data", type=Path, help="training image folder (needed by ser, hybrid, lowrank, recovery)"
    )
    compress.add_argument("--out", type=Path, required=True, help="output directory")
    compress.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy setting, e.g. --set theta=0.2 (repeatable)",
    )
    compress.add_argument(
        "--bn-recal-images",
        type=_int_at_least(0, "--bn-recal-images"),
        default=2000,
        help="re-estimate BatchNorm statistics on this many images (with --data)",
    )
    compress.add_argument(
        "--finetune-steps",
        type=_int_at_least(0, "--finetune-steps"),
        default=0,
        help="recovery fine-tune steps after compression (with --data)",
    )
    compress.add_argument(
        "--lr",
        type=_number("--lr", 0.0),
        default=None,
        help="fine-tune learning rate (default 0.01 with SGD, 1e-4 with the seed's AdamW)",
    )
    compress.add_argument(
        "--device",
        type=_device,
        default="cpu",
        help="cpu (default) or cuda[:N]: where latency is measured; picks the torchrun backend "
        "(nccl for cuda, gloo for cpu)",
    )
    reg = compress.add_argument_group("regularized recovery (the seed's, arXiv 2503.01922)")
    reg.add_argument(
        "--seed-regularizers",
        action="store_true",
        help="group lasso 1e-6·s_ℓ (s_ℓ from the MP fit), L1 5e-7, L2 2e-7, gradients × s_ℓ",
    )
    for flag, what in (
        ("--group-lasso", "group-lasso weight (× s_ℓ per layer)"),
        ("--l1", "L1 weight on every Linear/Conv weight"),
        ("--l2", "L2 weight on every Linear/Conv weight"),
    ):
        reg.add_argument(flag, type=_number(flag, 0.0), help=what)
    compress.add_argument(
        "--distill-alpha",
        type=_number("--distill-alpha", 0.0, 1.0),
        default=0.0,
        help="weight of distillation from the uncompressed model (0 = off)",
    )
    compress.set_defaults(func=_cmd_compress)


def _parser_export(sub) -> None:
    export = sub.add_parser("export", help="ONNX with a dynamic batch, verified in ONNX Runtime")
    _add_preprocess_args(export)
    export.add_argument("model", help=MODEL_HELP)
    export.add_argument("--checkpoint", type=Path, help="weights for a model given by name")
    export.add_argument("--random-init", action="store_true", help=argparse.SUPPRESS)
    export.add_argument("--out", type=Path, required=True, help="output directory")
    export.add_argument(
        "--data", type=Path, help="image folder for the parity check (default: random inputs)"
    )
    export.add_argument("--verify-images", type=_int_at_least(1, "--verify-images"), default=64)
    export.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    export.add_argument(
        "--opset", type=_int_at_least(7, "--opset"), help="default 17 (torchscript) or 20 (dynamo)"
    )
    export.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    export.add_argument("--static-batch", action="store_true", help="fix the batch axis to 1")
    export.add_argument(
        "--torch-tensorrt",
        choices=("fp32", "fp16", "bf16"),
        help="also compile with Torch-TensorRT at this precision (GPU only) and save model_trt.ep",
    )
    export.add_argument("--atol", type=_number("--atol", 0.0), default=1e-4)
    export.add_argument("--rtol", type=_number("--rtol", 0.0), default=1e-3)
    export.set_defaults(func=_cmd_export)


def _parser_build(sub) -> None:
    build = sub.add_parser("build", help="TensorRT engine from an exported ONNX file")
    build.add_argument("onnx", type=Path, help="model.onnx written by `rmt-deploy export`")
    build.add_argument("--out", type=Path, help="engine file (default: beside the ONNX)")
    build.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16")
    build.add_argument("--sparsity", choices=("disable", "enable", "force"), default="enable")
    build.add_argument("--batch", default="1:1:1", help="optimization profile MIN:OPT:MAX")
    build.add_argument("--workspace", type=_int_at_least(1, "--workspace"), default=2048, help="MB")
    build.add_argument("--timing-cache", type=Path, help="read and update this timing cache")
    build.set_defaults(func=_cmd_build)


def _parser_bench(sub) -> None:
    bench = sub.add_parser("bench", help="latency, memory and accuracy of model variants")
    _add_preprocess_args(bench)
    bench.add_argument(
        "model",
        help="model name (the variants are checkpoints of it), or a `rmt-deploy compress` "
        "output: then dense and compressed are compared unless --variant says otherwise",
    )
    bench.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME[=CHECKPOINT]",
        help="a variant to compare; the first is the reference (default: dense)",
    )
    bench.add_argument(
        "--backends",
        default="torch,onnxruntime",
        help="comma list of backends (torch, torch-compile, onnxruntime, onnxruntime-int8, "
        "openvino, openvino-f32, openvino-bf16, openvino-int8, onnxruntime-cuda, "
        "onnxruntime-trt, tensorrt, torch-cuda-fp16, torch-cuda-bf16), or auto: every "
        "deployment this device runs",
    )
    bench.add_argument(
        "--calib",
        type=Path,
        help="image folder (labels not needed) the INT8 backends are calibrated on; keep it "
        "apart from --data",
    )
    bench.add_argument(
        "--engine",
        action="append",
        default=[],
        metavar="NAME=ENGINE",
        help="a TensorRT engine (rmt-deploy build) for variant NAME, run by backend tensorrt",
    )
    bench.add_argument(
        "--power", action="store_true", help="sample power with tegrastats/jtop (Jetson)"
    )
    bench.add_argument("--batches", default="1,8", help="comma list of batch sizes")
    bench.add_argument("--data", type=Path, help="labelled image folder for top-1")
    bench.add_argument(
        "--limit", type=_int_at_least(1, "--limit"), default=1000, help="images for top-1"
    )
    bench.add_argument("--runs", type=_int_at_least(1, "--runs"), default=60)
    bench.add_argument(
        "--warmup", type=_number("--warmup", 0.0), default=1.0, help="seconds of warm-up"
    )
    bench.add_argument(
        "--device", type=_device, default="cpu", help="cpu or cuda[:N] (torch backends)"
    )
    bench.add_argument("--out", type=Path, required=True)
    bench.set_defaults(func=_cmd_bench)


def _parser_run(sub) -> None:
    pipeline = sub.add_parser(
        "run", help="the whole pipeline from a YAML config (analyze … benchmark, report)"
    )
    pipeline.add_argument("config", type=Path, help="run config (YAML); see examples/")
    pipeline.add_argument("--output", type=Path, help="output folder (overrides the config's)")
    pipeline.add_argument(
        "--stages", help="comma list of stages to run (their dependencies must be done)"
    )
    pipeline.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    pipeline.add_argument(
        "--accuracy-budget",
        type=_number("--accuracy-budget", 0.0),
        help="the most the budget metric may lose on held-out images (overrides the config's)",
    )
    pipeline.add_argument(
        "--budget-metric", help="top1 | agreement | kl | cosine | package.module:callable"
    )
    pipeline.add_argument(
        "--require-compression",
        action="store_true",
        help="fail (exit 2) when no compressed plan fits the budget, instead of shipping dense",
    )
    _add_preprocess_args(pipeline)
    pipeline.set_defaults(func=_cmd_run)


def _parser_report(sub) -> None:
    report = sub.add_parser("report", help="re-render tables and plots from saved results")
    report.add_argument("dir", type=Path, help="folder with bench.json")
    report.set_defaults(func=_cmd_report)


def _parser_eval(sub) -> None:
    evaluate = sub.add_parser("eval", help="top-1 accuracy on a labelled image folder")
    _add_model_args(evaluate)
    _add_preprocess_args(evaluate)
    evaluate.add_argument(
        "--data",
        type=Path,
        required=True,
        help="class sub-folders (e.g. cifar10/test) or a folder with labels.csv",
    )
    evaluate.add_argument("--batch-size", type=_int_at_least(1, "--batch-size"), default=250)
    evaluate.add_argument(
        "--limit", type=_int_at_least(1, "--limit"), help="evaluate an evenly spaced subset"
    )
    evaluate.add_argument(
        "--workers", type=_int_at_least(0, "--workers"), default=1, help="data-loading processes"
    )
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.set_defaults(func=_cmd_eval)


def _load(args: argparse.Namespace):
    from .models import load_model

    return load_model(
        args.model, args.checkpoint, pretrained=not args.random_init, assets=args.assets
    )


def _labelled_folder(args: argparse.Namespace, model, transform, limit=None):
    """`--data` opened for a verb that scores or trains on its labels: class sub-folders are
    mapped to the model's outputs by name where the model names its classes, and refused where
    labelling them by position would be wrong (fewer folders than outputs)."""
    from .data import load_image_dataset, model_label_names, model_num_outputs

    return load_image_dataset(
        args.data,
        transform,
        limit,
        classes=model_label_names(model),
        num_outputs=model_num_outputs(model, tuple(_data_config(args, model).input_size)),
    )


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze
    from .paths import ensure_output_dir
    from .report import write_spectrum_report

    _resolve_model_arg(args)
    out = ensure_output_dir(args.out)  # fail before the slow part, not after
    model = _load(args)
    spectrum = analyze(
        model,
        alpha=args.alpha,
        beta=args.beta,
        min_dim=args.min_dim,
        name=args.model,
        progress=not args.quiet,
    )
    write_spectrum_report(spectrum, out, plots=not args.no_plots, progress=not args.quiet)
    s = spectrum.summary()
    noise = "–" if s["noise_fraction"] is None else f"{100 * s['noise_fraction']:.1f} %"
    print(
        f"{args.model}: {s['fitted']} layers fitted, {s['skipped']} skipped; "
        f"{s['spikes']} spikes of {s['singular_values']} singular values "
        f"(noise share {noise}); edge truncation would keep "
        f"{s['edge_truncation_params']:,} of {s['matrix_params_fitted']:,} matrix parameters"
    )
    print(
        f"wrote {out / 'spectrum.json'}, {out / 'spectrum.md'}"
        + ("" if args.no_plots else f" and {len(spectrum.fitted)} plots in {out / 'plots'}")
    )
    return 0


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def ddp_backend(device: str) -> str:
    """The process-group backend for tensors on `device`: nccl moves CUDA tensors only, so a
    CPU run on a machine that happens to have GPUs must use gloo."""
    return "nccl" if device.startswith("cuda") else "gloo"


def _init_distributed(device: str = "cpu") -> None:
    """Under `torchrun` (WORLD_SIZE > 1) join the process group with the backend for the
    device the work runs on (`ddp_backend`)."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = ddp_backend(device)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def _check_device(device: str, flag: str = "--device") -> None:
    """A CUDA device that is not there: said before any work, not by a crash later."""
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise RmtDeployError(f"{flag} {device}: no CUDA device is visible here; use {flag} cpu")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise RmtDeployError(
            f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
            f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})"
        )


def _cmd_compress(args: argparse.Namespace) -> int:
    from .compress import compress_
    from .data import eval_transform, train_transform
    from .models import save_checkpoint
    from .models.checkpoint import PLAN_METADATA_KEY
    from .paths import ensure_output_dir
    from .recovery import bn_recalibrate, finetune, recipe_for
    from .strategies import Target, needs_training, plan

    _resolve_model_arg(args)
    if args.finetune_steps > 0 and args.data is None:  # say so before minutes of planning
        raise RmtDeployError("--finetune-steps needs --data (a training image folder)")
    if args.finetune_steps == 0 and (
        args.seed_regularizers or any(getattr(args, f) for f in ("group_lasso", "l1", "l2"))
    ):
        raise RmtDeployError("the regularizers act during fine-tuning: add --finetune-steps N")
    _check_device(args.device)
    if args.device != "cpu" and args.finetune_steps > 0:
        raise RmtDeployError(
            f"--device {args.device} with --finetune-steps: recovery fine-tuning runs on the CPU "
            "in this version; use --device cpu (the device only moves latency measurements)"
        )
    settings = _settings(args.set)
    out = ensure_output_dir(args.out)
    _init_distributed(args.device)
    model = _load(args)
    config = _data_config(args, model)
    calib = train = None
    if args.data is not None:
        calib = _labelled_folder(args, model, eval_transform(config))
        train = _labelled_folder(args, model, train_transform(config))
    data = train if needs_training(args.strategy) else calib
    the_plan = plan(
        model,
        args.strategy,
        args.sparsity,
        data=data,
        name=args.model,
        config=settings,
        target=Target(device=args.device),
    )
    teacher = copy.deepcopy(model) if args.distill_alpha > 0 else None
    compress_(model, the_plan)
    if calib is not None and args.bn_recal_images > 0:
        bn_recalibrate(model, calib, n_images=args.bn_recal_images, progress=not args.quiet)
    if args.finetune_steps > 0:
        if train is None:
            raise RmtDeployError("--finetune-steps needs --data (a training image folder)")
        recipe = recipe_for(
            model,
            args.finetune_steps,
            lr=args.lr,
            distill_alpha=args.distill_alpha,
            seed_regularizers=args.seed_regularizers,
            group_lasso=args.group_lasso,
            l1=args.l1,
            l2=args.l2,
        )
        scales = None
        if recipe.group_lasso or recipe.scale_gradients:
            from .analysis import analyze
            from .recovery import lasso_scales

            scales = lasso_scales(analyze(copy.deepcopy(model)))
        finetune(model, train, recipe, teacher=teacher, lasso_scale=scales, progress=not args.quiet)
    if _rank() != 0:  # under torchrun every rank trains; one writes
        return 0
    the_plan.save(out / "plan.json")
    save_checkpoint(
        model,
        out / "model.safetensors",
        {PLAN_METADATA_KEY: the_plan.to_json(), "rmt_deploy.model": args.model},
    )
    s = the_plan.summary()
    print(
        f"{args.model} {args.strategy} s={args.sparsity}: {s['params_before']:,} → "
        f"{s['params_after']:,} weights of the planned layers "
        f"({100 * s['sparsity']:.1f} % removed); {the_plan.coverage_line()}"
    )
    print(
        f"wrote {out / 'model.safetensors'} and {out / 'plan.json'}; evaluate with: "
        f"rmt-deploy eval {out} --data DIR"
    )
    return 0


def _stored_model_name(path: Path) -> str:
    """The model name `rmt-deploy compress` stores in its checkpoint's metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            name = (handle.metadata() or {}).get("rmt_deploy.model")
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RmtDeployError(f"cannot read checkpoint {path}: {reason}") from exc
    if not name:
        raise RmtDeployError(
            f"{path} does not name its model (it was not written by `rmt-deploy compress`); "
            f"pass the model name and --checkpoint {path}"
        )
    return name


def _resolve_model_arg(args: argparse.Namespace) -> Path | None:
    """MODEL may be a `rmt-deploy compress` output: its folder (model.safetensors + plan.json)
    or its model.safetensors. Then args.model becomes the model name stored in the checkpoint
    and args.checkpoint that file; returns the checkpoint, or None for a plain model name."""
    from .paths import is_dir, is_file, path_problem

    text = str(args.model)
    if ":" in text and not is_dir(text) and not is_file(text):  # package.module:callable
        return None
    path = Path(text)
    problem = path_problem(path)
    if problem:
        raise RmtDeployError(f"model {text[:40]}…: {problem}")
    if is_dir(path):
        checkpoint = path / "model.safetensors"
        if not checkpoint.is_file():
            raise RmtDeployError(
                f"{path} is a folder without model.safetensors: give a `rmt-deploy compress` "
                "output folder, its model.safetensors, or a model name"
            )
    elif is_file(path):
        if path.suffix != ".safetensors":
            raise RmtDeployError(
                f"{path} is a {path.suffix or 'plain'} file, which does not say which model it "
                f"holds: pass the model name and --checkpoint {path}"
            )
        checkpoint = path
    else:
        return None
    name = _stored_model_name(checkpoint)
    given = getattr(args, "checkpoint", None)
    if given is not None and Path(given).resolve() != checkpoint.resolve():
        raise RmtDeployError(
            f"both {args.model} and --checkpoint {given} give weights: pass one of them"
        )
    args.model = name
    if hasattr(args, "checkpoint"):
        args.checkpoint = checkpoint
    return checkpoint


def _cmd_export(args: argparse.Namespace) -> int:
    from .data import eval_transform, load_image_dataset
    from .exporters import export
    from .exporters.manifest import manifest_extra
    from .models.checkpoint import read_plan_metadata
    from .paths import ensure_output_dir

    _resolve_model_arg(args)
    if args.torch_tensorrt:  # fail before the export, not after it
        import importlib.util

        if importlib.util.find_spec("torch_tensorrt") is None:
            raise RmtDeployError(
                "--torch-tensorrt: torch-tensorrt is not installed (it needs an NVIDIA GPU)"
            )
    out = ensure_output_dir(args.out)
    model = _load(args)
    config = _data_config(args, model)
    data = None
    if args.data is not None:  # parity against PyTorch: the labels are not used
        data = load_image_dataset(args.data, eval_transform(config), args.verify_images)
    plan_json = read_plan_metadata(args.checkpoint) if args.checkpoint else None
    source = {"model": args.model, "checkpoint": str(args.checkpoint) if args.checkpoint else None}
    extra = manifest_extra(model, config, source, json.loads(plan_json) if plan_json else None)
    artifact = export(
        model,
        out,
        tuple(config.input_size),
        dynamic_batch=not args.static_batch,
        opset=args.opset,
        exporter=args.exporter,
        simplify=not args.no_simplify,
        verify_data=data,
        n_verify=args.verify_images,
        atol=args.atol,
        rtol=args.rtol,
        name=args.model,
        manifest_extra=extra,
    )
    if args.torch_tensorrt:
        from .exporters.torch_tensorrt_build import compile_torch_tensorrt

        ep = compile_torch_tensorrt(
            model, out / "model_trt.ep", tuple(config.input_size), precision=args.torch_tensorrt
        )
        print(f"wrote {ep} (Torch-TensorRT ExportedProgram, {args.torch_tensorrt})")
    p = artifact.parity
    print(
        f"{args.model}: wrote {artifact.onnx_path} (opset {artifact.opset}, {args.exporter}); "
        f"parity on {p.n_images} {p.source}: max |Δ| {p.max_abs_diff:.2e}, "
        f"rel {p.max_rel_diff:.2e}, top-1 agreement {100 * p.top1_agreement:.2f} %"
    )
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from .exporters.tensorrt_build import BatchProfile, build_engine, engine_layers_path

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
    return 0


def _int_list(text: str, what: str) -> list[int]:
    """Positive integers from a comma list (`--batches 1,8,64`)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise RmtDeployError(f"{what} takes a comma list of integers, got {text!r}") from exc
    if not values or min(values) <= 0:
        raise RmtDeployError(f"{what} takes positive integers, got {text!r}")
    return values


def _quantized(backend: str) -> bool:
    """Whether `backend` runs the INT8 (QDQ) file, as its deployment says."""
    from .deploy import DEPLOYMENTS

    return backend in DEPLOYMENTS and DEPLOYMENTS[backend].quantized


def _bench_backends(args: argparse.Namespace, known) -> tuple[list[str], dict[str, str]]:
    """The backends `--backends` names (auto: every deployment this device runs) and, for
    auto, the ones left out with the reason; checked before any model is loaded."""
    from .deploy import resolve

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    skipped: dict[str, str] = {}
    if backends == ["auto"]:
        chosen, skipped = resolve("auto", args.device)
        backends = [d.name for d in chosen]
        if args.calib is None:  # auto never fails for want of calibration images
            for b in [b for b in backends if _quantized(b)]:
                skipped[b] = "INT8 needs --calib images to calibrate on"
            backends = [b for b in backends if not _quantized(b)]
    if not backends:
        raise RmtDeployError(
            f"--backends names no backend; available: auto, {', '.join(known)}"
            if not skipped
            else "no backend can run here: " + "; ".join(f"{n}: {w}" for n, w in skipped.items())
        )
    unknown = [b for b in backends if b not in known]
    if unknown:
        raise RmtDeployError(
            f"unknown backend(s) {', '.join(unknown)}; available: auto, {', '.join(known)}"
        )
    int8 = [b for b in backends if _quantized(b)]
    if int8 and args.calib is None:
        raise RmtDeployError(
            f"{', '.join(int8)} needs calibration images: add --calib FOLDER (not the --data "
            "images top-1 is measured on)"
        )
    if args.calib is not None and not Path(args.calib).is_dir():
        raise RmtDeployError(f"--calib folder not found: {args.calib}")
    return backends, skipped


def _calibration_batches(args: argparse.Namespace, config) -> list:
    """The INT8 calibration batches from `--calib`: the range images the pipeline uses."""
    from torch.utils.data import Subset

    from .data import eval_transform, load_image_dataset
    from .exporters.quantize import calibration_batches, int8_images

    images = load_image_dataset(args.calib, eval_transform(config))
    ranges, _ = int8_images(images)
    return calibration_batches(Subset(images, ranges), len(ranges))


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BACKENDS, benchmark, write_report
    from .data import eval_transform
    from .deploy import DEPLOYMENTS
    from .exporters import export
    from .exporters.quantize import INT8_FILES, int8_artifacts
    from .models import load_model
    from .paths import ensure_output_dir

    compressed = _resolve_model_arg(args)
    if compressed is not None and not args.variant:  # a compress output: it against dense
        args.variant = ["dense", f"compressed={compressed}"]
    names = [spec.partition("=")[0] for spec in args.variant]
    if len(set(names)) < len(names) or not all(names):
        raise RmtDeployError(f"--variant names must be distinct and non-empty, got {names}")
    backends, skipped = _bench_backends(args, BACKENDS)
    batches = _int_list(args.batches, "--batches")
    out = ensure_output_dir(args.out)
    variants: dict[str, dict] = {}
    for spec in args.variant or ["dense"]:
        name, _, checkpoint = spec.partition("=")
        model = load_model(args.model, checkpoint or None, assets=args.assets)
        variants[name] = {"model": model}
    for spec in args.engine:
        name, sep, engine = spec.partition("=")
        if not sep or name not in variants:
            raise RmtDeployError(
                f"--engine takes NAME=ENGINE for one of the variants ({', '.join(variants)}), "
                f"got {spec!r}"
            )
        if not Path(engine).is_file():
            raise RmtDeployError(f"engine file not found: {engine}")
        variants[name]["engine"] = Path(engine)
    config = _data_config(args, next(iter(variants.values()))["model"])
    data = None
    if args.data is not None:
        first = next(iter(variants.values()))["model"]
        data = _labelled_folder(args, first, eval_transform(config), args.limit)
    if any(b.startswith(("onnxruntime", "openvino")) for b in backends):
        artifacts = {DEPLOYMENTS[b].artifact for b in backends if _quantized(b)}
        calib = _calibration_batches(args, config) if artifacts else None
        for name, spec in variants.items():
            spec["onnx"] = export(
                spec["model"], out / "onnx" / name, tuple(config.input_size), n_verify=8, name=name
            ).onnx_path
            if calib is not None:
                int8_artifacts(spec["onnx"], artifacts, calib)
                folder = spec["onnx"].parent
                spec.update({a: folder / INT8_FILES[a] for a in artifacts})
    suite = benchmark(
        variants,
        backends,
        batches,
        tuple(config.input_size),
        data=data,
        reference=next(iter(variants)),
        warmup_s=args.warmup,
        runs=args.runs,
        backend_options={"device": args.device},
        power=args.power,
    )
    write_report(suite, out, f"{args.model}: {', '.join(variants)}")
    for r in suite.results:
        speed = r.extra.get("speedup_vs_reference")
        print(
            f"{r.variant:>12} {r.backend:>12} batch {r.batch:>4}: median "
            f"{r.latency.median_ms:8.3f} ms  p99 {r.latency.p99_ms:8.3f} ms"
            + (f"  ×{speed:.2f}" if speed else "")
            + (f"  top-1 {r.top1:.2f} %" if r.top1 is not None else "")
        )
    for s in suite.skipped:
        print(f"not run: {s['variant']} / {s['backend']}: {s['reason']}")
    for name, why in skipped.items():
        print(f"not run: {name}: {why}")
    print(f"wrote {out / 'bench.md'}, bench.json, bench.csv and plots")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import RunConfig, load_config, run
    from .pipeline.run import check_stages

    stages = None
    if args.stages is not None:  # `--stages ,` or `--stages ''` is an error, not "all"
        stages = check_stages([s.strip() for s in args.stages.split(",") if s.strip()])
    config = load_config(args.config)
    if args.output is not None:
        config.output = str(args.output)
    if args.assets is not None:
        config.assets = str(args.assets)
    if args.accuracy_budget is not None:
        config.compress.accuracy_budget = args.accuracy_budget
        config.compress.layer_error = None
    if args.budget_metric is not None:
        config.compress.budget_metric = args.budget_metric
    if args.require_compression:
        config.compress.require_compression = True
    for key, value in _preprocess_overrides(args).items():
        if value is not None:
            setattr(config.data.preprocess, key, value)
    config = RunConfig.from_dict(config.to_dict())  # the overrides pass the same checks
    result = run(config, stages=stages, force=args.force, progress=not args.quiet)
    print(
        f"ran {', '.join(result.ran) or 'nothing'}"
        + (f"; up to date: {', '.join(result.skipped)}" if result.skipped else "")
    )
    coverage = result.summaries.get("plan", {}).get("coverage")
    if coverage:
        print(f"plan: {coverage}")
    if result.report is not None:
        print(f"report: {result.report}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .bench import render_saved

    written = render_saved(args.dir)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .data import eval_transform
    from .evaluate import evaluate

    _resolve_model_arg(args)
    model = _load(args)
    dataset = _labelled_folder(args, model, eval_transform(_data_config(args, model)), args.limit)
    result = evaluate(
        model, dataset, batch_size=args.batch_size, workers=args.workers, progress=not args.quiet
    )
    if args.json:
        print(json.dumps({"model": args.model, "data": str(args.data), **result.to_dict()}))
    else:
        print(
            f"{args.model} on {args.data}: top-1 {result.top1:.2f} %, top-5 {result.top5:.2f} % "
            f"({result.n_images} images, {result.seconds:.1f} s)"
        )
    return 0


# Errors of the machine or the file system, not of rmt-deploy: one line, like bad input.
_ENVIRONMENT_ERRNOS = {
    errno.ENAMETOOLONG,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
}


def one_line(message: str) -> str:
    """An error message as one line. An error raised in a DataLoader worker comes back with
    torch's wrapping ("Caught DataError in DataLoader worker process 0. Original Traceback
    …", the worker's whole traceback): its last line is the original message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return message.strip()
    if lines[0].startswith("Caught ") and "Original Traceback" in message:
        last = lines[-1]
        # "rmt_deploy.errors.DataError: …" → "…"
        return re.sub(r"^[A-Za-z_][\w.]*(Error|Exception)[^:\s]*: ", "", last, count=1)
    return " ".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad option (exit 2, said in one line) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    keep_large_allocations()
    try:
        return args.func(args)
    except RmtDeployError as exc:
        print(f"rmt-deploy: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "run":
            line = "interrupted; rerun the same command to resume — finished stages are kept"
        else:
            line = "interrupted; rerun the same command — no output was left half-written"
        print(f"rmt-deploy: {line}", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"rmt-deploy: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
