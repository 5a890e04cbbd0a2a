"""`rmt-deploy`: one subcommand per pipeline stage; errors in the input exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import RmtDeployError


def _fraction(low: float, high: float, name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from exc
        if not low < value < high:
            raise argparse.ArgumentTypeError(f"{name} must lie in ({low}, {high}), got {value}")
        return value

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        help="cifar_resnet20|32|44|56, a timm model name, or package.module:callable",
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="weights: .safetensors or .pth/.pt state dict"
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="do not load the pretrained CIFAR ResNet checkpoint from the shared assets",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        type=_positive_int,
        default=16,
        help="skip matrices whose smaller side is below this (default 16)",
    )
    analyze.add_argument("--no-plots", action="store_true", help="skip the per-layer PNG plots")
    analyze.set_defaults(func=_cmd_analyze)

    evaluate = sub.add_parser("eval", help="top-1 accuracy on a labelled image folder")
    _add_model_args(evaluate)
    evaluate.add_argument(
        "--data",
        type=Path,
        required=True,
        help="class sub-folders (e.g. cifar10/test) or a folder with labels.csv",
    )
    evaluate.add_argument("--batch-size", type=_positive_int, default=250)
    evaluate.add_argument("--limit", type=_positive_int, help="evaluate an evenly spaced subset")
    evaluate.add_argument("--workers", type=int, default=1, help="data-loading processes")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.set_defaults(func=_cmd_eval)
    return parser


def _load(args: argparse.Namespace):
    from .models import load_model

    return load_model(
        args.model, args.checkpoint, pretrained=not args.random_init, assets=args.assets
    )


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze
    from .paths import ensure_output_dir
    from .report import write_spectrum_report

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


def _cmd_eval(args: argparse.Namespace) -> int:
    from .data import eval_transform, load_image_dataset
    from .evaluate import evaluate
    from .models import DataConfig

    model = _load(args)
    dataset = load_image_dataset(
        args.data, eval_transform(DataConfig.from_model(model)), args.limit
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RmtDeployError as exc:
        print(f"rmt-deploy: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
