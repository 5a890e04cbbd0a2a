"""Where each strategy puts its sparsity: per-layer density of two data-free plans.

The accuracy table says SEB (and SER and hybrid, which end in SEB-weighted steps) recover
worse than global magnitude on ResNet-56 at s = 0.5; this says what they do differently.

    python benchmarks/layer_allocation.py --model cifar_resnet56 --strategies magnitude,seb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402

from rmt_deploy import load_model  # noqa: E402
from rmt_deploy.paths import write_json_atomic, write_text_atomic  # noqa: E402
from rmt_deploy.strategies import plan  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet56")
    parser.add_argument("--strategies", default="magnitude,seb")
    parser.add_argument("--sparsity", type=float, default=0.5)
    args = parser.parse_args()
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    model = load_model(args.model)
    plans = {s: plan(model, s, args.sparsity, name=args.model) for s in names}
    layers = [layer.name for layer in plans[names[0]].layers]
    rows = []
    for name in layers:
        entry = {"layer": name}
        for s, p in plans.items():
            layer = p.layer(name)
            entry[s] = layer.density if layer.density is not None else 1.0
            entry["params"] = layer.params_before
        rows.append(entry)
    out = RESULTS / f"layer_allocation_{args.model.replace('cifar_', '')}"
    write_json_atomic(
        out.with_suffix(".json"),
        {
            "model": args.model,
            "sparsity": args.sparsity,
            "rows": rows,
            "environment": environment(),
        },
    )
    lines = [
        f"# {args.model}: per-layer density at s = {args.sparsity}",
        "",
        "Share of each layer's weights kept by each strategy's plan (no data, no training).",
        "",
        "| layer | weights | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['params']:,} | " + " | ".join(f"{r[s]:.2f}" for s in names) + " |"
        )
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
