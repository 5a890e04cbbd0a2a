"""`rmt-deploy bench`: latency, memory and accuracy of model variants on backends — the
pipeline's benchmark stage for models given on the command line (`verbs.benchmark_variants`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import RmtDeployError
from .args import add_preprocess_args, device, int_at_least, number, positive_ints
from .inputs import data_config, labelled_folder, resolve_model_arg


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="latency, memory and accuracy of model variants")
    add_preprocess_args(bench)
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
    _add_measure_args(bench)
    bench.set_defaults(func=command)


def _add_measure_args(bench: argparse.ArgumentParser) -> None:
    bench.add_argument(
        "--power", action="store_true", help="sample power with tegrastats/jtop (Jetson)"
    )
    bench.add_argument("--batches", default="1,8", help="comma list of batch sizes")
    bench.add_argument("--data", type=Path, help="labelled image folder for top-1")
    bench.add_argument(
        "--limit", type=int_at_least(1, "--limit"), default=1000, help="images for top-1"
    )
    bench.add_argument("--runs", type=int_at_least(1, "--runs"), default=60)
    bench.add_argument(
        "--warmup", type=number("--warmup", 0.0), default=1.0, help="seconds of warm-up"
    )
    bench.add_argument(
        "--device",
        type=device,
        default="cpu",
        help="cpu or cuda[:N] (torch backends: fp16 with 2:4 sparse kernels on CUDA)",
    )
    bench.add_argument("--out", type=Path, required=True)


def _quantized(backend: str) -> bool:
    """Whether `backend` runs the INT8 (QDQ) file, as its deployment says."""
    from ..deploy import DEPLOYMENTS

    return backend in DEPLOYMENTS and DEPLOYMENTS[backend].quantized


def _backends(args: argparse.Namespace, known) -> tuple[list[str], dict[str, str]]:
    """The backends `--backends` names (auto: every deployment this device runs) and, for
    auto, the ones left out with the reason; checked before any model is loaded."""
    from ..verbs import auto_backends

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    skipped: dict[str, str] = {}
    if backends == ["auto"]:  # auto never fails for want of calibration images
        backends, skipped = auto_backends(args.device, calibrated=args.calib is not None)
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


def _variants(args: argparse.Namespace) -> tuple[dict[str, dict], dict[str, str | None]]:
    """(name → {"model", "engine"?} for each --variant, name → its checkpoint or None)."""
    from ..models import load_model

    variants: dict[str, dict] = {}
    checkpoints: dict[str, str | None] = {}
    for spec in args.variant or ["dense"]:
        name, _, checkpoint = spec.partition("=")
        model = load_model(args.model, checkpoint or None, assets=args.assets)
        variants[name] = {"model": model}
        checkpoints[name] = checkpoint or None
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
    return variants, checkpoints


def _export(args, variants: dict, checkpoints: dict, backends: list[str], config, out: Path):
    """ONNX (and the INT8 files, calibrated on --calib) of every variant, as the pipeline's
    export stage makes them, for the ONNX Runtime and OpenVINO backends."""
    from ..data import eval_transform, load_image_dataset
    from ..deploy import DEPLOYMENTS
    from ..layout import VariantFiles
    from ..verbs import export_int8, export_onnx, int8_calibration, variant_files
    from .export import stored_plan

    if not any(b.startswith(("onnxruntime", "openvino")) for b in backends):
        return
    artifacts = {DEPLOYMENTS[b].artifact for b in backends if _quantized(b)}
    calib = None
    if artifacts:
        calib = int8_calibration(load_image_dataset(args.calib, eval_transform(config)))
    for name, spec in variants.items():
        folder = out / "onnx" / name
        checkpoint = checkpoints[name]
        source = {"model": args.model, "checkpoint": checkpoint, "variant": name}
        plan = stored_plan(Path(checkpoint)) if checkpoint else None
        export_onnx(spec["model"], folder, config, source=source, plan=plan, name=name, n_verify=8)
        if calib is not None:
            export_int8(VariantFiles(folder).onnx, artifacts, calib)
        spec.update(variant_files(folder))


def command(args: argparse.Namespace) -> int:
    from ..bench import BACKENDS
    from ..data import eval_transform
    from ..paths import ensure_output_dir
    from ..verbs import BenchSettings, benchmark_variants

    compressed = resolve_model_arg(args)
    if compressed is not None and not args.variant:  # a compress output: it against dense
        args.variant = ["dense", f"compressed={compressed}"]
    names = [spec.partition("=")[0] for spec in args.variant]
    if len(set(names)) < len(names) or not all(names):
        raise RmtDeployError(f"--variant names must be distinct and non-empty, got {names}")
    backends, skipped = _backends(args, BACKENDS)
    settings = BenchSettings(
        backends,
        positive_ints(args.batches, "--batches"),
        device=args.device,
        runs=args.runs,
        warmup_s=args.warmup,
        power=args.power,
    )
    out = ensure_output_dir(args.out)
    variants, checkpoints = _variants(args)
    first = next(iter(variants.values()))["model"]
    config = data_config(args, first)
    data = None
    if args.data is not None:
        data = labelled_folder(args, first, eval_transform(config), args.limit)
    _export(args, variants, checkpoints, backends, config, out)
    suite, _ = benchmark_variants(
        variants,
        settings,
        tuple(config.input_size),
        out,
        f"{args.model}: {', '.join(variants)}",
        data=data,
        progress=not args.quiet,
    )
    _say_results(suite, skipped, out)
    return 0


def _say_results(suite, skipped: dict[str, str], out: Path) -> None:
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
