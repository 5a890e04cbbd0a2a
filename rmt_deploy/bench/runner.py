"""benchmark(): latency after a time-based warm-up, memory, FLOPs and accuracy for each
(variant, backend, batch), variants interleaved so that their ratios are paired."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from ..errors import DataError
from ..planner.timing import sample_ms
from ..progress import tqdm
from ..runtimes import BackendUnavailable, Prepared, prepare
from ..runtimes.tensorrt import check_engine_batch
from .memory import peak_memory_mb
from .stats import LatencyStats, summarize
from .tegrastats import (
    JtopSampler,
    TegraStatsSampler,
    energy_per_inference_mj,
    input_rail,
    power_sampler,
)


@dataclass
class BenchResult:
    variant: str
    backend: str
    batch: int
    device: str
    threads: int
    latency: LatencyStats
    params: int
    flops_per_image: int | None
    file_bytes: int | None
    peak_rss_mb: float | None  # this variant alone, in a process of its own
    peak_cuda_mb: float | None
    top1: float | None = None
    agreement_with_reference: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchSuite:
    results: list[BenchResult]
    skipped: list[dict]  # variant/backend pairs that could not run, with the reason
    reference: str | None = None

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "results": [r.to_dict() for r in self.results],
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, data: dict) -> BenchSuite:
        results = []
        for r in data["results"]:
            r = dict(r)
            r["latency"] = LatencyStats(**r["latency"])
            results.append(BenchResult(**r))
        return cls(results, data.get("skipped", []), data.get("reference"))


def _check_engine_profiles(variants: dict, backends: list[str], batches: list[int]) -> None:
    """Fail before any timing when an engine's recorded profile misses a batch size."""
    if "tensorrt" not in backends:
        return
    from ..exporters.tensorrt_build import read_engine_profile

    for spec in variants.values():
        engine = spec.get("engine")
        profile = read_engine_profile(engine) if engine else None
        if profile is not None:
            for batch in batches:
                check_engine_batch(Path(engine), batch, (profile.minimum, profile.maximum))


@contextlib.contextmanager
def _nothing():
    yield


def power_summary(samples, windows: list[tuple[float, float]], result: BenchResult) -> dict:
    """Mean power over the samples taken while this (variant, backend, batch) ran, and the
    energy per inference it implies at the measured throughput."""
    inside = [s for s in samples if any(a <= s.time <= b for a, b in windows)]
    rail = input_rail(inside[0]) if inside else None
    inside = [s for s in inside if rail in s.rails_mw]
    if rail is None:
        return {"power_samples": len(inside)}
    energy = energy_per_inference_mj(inside, result.latency.throughput)
    return {
        "power_samples": len(inside),
        "power_rail": rail,
        "mean_power_mw": sum(s.rails_mw.get(rail, 0) for s in inside) / len(inside),
        "energy_per_image_mj": energy,
    }


def _file_bytes(spec: dict, backend: str) -> int | None:
    """Size of the file the backend runs: the ONNX model (fp32 or INT8) or the engine."""
    path = spec.get("engine") if backend == "tensorrt" else None
    if backend.startswith(("onnxruntime", "openvino")):
        from ..deploy import DEPLOYMENTS

        path = spec.get(DEPLOYMENTS[backend].artifact if backend in DEPLOYMENTS else "onnx")
        if path and str(path).endswith(".xml"):  # OpenVINO IR: the weights are in the .bin
            path = Path(path).with_suffix(".bin")
    return Path(path).stat().st_size if path and Path(path).is_file() else None


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one image, by torch's FlopCounterMode (2 per multiply-accumulate)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops())


def time_runs(prepared: Prepared, batch: np.ndarray, warmup_s: float, runs: int) -> list[float]:
    """Warm up for `warmup_s` seconds (at least one call), then time `runs` calls (CUDA events
    on GPU)."""
    end = time.perf_counter() + warmup_s
    if warmup_s > 0:
        prepared.run(batch)
    while time.perf_counter() < end:
        prepared.run(batch)
    prepared.synchronize()
    return sample_ms(lambda: prepared.run(batch), runs, prepared.cuda, warmup=0)


def accuracy(prepared: Prepared, data: Dataset, batch_size: int = 100) -> tuple[float, np.ndarray]:
    if len(data) == 0:
        raise DataError("the accuracy dataset is empty")
    lowest = 1
    if prepared.batch_range is not None:  # an engine runs only the batches its profile covers
        lowest, batch_size = prepared.batch_range[0], min(batch_size, prepared.batch_range[1])
    preds, correct = [], 0
    for images, labels in DataLoader(data, batch_size=batch_size, num_workers=1):
        batch = images.numpy()
        if len(batch) < lowest:  # pad the last batch with copies; their outputs are dropped
            batch = np.concatenate([batch, np.repeat(batch[-1:], lowest - len(batch), 0)])
        logits = prepared.run(batch)[: len(images)]
        pred = logits.argmax(1)
        preds.append(pred)
        correct += int((pred == labels.numpy()).sum())
    return 100.0 * correct / len(data), np.concatenate(preds)


_Key = tuple[str, str]  # (variant, backend)
_RunKey = tuple[str, str, int]  # (variant, backend, batch)


@dataclass(frozen=True)
class _TimingPlan:
    """How the latency sweeps run: the same values shape every batch's warm-up and sweeps."""

    batches: list[int]
    input_shape: tuple[int, int, int]
    warmup_s: float
    runs: int


@dataclass
class _Timings:
    """Latency samples per (variant, backend, batch), and the wall-clock windows each ran in:
    the windows pick its power samples out of those of the whole run."""

    samples: dict[_RunKey, list[float]] = field(default_factory=dict)
    windows: dict[_RunKey, list[tuple[float, float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Measures:
    """What is measured once per (variant, backend) and shared by all its batch sizes."""

    top1: float | None
    preds: np.ndarray | None  # top-1 predictions on `data`, for agreement with the reference
    peak_rss_mb: float | None
    peak_cuda_mb: float | None
    memory_note: str | None


def _model_sizes(
    variants: dict[str, dict], input_shape: tuple[int, int, int]
) -> dict[str, tuple[int, int | None]]:
    """Parameters and FLOPs per image of each variant's PyTorch model ((0, None) without one),
    counted on the CPU models before any backend copies them elsewhere."""
    return {
        v: (
            sum(p.numel() for p in spec["model"].parameters()),
            count_flops(spec["model"], input_shape),
        )
        if spec.get("model") is not None
        else (0, None)
        for v, spec in variants.items()
    }


def _prepare_all(
    variants: dict[str, dict], backends: list[str], options: dict
) -> tuple[dict[_Key, Prepared], dict[_Key, str]]:
    """Prepare every (variant, backend) that can run, note why the others cannot, and fail
    when none can: there would be nothing to time."""
    prepared: dict[_Key, Prepared] = {}
    skipped: dict[_Key, str] = {}
    for vname, spec in variants.items():
        for backend in backends:
            try:
                prepared[vname, backend] = prepare(
                    backend,
                    spec.get("model"),
                    spec.get("onnx"),
                    spec.get("engine"),
                    spec.get("onnx_int8"),
                    openvino_int8=spec.get("openvino_int8"),
                    **options,
                )
            except BackendUnavailable as exc:
                skipped[vname, backend] = str(exc)
    if not prepared:
        reasons = "; ".join(f"{v}/{b}: {r}" for (v, b), r in skipped.items())
        raise BackendUnavailable(f"no backend can run any variant ({reasons})")
    return prepared, skipped


def _check_prepared_batches(
    prepared: dict[_Key, Prepared], variants: dict[str, dict], batches: list[int]
) -> None:
    """Fail before any timing when a loaded engine's profile misses a batch size."""
    for (vname, _backend), runner in prepared.items():
        if runner.batch_range is not None:
            for batch in batches:
                check_engine_batch(Path(variants[vname]["engine"]), batch, runner.batch_range)


def _time_batch(
    prepared: dict[_Key, Prepared],
    batch: int,
    x: np.ndarray,
    plan: _TimingPlan,
    timings: _Timings,
    bar: tqdm,
) -> None:
    """Warm every runner up on `x`, then time one call each in turn over `plan.runs` sweeps,
    recording each call's window for the power samples."""
    keys = list(prepared)
    for key in keys:  # warm-up: allocation, compilation, kernel tuning
        began = time.monotonic()
        time_runs(prepared[key], x, plan.warmup_s, 0)
        timings.windows.setdefault((*key, batch), []).append((began, time.monotonic()))
    # One call each in turn, the next sweep in reverse order: slow spells of a shared
    # machine hit every variant alike, so the ratios hold (±2 % here, where medians
    # of one model drifted 27 → 42 ms within minutes).
    for sweep in range(plan.runs):
        for key in keys if sweep % 2 == 0 else reversed(keys):
            began = time.monotonic()
            timings.samples.setdefault((*key, batch), []).extend(
                time_runs(prepared[key], x, 0.0, 1)
            )
            timings.windows[(*key, batch)].append((began, time.monotonic()))
        bar.update()


def _time_all(
    prepared: dict[_Key, Prepared],
    plan: _TimingPlan,
    sampler: TegraStatsSampler | JtopSampler | None,
    progress: bool,
) -> _Timings:
    """Time every prepared runner at every batch size on the same random inputs, with the
    power sampler (if any) running throughout."""
    rng = np.random.default_rng(0)
    timings = _Timings()
    bar = tqdm(
        total=len(plan.batches) * plan.runs, desc="bench", unit="sweep", disable=not progress
    )
    with sampler if sampler is not None else _nothing(), bar:
        for batch in plan.batches:
            x = rng.standard_normal((batch, *plan.input_shape)).astype(np.float32)
            _time_batch(prepared, batch, x, plan, timings, bar)
    return timings


def _measure(
    runner: Prepared,
    spec: dict,
    backend: str,
    data: Dataset | None,
    memory: bool,
    options: dict,
    largest_input: tuple[int, ...],
) -> _Measures:
    """Accuracy and peak memory of one (variant, backend): they do not depend on the batch
    size being timed, so they are measured once."""
    top1 = preds = None
    if data is not None:
        top1, preds = accuracy(runner, data)
    rss, cuda_mb, why = (None, None, "not measured")
    if memory:  # each variant alone, in a process of its own (see bench/memory.py)
        rss, cuda_mb, why = peak_memory_mb(spec, backend, options, largest_input)
    return _Measures(top1, preds, rss, cuda_mb, why)


def _batch_result(
    key: _Key,
    batch: int,
    runner: Prepared,
    spec: dict,
    size: tuple[int, int | None],
    measures: _Measures,
    timings: _Timings,
    sampler: TegraStatsSampler | JtopSampler | None,
) -> BenchResult:
    """The result row of one (variant, backend, batch), with its power figures when sampled."""
    vname, backend = key
    result = BenchResult(
        variant=vname,
        backend=backend,
        batch=batch,
        device=runner.device,
        threads=runner.threads,
        latency=summarize(timings.samples[vname, backend, batch], batch),
        params=size[0],
        flops_per_image=size[1],
        file_bytes=_file_bytes(spec, backend),
        peak_rss_mb=measures.peak_rss_mb,
        peak_cuda_mb=measures.peak_cuda_mb,
        top1=measures.top1,
        extra={
            "pid": os.getpid(),
            **({"memory": measures.memory_note} if measures.memory_note else {}),
        },
    )
    if sampler is not None:
        result.extra.update(
            power_summary(sampler.samples, timings.windows[vname, backend, batch], result)
        )
    return result


def _compare_with_reference(
    results: list[BenchResult], preds: dict[_Key, np.ndarray], reference: str
) -> None:
    """Add each result's top-1 agreement with the reference variant (same backend) and its
    speedup over it (same backend and batch)."""
    for r in results:
        ref = preds.get((reference, r.backend))
        mine = preds.get((r.variant, r.backend))
        if ref is not None and mine is not None:
            r.agreement_with_reference = float((ref == mine).mean() * 100)
    base = {(r.backend, r.batch): r.latency.median_ms for r in results if r.variant == reference}
    for r in results:
        if (r.backend, r.batch) in base:
            r.extra["speedup_vs_reference"] = base[r.backend, r.batch] / r.latency.median_ms


def benchmark(
    variants: dict[str, dict],
    backends: list[str],
    batches: list[int],
    input_shape: tuple[int, int, int],
    *,
    data: Dataset | None = None,
    reference: str | None = None,
    warmup_s: float = 1.0,
    runs: int = 50,
    backend_options: dict | None = None,
    power: bool = False,
    progress: bool = False,
    memory: bool = True,
) -> BenchSuite:
    """`variants`: name → {"model": nn.Module, "onnx": Path, "onnx_int8": Path, "engine": Path}
    (each optional).
    Every (variant, backend) that can run is timed at every batch size, one call each in turn
    over `runs` sweeps, so slow drifts of the machine hit all of them alike. With `power`
    (Jetson), tegrastats or jtop samples the power rails while each one runs and the result
    carries the energy per inference."""
    options = backend_options or {}
    if not variants:
        raise DataError("no variants to benchmark")
    _check_engine_profiles(variants, backends, batches)
    sizes = _model_sizes(variants, input_shape)
    prepared, skipped = _prepare_all(variants, backends, options)
    _check_prepared_batches(prepared, variants, batches)
    sampler = power_sampler() if power else None
    plan = _TimingPlan(batches, input_shape, warmup_s, runs)
    timings = _time_all(prepared, plan, sampler, progress)
    results: list[BenchResult] = []
    preds: dict[_Key, np.ndarray] = {}
    for key, runner in prepared.items():
        spec = variants[key[0]]
        largest = (max(batches), *input_shape)
        measures = _measure(runner, spec, key[1], data, memory, options, largest)
        if measures.preds is not None:
            preds[key] = measures.preds
        results += [
            _batch_result(key, batch, runner, spec, sizes[key[0]], measures, timings, sampler)
            for batch in batches
        ]
    if reference is not None:
        _compare_with_reference(results, preds, reference)
    skipped_list = [{"variant": v, "backend": b, "reason": why} for (v, b), why in skipped.items()]
    return BenchSuite(results, skipped_list, reference)
