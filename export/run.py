#!/usr/bin/env python3
"""Run an exported model on the target: ONNX Runtime or OpenVINO (model.onnx, fp32 or the INT8
model.int8.onnx; NNCF's OpenVINO IR model.nncf.xml), or TensorRT (*.engine).

Needs numpy, Pillow for image folders, and one runtime: onnxruntime (or onnxruntime-gpu),
openvino, or tensorrt with cuda-python. No torch, no rmt_deploy. Prints latency percentiles
after a time-based warm-up, and top-1 on a folder of class sub-folders or a labels.csv folder,
labelled by the rules of `rmt-deploy eval` (class folders by the class names in the manifest).

    python3 run.py --model model.onnx --images cifar10/test --limit 1000
    python3 run.py --model model.int8.onnx --openvino --batch 8
    python3 run.py --model model.nncf.xml --images imagenet --split split.json --batch 8
    python3 run.py --engine model_fp16_b8.engine --manifest manifest.json --batch 8 --iterations 200
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def fail(message: str) -> None:
    """One line on stderr and exit status 1: the kit's answer to every bad argument."""
    sys.exit(f"error: {message}")


def load_manifest(manifest: Path | None, model: Path) -> dict:
    """The export's manifest.json (default: beside the model); the preprocessing is required."""
    path = manifest or model.parent / "manifest.json"
    if not path.is_file():
        fail(f"no manifest at {path}: pass --manifest (the manifest.json rmt-deploy export wrote)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        fail(f"cannot read the manifest {path}: {exc}")
    if not isinstance(data, dict) or "preprocessing" not in data:
        fail(f"{path} has no preprocessing: re-export with rmt-deploy export (or rmt-deploy run)")
    return data


def _images_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)


def _from_csv(root: Path, num_outputs: int | None) -> list[tuple[Path, int]]:
    samples = []
    with open(root / "labels.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
            fail(f"{root / 'labels.csv'} must have the columns file,label")
        for row in reader:
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                fail(f"labels.csv line {reader.line_num}: label {row['label']!r} is not an integer")
            if label < 0 or (num_outputs is not None and label >= num_outputs):
                fail(f"labels.csv line {reader.line_num}: label {label} is not a class index")
            samples.append((root / row["file"], label))
    return samples


def _folder_labels(names: list[str], classes: list[str] | None, count: int | None) -> dict:
    """Folder name → label, by the rules of `rmt-deploy eval`: by class name when the manifest
    lists the classes (unless no folder is named after one: then by position), by sorted
    position only when there is one folder per output."""
    if classes:
        known = {name: i for i, name in enumerate(classes)}
        unknown = [n for n in names if n not in known]
        if len(unknown) < len(names):
            if unknown:
                fail(f"class folders {', '.join(unknown[:5])} are not among the model's classes")
            return {n: known[n] for n in names}
        count = len(classes)
    if count is not None and len(names) != count:
        fail(
            f"{len(names)} class folders for {count} outputs and no class names in the manifest: "
            "give the full folder (one sub-folder per class) or a labels.csv"
        )
    return {n: i for i, n in enumerate(names)}


def labelled_images(root: Path, classes: list[str] | None, count: int | None):
    """(image, label) for a labels.csv folder or a folder of class sub-folders."""
    if not root.is_dir():
        fail(f"image folder not found: {root}")
    if (root / "labels.csv").is_file():
        return _from_csv(root, count)
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    found = {d.name: _images_in(d) for d in folders}
    names = [n for n in found if found[n]] if classes else list(found)
    if not any(found.values()):
        fail(f"{root} has neither a labels.csv nor class sub-folders with images")
    index = _folder_labels(names, classes, count)
    return [(f, index[n]) for n in names for f in found[n]]


def select(samples, root: Path, split: Path | None, part: str, limit: int | None):
    """The images of one part of a run's evaluate/split.json, or an evenly spaced subset."""
    if split is not None:
        try:
            names = json.loads(split.read_text())["parts"][part]["images"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            fail(f"{split} lists no images for the part {part!r} ({exc})")
        by_name = {str(path.relative_to(root)): (path, y) for path, y in samples}
        missing = [n for n in names if n not in by_name]
        if missing:
            fail(f"{len(missing)} images of {split} are not in {root}, e.g. {missing[0]}")
        samples = [by_name[n] for n in names]
    if limit and limit < len(samples):
        step = len(samples) / limit
        samples = [samples[int(i * step)] for i in range(limit)]
    return samples


def preprocess(path: Path, cfg: dict) -> np.ndarray:
    """Resize the short side to size/crop_pct, center-crop, scale to [0, 1], normalize (CHW)."""
    from PIL import Image

    _, height, width = cfg["input_size"]
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}.get(
        cfg.get("interpolation", "bilinear"), Image.BILINEAR
    )
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        fail(f"cannot read the image {path}: {exc} (remove it or replace it with a valid one)")
    with img:
        img = img.convert("RGB")
        scale = int(min(height, width) / cfg.get("crop_pct", 1.0))
        w, h = img.size
        if min(w, h) != scale:
            ratio = scale / min(w, h)
            img = img.resize((max(scale, round(w * ratio)), max(scale, round(h * ratio))), resample)
        w, h = img.size
        left, top = (w - width) // 2, (h - height) // 2
        img = img.crop((left, top, left + width, top + height))
        array = np.asarray(img, dtype=np.float32) / 255.0
    array = (array - np.array(cfg["mean"], np.float32)) / np.array(cfg["std"], np.float32)
    return array.transpose(2, 0, 1)


class OrtRunner:
    def __init__(self, path: Path, threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [
            p
            for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
            if p in ort.get_available_providers()
        ]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.name = self.session.get_inputs()[0].name
        self.device = self.session.get_providers()[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.name: batch})[0]


class OpenVinoRunner:
    """OpenVINO on the CPU: one stream, `threads` threads, `precision` (f32, bf16) or its own
    default; a QDQ (INT8) ONNX runs in int8."""

    def __init__(self, path: Path, threads: int | None, precision: str | None):
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision and precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.device = f"OpenVINO {ov.__version__} CPU {hint}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: batch})[self.output], copy=True)


class CudaError(RuntimeError):
    """A CUDA runtime call returned an error code."""


def cuda_check(cudart, name: str, *args):
    """Call `cudart.<name>(*args)` and return its results, or raise CudaError naming the call
    and the code: cuda-python returns (cudaError_t, *results) and never raises itself."""
    err, *results = getattr(cudart, name)(*args)
    if int(err) != 0:  # cudaSuccess
        raise CudaError(f"CUDA {name} failed: {getattr(err, 'name', err)} ({int(err)})")
    return results[0] if len(results) == 1 else tuple(results) or None


def import_cudart():
    """cuda-python's runtime module: cuda.bindings.runtime (≥ 12.8), or cuda.cudart before."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            fail("running an engine needs cuda-python: pip3 install cuda-python")
    return cudart


class TrtRunner:
    """TensorRT (8.6 or newer) execution with explicit device buffers (cuda-python's cudart);
    every CUDA call is checked."""

    def __init__(self, path: Path):
        import tensorrt as trt

        cudart = import_cudart()
        self.trt, self.cudart = trt, cudart
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            fail(
                f"TensorRT {trt.__version__} cannot load {path}: an engine runs only on the "
                "TensorRT version and GPU that built it; rebuild it here with build_engine.py"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        self.input = next(n for n in names if modes[n] == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if modes[n] == trt.TensorIOMode.OUTPUT)
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = cuda_check(cudart, "cudaStreamCreate")
        self.device = f"TensorRT {trt.__version__}"
        self.buffers: dict[str, tuple[int, int]] = {}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                cuda_check(self.cudart, "cudaFree", ptr)
            ptr = cuda_check(self.cudart, "cudaMalloc", nbytes)
            self.buffers[name] = (ptr, nbytes)
        return self.buffers[name][0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        cudart = self.cudart
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input, 0)
        if not lo[0] <= batch.shape[0] <= hi[0]:
            fail(
                f"batch {batch.shape[0]} is outside the engine's profile "
                f"{lo[0]}..{hi[0]}; rebuild with a wider --batch"
            )
        batch = np.ascontiguousarray(batch, dtype=self.dtypes[self.input])
        if not self.context.set_input_shape(self.input, batch.shape):
            fail(f"TensorRT refused the input shape {batch.shape}")
        out_shape = tuple(self.context.get_tensor_shape(self.output))
        out = np.empty(out_shape, dtype=self.dtypes[self.output])
        d_in = self._buffer(self.input, batch.nbytes)
        d_out = self._buffer(self.output, out.nbytes)
        kind = cudart.cudaMemcpyKind
        cuda_check(
            cudart,
            "cudaMemcpyAsync",
            d_in,
            batch.ctypes.data,
            batch.nbytes,
            kind.cudaMemcpyHostToDevice,
            self.stream,
        )
        self.context.set_tensor_address(self.input, d_in)
        self.context.set_tensor_address(self.output, d_out)
        if not self.context.execute_async_v3(self.stream):
            raise CudaError(f"TensorRT execute_async_v3 failed at batch {batch.shape[0]}")
        cuda_check(
            cudart,
            "cudaMemcpyAsync",
            out.ctypes.data,
            d_out,
            out.nbytes,
            kind.cudaMemcpyDeviceToHost,
            self.stream,
        )
        cuda_check(cudart, "cudaStreamSynchronize", self.stream)
        return out.astype(np.float32, copy=False)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """numpy's percentiles (linear interpolation), as rmt_deploy.bench reports them."""
    ordered = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(ordered, [50, 90, 95, 99])
    return {
        "min": float(ordered.min()),
        "mean": float(ordered.mean()),
        "median": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(ordered.max()),
        "std": float(ordered.std()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="model.onnx, model.int8.onnx, model.nncf.xml")
    which.add_argument("--onnx", type=Path, help="an ONNX model (as --model)")
    which.add_argument("--engine", type=Path, help="a TensorRT engine")
    parser.add_argument("--manifest", type=Path, help="manifest.json (default: beside the model)")
    parser.add_argument("--images", type=Path, help="class sub-folders or a labels.csv folder")
    parser.add_argument("--split", type=Path, help="a run's evaluate/split.json: its images only")
    parser.add_argument("--part", default="test", help="the part of --split (default: test)")
    parser.add_argument("--limit", type=int, help="use an evenly spaced subset of the images")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--iterations", type=int, default=100, help="timed runs (random input)")
    parser.add_argument("--threads", type=int, help="intra-op threads (ONNX Runtime, OpenVINO)")
    parser.add_argument(
        "--openvino",
        nargs="?",
        const="default",
        choices=("default", "f32", "bf16"),
        help="run an ONNX model in OpenVINO (its default precision, or f32 / bf16)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    model = args.model or args.onnx or args.engine
    if not model.is_file():
        fail(f"model file not found: {model}")
    for name in ("batch", "iterations", "limit", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            fail(f"--{name} must be at least 1, got {value}")
    if args.json and not args.json.parent.is_dir():
        fail(f"--json: the folder {args.json.parent} does not exist")
    manifest = load_manifest(args.manifest, model)
    cfg = manifest["preprocessing"]
    samples = []
    if args.images:
        samples = labelled_images(args.images, manifest.get("classes"), manifest.get("num_outputs"))
        samples = select(samples, args.images, args.split, args.part, args.limit)
    try:
        return measure(args, model, cfg, samples)
    except CudaError as exc:
        fail(str(exc))


def open_runner(args, model: Path):
    """The runtime that runs `model` (TensorRT for an engine, OpenVINO for IR or when asked,
    else ONNX Runtime), or one line saying why it cannot be loaded here."""
    if args.engine or model.suffix == ".engine":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            fail(f"{model} is a TensorRT engine and TensorRT is not installed here: run it on "
                 "the device it was built for, or run the model.onnx instead")  # fmt: skip
        return TrtRunner(model)
    kind = "OpenVINO" if args.openvino or model.suffix == ".xml" else "ONNX Runtime"
    module = "openvino" if kind == "OpenVINO" else "onnxruntime"
    if importlib.util.find_spec(module) is None:
        fail(f"{kind} is not installed: pip3 install {module}")
    try:
        if kind == "OpenVINO":
            return OpenVinoRunner(model, args.threads, args.openvino)
        return OrtRunner(model, args.threads)
    except Exception as exc:  # noqa: BLE001 - each runtime raises its own classes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fail(f"{kind} cannot load {model}: {first} (is it the file rmt-deploy export wrote?)")


def measure(args, model: Path, cfg: dict, samples: list) -> int:
    """Load the runtime, warm up, time (and score, with images), print and write the results."""
    runner = open_runner(args, model)
    shape = (args.batch, *cfg["input_size"])
    warm = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    end = time.perf_counter() + args.warmup_seconds
    while time.perf_counter() < end:
        runner(warm)

    latencies: list[float] = []
    correct = seen = 0
    if samples:
        for start in range(0, len(samples), args.batch):
            chunk = samples[start : start + args.batch]
            batch = np.stack([preprocess(p, cfg) for p, _ in chunk])
            t0 = time.perf_counter()
            logits = runner(batch)
            latencies.append((time.perf_counter() - t0) * 1e3)
            correct += int((logits.argmax(1) == np.array([y for _, y in chunk])).sum())
            seen += len(chunk)
    else:
        for _ in range(args.iterations):
            t0 = time.perf_counter()
            runner(warm)
            latencies.append((time.perf_counter() - t0) * 1e3)

    stats = percentiles(latencies)
    result = {
        "runtime": runner.device,
        "batch": args.batch,
        "runs": len(latencies),
        "latency_ms": stats,
        "throughput_images_per_s": 1e3 * args.batch / stats["mean"],
    }
    if seen:
        result.update({"images": seen, "top1": 100.0 * correct / seen})
    print(
        f"{runner.device}, batch {args.batch}, {len(latencies)} runs: "
        + ", ".join(f"{k} {v:.3f} ms" for k, v in stats.items())
        + f"; {result['throughput_images_per_s']:.1f} images/s"
    )
    if seen:
        print(f"top-1 {result['top1']:.2f} % on {seen} images")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
