"""`rmt-deploy run`: the whole pipeline from a YAML config, the command line overriding it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import add_preprocess_args, number, preprocess_overrides


def add_parser(sub) -> None:
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
        type=number("--accuracy-budget", 0.0),
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
    add_preprocess_args(pipeline)
    pipeline.set_defaults(func=command)


def _config(args: argparse.Namespace):
    """The run config: the file's, with the command line's overrides, checked again."""
    from ..pipeline import RunConfig, load_config

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
    for key, value in preprocess_overrides(args).items():
        if value is not None:
            setattr(config.data.preprocess, key, value)
    return RunConfig.from_dict(config.to_dict())  # the overrides pass the same checks


def command(args: argparse.Namespace) -> int:
    from ..pipeline import run
    from ..pipeline.run import check_stages

    stages = None
    if args.stages is not None:  # `--stages ,` or `--stages ''` is an error, not "all"
        stages = check_stages([s.strip() for s in args.stages.split(",") if s.strip()])
    result = run(_config(args), stages=stages, force=args.force, progress=not args.quiet)
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
