"""`rmt-deploy eval`: top-1/top-5 on a labelled image folder (labelled by class name, as the
pipeline labels its folders)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .args import add_model_args, add_preprocess_args, int_at_least
from .inputs import data_config, labelled_folder, load, resolve_model_arg


def add_parser(sub) -> None:
    evaluate = sub.add_parser("eval", help="top-1 accuracy on a labelled image folder")
    add_model_args(evaluate)
    add_preprocess_args(evaluate)
    evaluate.add_argument(
        "--data",
        type=Path,
        required=True,
        help="class sub-folders (e.g. cifar10/test) or a folder with labels.csv",
    )
    evaluate.add_argument("--batch-size", type=int_at_least(1, "--batch-size"), default=250)
    evaluate.add_argument(
        "--limit", type=int_at_least(1, "--limit"), help="evaluate an evenly spaced subset"
    )
    evaluate.add_argument(
        "--workers", type=int_at_least(0, "--workers"), default=1, help="data-loading processes"
    )
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from ..data import eval_transform
    from ..evaluate import evaluate

    resolve_model_arg(args)
    model = load(args)
    dataset = labelled_folder(args, model, eval_transform(data_config(args, model)), args.limit)
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
