"""Time export + verification: ViT-B/16 (random init, real ImageNet images) and ResNet-56.

python benchmarks/bench_export.py [--verify-images 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402

from rmt_deploy import DataConfig, load_model  # noqa: E402
from rmt_deploy.data import eval_transform, load_image_dataset  # noqa: E402
from rmt_deploy.exporters import export  # noqa: E402
from rmt_deploy.paths import assets_dir, write_json_atomic, write_text_atomic  # noqa: E402

CASES = [("cifar_resnet56", "cifar10/test"), ("vit_base_patch16_224", "imagenet-val-1300")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_export")
    args = parser.parse_args()
    assets = assets_dir()
    rows = []
    for name, data_dir in CASES:
        model = load_model(name)
        cfg = DataConfig.from_model(model)
        data = load_image_dataset(assets / data_dir, eval_transform(cfg), args.verify_images)
        runs = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                artifact = export(
                    model,
                    tmp,
                    tuple(cfg.input_size),
                    verify_data=data,
                    n_verify=args.verify_images,
                    name=name,
                )
                size = artifact.onnx_path.stat().st_size
            runs.append(artifact.seconds)
        row = {
            "model": name,
            "params": sum(p.numel() for p in model.parameters()),
            "onnx_bytes": size,
            "verify_images": args.verify_images,
            **{f"median_{k}_s": statistics.median(r[k] for r in runs) for k in runs[0]},
            "median_total_s": statistics.median(sum(r.values()) for r in runs),
            "max_abs_diff": artifact.parity.max_abs_diff,
            "top1_agreement": artifact.parity.top1_agreement,
            "runs": runs,
        }
        rows.append(row)
        print(
            f"{name}: export {row['median_export_s']:.2f} s, slim+check "
            f"{row['median_simplify_check_s']:.2f} s, verify ({args.verify_images} real images) "
            f"{row['median_verify_s']:.2f} s, total {row['median_total_s']:.2f} s; "
            f"max |Δ| {row['max_abs_diff']:.1e}",
            flush=True,
        )
    env = environment()
    write_json_atomic(args.out.with_suffix(".json"), {"rows": rows, "environment": env})
    lines = [
        "# Export + verification time (median of repeats)",
        "",
        f"{env['cpu']}, {env['torch_threads']} threads, torch {env['torch']}, {env['date']}. "
        f"Command: `{env['command']}`",
        "",
        "| model | params | ONNX MB | export (s) | onnxslim + checker (s) | verify (s) | total (s) "
        "| max abs diff | top-1 agreement |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['params'] / 1e6:.1f} M | {r['onnx_bytes'] / 2**20:.1f} | "
        f"{r['median_export_s']:.2f} | {r['median_simplify_check_s']:.2f} | "
        f"{r['median_verify_s']:.2f} | {r['median_total_s']:.2f} | {r['max_abs_diff']:.1e} | "
        f"{100 * r['top1_agreement']:.1f} % |"
        for r in rows
    ]
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
