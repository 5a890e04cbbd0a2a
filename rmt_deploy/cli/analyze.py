"""`rmt-deploy analyze`: MP spectral analysis of every Linear/Conv weight."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import add_model_args, fraction, int_at_least
from .inputs import load, resolve_model_arg


def add_parser(sub) -> None:
    analyze = sub.add_parser("analyze", help="MP spectral analysis of every Linear/Conv weight")
    add_model_args(analyze)
    analyze.add_argument("--out", type=Path, required=True, help="output directory")
    analyze.add_argument(
        "--alpha",
        type=fraction(0, 0.5, "--alpha"),
        default=0.25,
        help="BEMA trims this share at each end of the spectrum (default 0.25)",
    )
    analyze.add_argument(
        "--beta",
        type=fraction(0, 1, "--beta"),
        default=0.8,
        help="edge at the 1-β Tracy–Widom quantile (default 0.8: liberal)",
    )
    analyze.add_argument(
        "--min-dim",
        type=int_at_least(1, "--min-dim"),
        default=16,
        help="skip matrices whose smaller side is below this (default 16)",
    )
    analyze.add_argument("--no-plots", action="store_true", help="skip the per-layer PNG plots")
    analyze.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from ..paths import ensure_output_dir
    from ..verbs import analyze_to

    resolve_model_arg(args)
    out = ensure_output_dir(args.out)  # fail before the slow part, not after
    spectrum, _ = analyze_to(
        load(args),
        out,
        name=args.model,
        plots=not args.no_plots,
        alpha=args.alpha,
        beta=args.beta,
        min_dim=args.min_dim,
        progress=not args.quiet,
    )
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
