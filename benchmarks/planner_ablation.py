"""What the RMT ingredients add to the latency planner, measured: the same budget, the same
data and the same deployment, with and without each ingredient.

    python benchmarks/planner_ablation.py --model vit
    python benchmarks/planner_ablation.py --model resnet56

Variants: `full` (MP-edge rank floor, sensitivities measured on calibration images), `no
edge floor`, `+ SEB prior` (SEB's layer weights divide the sensitivities), `SEB prior only`
(no measured sensitivities), `uniform` (neither: every layer's error counts alike). Each plans
for ONNX Runtime fp32 at batch 8 within 1 pp top-1 (95 % bound) on the validation images;
the chosen plan is then scored on the test images (disjoint) and its speedup is the
planner's own interleaved whole-model measurement against the dense model.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402

from rmt_deploy import load_model  # noqa: E402
from rmt_deploy.budget import model_outputs, top1  # noqa: E402
from rmt_deploy.compress import compress_  # noqa: E402
from rmt_deploy.data import eval_transform, load_image_dataset, split_parts  # noqa: E402
from rmt_deploy.models import DataConfig  # noqa: E402
from rmt_deploy.paths import assets_dir, write_json_atomic, write_text_atomic  # noqa: E402
from rmt_deploy.planner import BudgetNotMetError, latency_plan  # noqa: E402

MODELS = {"vit": "cifar_vit_tiny", "resnet56": "cifar_resnet56"}
VARIANTS = {
    "full": {"edge_floor": True, "sensitivity_prior": "none", "refine": True},
    "no edge floor": {"edge_floor": False, "sensitivity_prior": "none", "refine": True},
    "+ SEB prior": {"edge_floor": True, "sensitivity_prior": "seb", "refine": True},
    "SEB prior only": {"edge_floor": True, "sensitivity_prior": "seb", "refine": False},
    "uniform": {"edge_floor": True, "sensitivity_prior": "none", "refine": False},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--budget", type=float, default=1.0)
    args = parser.parse_args()
    name = MODELS[args.model]
    dense = load_model(name)
    cfg = DataConfig.from_model(dense)
    assets = assets_dir()
    calib = load_image_dataset(assets / "cifar10" / "train", eval_transform(cfg))
    test_folder = load_image_dataset(assets / "cifar10" / "test", eval_transform(cfg))
    parts = split_parts(test_folder, {"val": 2000, "test": None})
    dense_out, labels = model_outputs(dense, parts["test"])
    dense_top1 = top1(dense_out, labels)
    rows = []
    tables = RESULTS / "ablation_tables"
    tables.mkdir(exist_ok=True)
    for label, switches in VARIANTS.items():
        print(f"== {args.model}: {label}", flush=True)
        began = time.perf_counter()
        table = tables / f"{args.model}_floor{int(switches['edge_floor'])}.json"
        model = copy.deepcopy(dense)
        try:
            plan, report = latency_plan(
                model,
                calib,
                heldout=parts["val"],
                targets=["onnxruntime"],
                batch=8,
                accuracy_budget=args.budget,
                table=table,
                progress=False,
                **switches,
            )
        except BudgetNotMetError as exc:
            plan, report = exc.fallback, exc.report
        chosen = report.engine(report.chosen)
        dense_engine = report.baselines[0]
        compressed = compress_(copy.deepcopy(dense), plan)
        out, _ = model_outputs(compressed, parts["test"])
        plan_top1 = top1(out, labels)
        rows.append(
            {
                "variant": label,
                **switches,
                "lowrank_layers": plan.summary()["lowrank_layers"],
                "params_after": plan.summary()["params_after"],
                "speedup": dense_engine.measured_ms / chosen.measured_ms,
                "predicted_speedup": (
                    dense_engine.measured_ms / chosen.predicted_ms if chosen.predicted_ms else 1.0
                ),
                "test_top1": plan_top1,
                "test_loss_pp": dense_top1 - plan_top1,
                "validated_plans": len(report.candidates),
                "seconds": round(time.perf_counter() - began, 1),
            }
        )
        print("  ", json.dumps(rows[-1]), flush=True)
    env = environment()
    write_json_atomic(
        RESULTS / f"planner_ablation_{args.model}.json",
        {
            "model": name,
            "budget_pp": args.budget,
            "dense_test_top1": dense_top1,
            "test_images": len(parts["test"]),
            "rows": rows,
            "environment": env,
        },
    )
    lines = [
        f"# Latency-planner ablation: {name}",
        "",
        f"ONNX Runtime fp32, batch 8, budget {args.budget} pp top-1 (95 % bound) on 2,000 "
        f"validation images; top-1 on the other {len(parts['test'])} test images (dense "
        f"{dense_top1:.2f} %). Speedup: the planner's interleaved whole-model measurement. "
        f"CPU: {env['cpu']}, {env['torch_threads']} threads, {env['date']}.",
        "",
        "| variant | low-rank layers | weights kept | × measured | × predicted | test loss pp |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['lowrank_layers']} | {r['params_after']:,} | "
            f"×{r['speedup']:.2f} | ×{r['predicted_speedup']:.2f} | {r['test_loss_pp']:+.2f} |"
        )
    write_text_atomic(RESULTS / f"planner_ablation_{args.model}.md", "\n".join(lines) + "\n")
    print(f"wrote {RESULTS / f'planner_ablation_{args.model}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
