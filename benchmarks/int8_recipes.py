"""INT8 head to head on one model: the recipes the field's own tools give a user, and ours,
each in its own runtime, on test images that no calibration saw.

    python benchmarks/int8_recipes.py --model effnet [--calib 300] [--test 1000] [--tag epyc]

The same exported ONNX goes through: ONNX Runtime fp32; ONNX Runtime static INT8 (QDQ, per
channel) with its default op set (our default recipe), with the op set this project once
restricted it to (Conv/MatMul/Gemm), with symmetric activations and with percentile ranges;
OpenVINO at its default precision and f32, OpenVINO on the QDQ file, and NNCF's
`nncf.quantize` (OpenVINO IR). Top-1 on the test images in each runtime; latency at batch 8
timed interleaved (rounds × runs calls, median and interquartile range), × over ONNX Runtime
fp32 from the medians. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, environment

from rmt_deploy.data import eval_transform, load_image_dataset
from rmt_deploy.deploy import openvino_default_precision
from rmt_deploy.exporters import export
from rmt_deploy.exporters.nncf_int8 import nncf_int8
from rmt_deploy.exporters.quantize import DEFAULT_RECIPE, Int8Recipe, quantize_int8, to_batches
from rmt_deploy.models import DataConfig, load_model
from rmt_deploy.paths import assets_dir, write_json_atomic, write_text_atomic
from rmt_deploy.planner.timing import spread, time_interleaved
from rmt_deploy.runtimes import prepare

MODELS = {
    "effnet": ("efficientnet_lite1", "imagenet-val-1300"),
    "resnet56": ("cifar_resnet56", "cifar10/test"),
    "vit": ("cifar_vit_tiny", "cifar10/test"),
}
ORT_RECIPES = {
    "ORT INT8, default ops (ours)": DEFAULT_RECIPE,
    "ORT INT8, Conv/MatMul/Gemm only (old)": Int8Recipe(op_types=("Conv", "MatMul", "Gemm")),
    "ORT INT8, symmetric activations": Int8Recipe(activation_symmetric=True),
    "ORT INT8, percentile ranges": Int8Recipe(method="percentile"),
}


def split(n: int, calib: int, test: int, seed: int = 0) -> tuple[list[int], list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    if calib + test > n:
        raise SystemExit(f"--calib {calib} + --test {test} exceed the {n} images")
    return sorted(order[:calib]), sorted(order[calib : calib + test])


def stacked(data, indices: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    items = [data[i] for i in indices]
    return torch.stack([x for x, _ in items]), np.array([y for _, y in items])


def top1(run, images: torch.Tensor, labels: np.ndarray, batch: int = 50) -> float:
    preds = [run(images[i : i + batch].numpy()).argmax(1) for i in range(0, len(images), batch)]
    return 100.0 * float((np.concatenate(preds) == labels).mean())


def engines(onnx: Path, folder: Path, calib: list[np.ndarray]) -> tuple[dict, dict]:
    """{label: run} and {label: how it was made} for every engine of the comparison."""
    runs, made = {}, {}
    runs["ORT fp32"] = prepare("onnxruntime", None, onnx).run
    for i, (label, recipe) in enumerate(ORT_RECIPES.items()):
        path = folder / f"recipe{i}.int8.onnx"
        report = quantize_int8(onnx, path, calib, recipe=recipe)
        runs[label] = prepare("onnxruntime-int8", None, onnx, onnx_int8=path).run
        made[label] = {"seconds": report.seconds, "recipe": recipe.label}
        if recipe == DEFAULT_RECIPE:
            runs["OpenVINO on the QDQ file"] = prepare(
                "openvino-int8", None, onnx, onnx_int8=path
            ).run
    default = openvino_default_precision()
    runs[f"OpenVINO default ({default})"] = prepare("openvino", None, onnx).run
    if default != "f32":
        runs["OpenVINO f32"] = prepare("openvino-f32", None, onnx).run
    xml = folder / "model.nncf.xml"
    report = nncf_int8(onnx, xml, calib)
    made["NNCF INT8 (OpenVINO)"] = {"seconds": report.seconds, "recipe": report.recipe["tool"]}
    runs["NNCF INT8 (OpenVINO)"] = prepare(
        "openvino-nncf-int8", None, onnx, openvino_int8=xml
    ).run
    return runs, made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--calib", type=int, default=300)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--assets", default=None)
    parser.add_argument("--tag", default="", help="result file suffix (the machine)")
    args = parser.parse_args()
    name, folder_name = MODELS[args.model]
    model = load_model(name)
    config = DataConfig.from_model(model)
    data = load_image_dataset(assets_dir(args.assets) / folder_name, eval_transform(config))
    calib_idx, test_idx = split(len(data), args.calib, args.test)
    calib_images, _ = stacked(data, calib_idx)
    test_images, test_labels = stacked(data, test_idx)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="int8-recipes-") as tmp:
        began = time.perf_counter()
        onnx = export(model, Path(tmp) / "fp32", tuple(config.input_size), name=name).onnx_path
        runs, made = engines(onnx, Path(tmp), to_batches(calib_images))
        print(f"engines ready in {time.perf_counter() - began:.0f} s", flush=True)
        for label, run in runs.items():
            rows[label] = {"top1": top1(run, test_images, test_labels), **made.get(label, {})}
            print(f"{label}: top-1 {rows[label]['top1']:.2f} %", flush=True)
        x = test_images[: args.batch].numpy()
        samples = time_interleaved(runs, dict.fromkeys(runs, x), args.rounds, args.runs)
    base = spread(samples["ORT fp32"])["median_ms"]
    for label, s in samples.items():
        rows[label].update(spread(s), speedup_vs_ort_fp32=base / spread(s)["median_ms"])
    env = environment()
    fp32 = rows["ORT fp32"]["top1"]
    lines = [
        f"# INT8 head to head: {name}",
        "",
        f"CPU: {env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} threads), "
        f"{env['date']}; `{env['command']}`. {args.calib} calibration images, {args.test} "
        f"other test images ({folder_name}, seed 0); batch {args.batch}, "
        f"{args.rounds}×{args.runs} interleaved calls per engine.",
        "",
        "| engine | ms (IQR) | × over ORT fp32 | top-1 % | Δ pp vs fp32 | made in s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows.items():
        made_s = f"{r['seconds']:.0f}" if "seconds" in r else "–"
        lines.append(
            f"| {label} | {r['median_ms']:.2f} ({r['q1_ms']:.2f}–{r['q3_ms']:.2f}) | "
            f"×{r['speedup_vs_ort_fp32']:.2f} | {r['top1']:.2f} | {r['top1'] - fp32:+.2f} | "
            f"{made_s} |"
        )
    stem = RESULTS / f"int8_recipes_{args.model}{'_' + args.tag if args.tag else ''}"
    write_json_atomic(stem.with_suffix(".json"), {"environment": env, "args": vars(args),
                                                   "rows": rows})  # fmt: skip
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
