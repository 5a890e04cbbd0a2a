"""The GPU suite's steps: each one job, each writing its own results when it ends.

A step gets a `Context` (output folder, device, sizes) and writes `<step>.json` and `<step>.md`
under the output folder. On a GPU the sizes are the real ones (ViT-B/16 and ResNet-50 shapes,
random weights; the CIFAR ViT trained here with its recovery); with `dry` they are tiny and
everything runs on the CPU (2:4 stays masked dense, DDP uses gloo, inductor compiles for CPU),
so the same code paths run in CI and cannot rot unseen.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rmt_deploy import load_model
from rmt_deploy.compress import compress_
from rmt_deploy.data import eval_transform, evenly_spaced, load_image_dataset, train_transform
from rmt_deploy.evaluate import evaluate
from rmt_deploy.layers import nm_mask, semi_structured_
from rmt_deploy.layers.semi_structured import SemiStructuredLinear, semi_structured_backend
from rmt_deploy.models import DataConfig
from rmt_deploy.paths import write_json_atomic, write_text_atomic
from rmt_deploy.plan import CompressionPlan
from rmt_deploy.recovery import FinetuneConfig, default_lr, finetune
from rmt_deploy.strategies import plan

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
VARIANTS = ("dense", "lowrank", "nm24", "lowrank+nm24")


@dataclass(frozen=True)
class Sizes:
    """What the suite builds and how long it measures (GPU or dry run)."""

    vit: tuple[str, dict]  # timm name, keyword overrides
    cnn: tuple[str, dict]
    cnn_input: int
    batches: tuple[int, ...]
    rounds: int
    chunk_s: float  # time per timed chunk of calls
    compile_batch: int
    finetune_steps: int
    ddp_steps: int
    calib_images: int


GPU_SIZES = Sizes(
    vit=("vit_base_patch16_224", {}),
    cnn=("resnet50", {}),
    cnn_input=224,
    batches=(1, 8, 32, 128),
    rounds=7,
    chunk_s=0.03,
    compile_batch=32,
    finetune_steps=300,
    ddp_steps=30,
    calib_images=512,
)
DRY_SIZES = Sizes(
    vit=(
        "vit_base_patch16_224",
        dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2),
    ),  # fmt: skip
    cnn=("resnet50", dict(layers=(1, 1, 1, 1))),
    cnn_input=64,
    batches=(1, 2),
    rounds=2,
    chunk_s=0.0,
    compile_batch=2,
    finetune_steps=3,
    ddp_steps=2,
    calib_images=64,
)


@dataclass
class Context:
    out: Path
    assets: Path
    dry: bool
    sizes: Sizes = field(init=False)
    device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        self.sizes = DRY_SIZES if self.dry else GPU_SIZES
        self.device = torch.device("cpu" if self.dry else "cuda")

    def save(self, step: str, record: dict, lines: list[str]) -> None:
        """Write the step's results now (a later step's failure cannot lose them)."""
        record = {"step": step, "device": device_name(self.device), "dry_run": self.dry, **record}
        write_json_atomic(self.out / f"{step}.json", record)
        write_text_atomic(self.out / f"{step}.md", "\n".join(lines) + "\n")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU (dry run)"


# --- variants -------------------------------------------------------------------------------


def build_timm(name: str, overrides: dict) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, **overrides).eval()


def variants(
    dense: nn.Module, lowrank: Callable[[nn.Module], CompressionPlan]
) -> dict[str, tuple[nn.Module, dict]]:
    """dense, low rank (`lowrank` makes its plan), 2:4 and low rank + 2:4, with what each is."""
    low_plan = lowrank(dense)
    low = compress_(copy.deepcopy(dense), low_plan)
    sparse_plan = plan(dense, "nm24", 0.5)
    both_plan = plan(low, "nm24", 0.5)
    made = {
        "dense": (dense, None),
        "lowrank": (low, low_plan),
        "nm24": (compress_(copy.deepcopy(dense), sparse_plan), sparse_plan),
        "lowrank+nm24": (compress_(copy.deepcopy(low), both_plan), both_plan),
    }
    return {name: (model, describe(model, p)) for name, (model, p) in made.items()}


def describe(model: nn.Module, the_plan: CompressionPlan | None) -> dict:
    info = {"params": sum(p.numel() for p in model.parameters())}
    if the_plan is not None:
        info["ranks"] = {
            layer.name: layer.rank for layer in the_plan.layers if layer.action == "lowrank"
        }
        info["nm24_layers"] = sum(layer.action == "nm24" for layer in the_plan.layers)
    return info


def svd_plan(model: nn.Module) -> CompressionPlan:
    """Random weights have no spectrum worth reading: uniform ranks at half the parameters."""
    return plan(model, "svd", 0.5)


class Cast(nn.Module):
    """Runs `model` in `dtype` on float32 inputs and returns float32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def deploy(model: nn.Module, dtype: torch.dtype, ctx: Context, cnn: bool = False):
    """A copy of `model` as it runs: in `dtype`, 2:4 layers on the sparse kernels (GPU; masked
    dense in a dry run), channels-last for CNNs. Returns (module, layers swapped)."""
    deployed = copy.deepcopy(model).eval()
    if ctx.device.type == "cuda":
        swapped = semi_structured_(deployed, dtype)
    else:
        deployed.to(dtype)
        swapped = 0
    if cnn:
        deployed.to(memory_format=torch.channels_last)
    return deployed, swapped


@torch.inference_mode()
def relative_error(model: nn.Module, deployed: nn.Module, x: torch.Tensor, dtype) -> float:
    """max |deployed − fp32 model| / max |fp32 model| on `x`: the kernels compute the same."""
    reference = model.float()(x)
    device = next(deployed.parameters()).device
    out = deployed(x.to(device, dtype)).float().cpu()
    return float((out - reference).abs().max() / reference.abs().max())


# --- timing ---------------------------------------------------------------------------------


def _elapsed_ms(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Mean ms per call over `calls` back-to-back calls (CUDA events on a GPU)."""
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


@torch.inference_mode()
def interleaved(fns: dict[str, Callable[[], object]], ctx: Context) -> dict[str, list[float]]:
    """Per-call ms of each function, `rounds` chunks each, the functions taking turns within
    every round so that clock and thermal drift hit all of them alike."""
    calls = {}
    for name, fn in fns.items():
        for _ in range(3):
            fn()  # warm-up: kernels chosen, caches filled
        once = _elapsed_ms(fn, 1, ctx.device)
        calls[name] = max(1, min(200, int(ctx.sizes.chunk_s / max(once, 1e-3) * 1e3)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ctx.sizes.rounds):
        for name, fn in fns.items():
            samples[name].append(_elapsed_ms(fn, calls[name], ctx.device))
    return samples


def spread(samples: list[float]) -> dict:
    return {
        "median_ms": float(np.median(samples)),
        "min_ms": float(min(samples)),
        "max_ms": float(max(samples)),
        "rounds": len(samples),
    }


def latency_table(rows: dict[str, dict], batches: tuple[int, ...]) -> list[str]:
    """Markdown: median ms [range] and × over dense at each batch, one row per variant."""
    lines = [
        "| variant | params | 2:4 kernels | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|---:|---:|" + "---:|" * len(batches),
    ]
    for name, row in rows.items():
        cells = []
        for b in batches:
            cell = row["batches"].get(str(b))
            if cell is None:
                cells.append("–")
                continue
            cells.append(
                f"{cell['median_ms']:.3f} ms [{cell['min_ms']:.3f}–{cell['max_ms']:.3f}] "
                f"×{cell['speedup']:.2f}"
            )
        lines.append(
            f"| {name} | {row['params'] / 1e6:.2f} M | {row['swapped']} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def time_variants(
    deployed: dict[str, nn.Module],
    shape: tuple[int, ...],
    dtype: torch.dtype,
    ctx: Context,
    channels_last: bool = False,
) -> dict[str, dict[str, dict]]:
    """{variant: {batch: spread + speedup over dense}} with device-resident inputs."""
    result: dict[str, dict[str, dict]] = {name: {} for name in deployed}
    gen = torch.Generator().manual_seed(0)
    for batch in ctx.sizes.batches:
        x = torch.randn(batch, *shape, generator=gen).to(ctx.device, dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fns = {name: (lambda m=m, x=x: m(x)) for name, m in deployed.items()}
        samples = interleaved(fns, ctx)
        dense = float(np.median(samples["dense"]))
        for name, s in samples.items():
            result[name][str(batch)] = {**spread(s), "speedup": dense / float(np.median(s))}
    return result


# --- steps ----------------------------------------------------------------------------------


def step_probe(ctx: Context) -> None:
    """CUDA, the device, and 2:4 on a 3-D F.linear: cuSPARSELt (and whether CUTLASS runs)."""
    record: dict = {"torch": torch.__version__, "cuda": torch.version.cuda}
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 128, generator=gen)
    weight = weight * nm_mask(weight)
    x = torch.randn(4, 64, 128, generator=gen)
    lines = [f"# Probe on {device_name(ctx.device)}", ""]
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        record.update(
            capability=list(torch.cuda.get_device_capability()),
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cusparselt=torch.backends.cusparselt.is_available(),
            cusparselt_version=torch.backends.cusparselt.version(),
            backend=semi_structured_backend(),
            nvidia_smi=_nvidia_smi(),
        )
        w16, x16 = weight.cuda().half(), x.cuda().half()
        reference = F.linear(x16, w16).float()
        for backend in ("cusparselt", "cutlass"):
            record[backend] = _probe_backend(w16, x16, reference, backend)
    else:
        record.update(backend="masked dense (CPU dry run)", cusparselt=False)
        out = F.linear(x, weight)
        record["masked_dense"] = {"shape": list(out.shape)}
    lines += [f"- {k}: {v}" for k, v in record.items()]
    ctx.save("probe", record, lines)


def _nvidia_smi() -> str:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return "not found"
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    return subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()


def _probe_backend(w16, x16, reference, backend: str) -> dict:
    """2:4 F.linear through `backend` on 3-D and on flattened 2-D input, error vs dense."""
    found: dict = {}
    try:
        layer = SemiStructuredLinear(w16, None, backend)
    except Exception as exc:  # noqa: BLE001  (a probe reports what the kernels refuse)
        return {"compress": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    scale = reference.abs().max().item()
    for name, run in (
        ("3d", lambda: F.linear(x16, layer.sparse_weight)),
        ("2d", lambda: layer(x16)),
    ):
        try:
            out = run().float()
            found[name] = {"rel_error": (out - reference).abs().max().item() / scale}
        except Exception as exc:  # noqa: BLE001
            found[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return found


def _latency(ctx: Context, kind: str) -> None:
    sizes = ctx.sizes
    name, overrides = sizes.vit if kind == "vit" else sizes.cnn
    dense = build_timm(name, overrides)
    shape = (3, sizes.cnn_input, sizes.cnn_input) if kind == "cnn" else (
        3, *dense.patch_embed.img_size
    )  # fmt: skip
    made = variants(dense, svd_plan)
    record = {"model": name, "overrides": overrides, "input": list(shape), "dtypes": {}}
    record["variants"] = {v: info for v, (_, info) in made.items()}
    lines = [
        f"# {name} on {device_name(ctx.device)} (random weights; torch eager)",
        "",
        "Low rank: truncated SVD, every Linear/Conv at half its parameters (ranks in the JSON);",
        "2:4 by magnitude on every layer that can take it; speedup ×(dense / variant), medians",
        f"of {sizes.rounds} interleaved chunks [min–max].",
    ]
    probe = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    for dtype_name, dtype in DTYPES.items():
        deployed, swapped, error = {}, {}, {}
        for v, (model, _) in made.items():
            deployed[v], swapped[v] = deploy(model, dtype, ctx, cnn=kind == "cnn")
            error[v] = relative_error(model, deployed[v], probe, dtype)
        timed = time_variants(deployed, shape, dtype, ctx, channels_last=kind == "cnn")
        rows = {
            v: {
                "params": made[v][1]["params"],
                "swapped": swapped[v],
                "batches": timed[v],
                "rel_error_vs_fp32": error[v],
            }  # fmt: skip
            for v in made
        }
        record["dtypes"][dtype_name] = rows
        lines += ["", f"## {dtype_name}", "", *latency_table(rows, sizes.batches)]
        ctx.save(f"latency_{kind}", record, lines)
        del deployed
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()


def step_latency_vit(ctx: Context) -> None:
    """ViT-B/16-sized: dense vs low rank vs 2:4 vs both, fp16 and bf16, torch eager."""
    _latency(ctx, "vit")


def step_latency_cnn(ctx: Context) -> None:
    """ResNet-50-sized: the same four variants (2:4 kernels on the 1×1 convolutions)."""
    _latency(ctx, "cnn")


def step_compile_vit(ctx: Context) -> None:
    """torch.compile (inductor) against eager, fp16 (fp32 in a dry run), one batch size."""
    sizes = ctx.sizes
    name, overrides = sizes.vit
    dense = build_timm(name, overrides)
    shape = (3, *dense.patch_embed.img_size)
    dtype = torch.float32 if ctx.dry else torch.float16
    made = variants(dense, svd_plan)
    record: dict = {"model": name, "dtype": str(dtype), "batch": sizes.compile_batch, "rows": {}}
    lines = [f"# torch.compile, {name}, {dtype}, batch {sizes.compile_batch}", "",
             "| variant | compile s | eager ms | compiled ms | × compiled over eager |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    x = torch.randn(sizes.compile_batch, *shape).to(ctx.device, dtype)
    failures = []
    for v, (model, _) in made.items():
        eager, _ = deploy(model, dtype, ctx)
        try:
            compiled = torch.compile(eager)
            t0 = time.perf_counter()
            with torch.inference_mode():
                compiled(x)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            with torch.no_grad():
                check = (compiled(x).float() - eager(x).float()).abs().max().item()
        except Exception as exc:  # noqa: BLE001  (a variant inductor cannot compile is a result)
            failures.append(v)
            record["rows"][v] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            lines.append(f"| {v} | failed: {record['rows'][v]['error']} | | | |")
            ctx.save("compile_vit", record, lines)
            continue
        runs = {"eager": lambda e=eager: e(x), "compiled": lambda c=compiled: c(x)}
        samples = interleaved(runs, ctx)
        row = {
            "compile_s": compile_s,
            "max_abs_diff": check,
            "eager": spread(samples["eager"]),
            "compiled": spread(samples["compiled"]),
        }
        row["speedup"] = row["eager"]["median_ms"] / row["compiled"]["median_ms"]
        record["rows"][v] = row
        lines.append(
            f"| {v} | {compile_s:.1f} | {row['eager']['median_ms']:.3f} | "
            f"{row['compiled']['median_ms']:.3f} | ×{row['speedup']:.2f} |"
        )
        ctx.save("compile_vit", record, lines)
    if ctx.dry and failures:  # on the CPU every variant is plain dense math: all must compile
        raise RuntimeError(f"torch.compile failed for {failures}")


def _cifar(ctx: Context, config: DataConfig):
    root = ctx.assets / "cifar10"
    train = load_image_dataset(root / "train", train_transform(config))
    calib = evenly_spaced(
        load_image_dataset(root / "train", eval_transform(config)), ctx.sizes.calib_images
    )
    test = load_image_dataset(root / "test", eval_transform(config))
    return train, calib, test


def recovery_recipe(ctx: Context, steps: int) -> FinetuneConfig:
    """The pipeline's recipe for a LayerNorm model: AdamW at its default rate, decay 0.01."""
    return FinetuneConfig(
        max_steps=steps, batch_size=128, optimizer="adamw", lr=default_lr("adamw"),
        weight_decay=0.01, workers=0 if ctx.dry else 4,
    )  # fmt: skip


def step_accuracy_cifar_vit(ctx: Context) -> None:
    """The CIFAR ViT: each variant recovered the same way (AMP on CUDA), top-1 before and
    after, in fp32 torch and as deployed (fp16, 2:4 kernels)."""
    dense = load_model("cifar_vit_tiny")
    config = DataConfig.from_model(dense)
    train, calib, test = _cifar(ctx, config)
    made = variants(dense, lambda m: plan(m, "lowrank", 0.5, data=calib))
    recipe = recovery_recipe(ctx, ctx.sizes.finetune_steps)
    record: dict = {"train_images": len(train), "test_images": len(test),
                    "recipe": {k: getattr(recipe, k) for k in
                               ("max_steps", "batch_size", "optimizer", "lr", "weight_decay")},
                    "rows": {}}  # fmt: skip
    lines = [
        f"# CIFAR ViT on {device_name(ctx.device)}: top-1 after the same recovery",
        "",
        f"{len(train)} training images, {len(test)} test images (the carried subset); recovery "
        f"{recipe.max_steps} steps of {recipe.batch_size}, AdamW {recipe.lr:g}, AMP on CUDA.",
        "",
        "| variant | params | top-1 one-shot % | top-1 recovered % | deployed % (dtype, 2:4 "
        "kernels) | recovery s | AMP |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for v, (model, info) in made.items():
        model = copy.deepcopy(model).to(ctx.device)
        before = evaluate(model, test, progress=False, workers=0).top1
        result = finetune(model, train, recipe, progress=False, device=ctx.device)
        after = evaluate(model, test, progress=False, workers=0).top1
        dtype = torch.float32 if ctx.dry else torch.float16
        deployed, swapped = deploy(model, dtype, ctx)
        shipped = evaluate(Cast(deployed, dtype), test, progress=False, workers=0).top1
        amp = str(_amp(ctx.device))
        row = {
            **info,
            "top1_one_shot": before,
            "top1_recovered": after,
            "top1_deployed": shipped,
            "deployed_dtype": str(dtype),
            "swapped": swapped,
            "recovery_s": result.seconds,
            "steps": result.steps,
            "first_loss": result.first_loss,
            "last_loss": result.last_loss,
            "amp": amp,
        }
        record["rows"][v] = row
        lines.append(
            f"| {v} | {info['params'] / 1e6:.2f} M | {before:.2f} | {after:.2f} | {shipped:.2f} "
            f"({str(dtype).replace('torch.', '')}, {swapped}) | {result.seconds:.1f} | {amp} |"
        )
        ctx.save("accuracy_cifar_vit", record, lines)


def _amp(device: torch.device):
    from rmt_deploy.devices import amp_dtype

    return amp_dtype(device)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_ddp(ctx: Context) -> None:
    """`finetune` under DDP, world size 1: NCCL on a GPU, gloo in a dry run."""
    import torch.distributed as dist

    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        model = load_model("cifar_vit_tiny")
        train, _, _ = _cifar(ctx, DataConfig.from_model(model))
        result = finetune(model, train, recovery_recipe(ctx, ctx.sizes.ddp_steps),
                          progress=False, device=ctx.device)  # fmt: skip
        record = {"backend": dist.get_backend(), "world_size": dist.get_world_size(),
                  "steps": result.steps, "seconds": result.seconds,
                  "first_loss": result.first_loss, "last_loss": result.last_loss}  # fmt: skip
    finally:
        dist.destroy_process_group()
    if not all(np.isfinite([record["first_loss"], record["last_loss"]])):
        raise RuntimeError(f"DDP fine-tuning produced a non-finite loss: {record}")
    ctx.save("ddp", record, [f"# DDP on {device_name(ctx.device)}", "",
                             *(f"- {k}: {v}" for k, v in record.items())])  # fmt: skip


# (rows, in, out) of ViT-B/16's matmuls at batch 1 and 128 (197 tokens), and a tiny one whose
# time is all per-call overhead; dry-run shapes keep the same roles at toy sizes.
KERNEL_SHAPES = {
    False: [(197, 768, 3072), (197, 3072, 768), (25216, 768, 3072), (25216, 3072, 768),
            (128, 128, 128)],
    True: [(16, 64, 128), (16, 128, 64)],
}  # fmt: skip


def step_kernels_24(ctx: Context) -> None:
    """One matmul alone, dense against 2:4 (default algorithm, and the one cuSPARSELt's search
    picks): says whether 2:4 loses in the kernel or in each call's overhead."""
    dtype = torch.float32 if ctx.dry else torch.float16
    gen = torch.Generator().manual_seed(0)
    record: dict = {"dtype": str(dtype), "rows": []}
    lines = [f"# 2:4 matmul alone on {device_name(ctx.device)} ({dtype})", "",
             "| rows × in → out | dense ms | 2:4 ms | × | 2:4 searched alg ms | × |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for rows, k, n in KERNEL_SHAPES[ctx.dry]:
        w = torch.randn(n, k, generator=gen)
        w = (w * nm_mask(w)).to(ctx.device, dtype)
        x = torch.randn(rows, k, generator=gen).to(ctx.device, dtype)
        fns = {"dense": lambda w=w, x=x: F.linear(x, w)}
        if ctx.device.type == "cuda":
            layer = SemiStructuredLinear(w, None)
            fns["sparse"] = lambda layer=layer, x=x: layer(x)
            searched = _searched_alg(w, x)
            if searched is not None:
                fns["searched"] = lambda sw=searched, x=x: F.linear(x, sw)
        samples = interleaved(fns, ctx)
        med = {name: float(np.median(v)) for name, v in samples.items()}
        row = {"shape": [rows, k, n], **{f"{name}_ms": m for name, m in med.items()}}
        record["rows"].append(row)
        cells = [f"{med.get(name, float('nan')):.4f} | ×{med['dense'] / med[name]:.2f}"
                 if name in med else "– | –" for name in ("sparse", "searched")]  # fmt: skip
        lines.append(f"| {rows} × {k} → {n} | {med['dense']:.4f} | {cells[0]} | {cells[1]} |")
        ctx.save("kernels_24", record, lines)


def _searched_alg(w: torch.Tensor, x: torch.Tensor):
    """The 2:4 weight with the algorithm id cuSPARSELt's own search picks (None if torch has
    no search)."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT

    search = getattr(torch, "_cslt_sparse_mm_search", None)
    if search is None:
        return None
    try:
        alg = int(search(torch._cslt_compress(w), x.t().contiguous()))
        return SparseSemiStructuredTensorCUSPARSELT.from_dense(w, alg_id=alg)
    except Exception:  # noqa: BLE001  (the search is a private torch API)
        return None


STEPS: dict[str, Callable[[Context], None]] = {
    "probe": step_probe,
    "kernels_24": step_kernels_24,
    "latency_vit": step_latency_vit,
    "latency_cnn": step_latency_cnn,
    "accuracy_cifar_vit": step_accuracy_cifar_vit,
    "ddp": step_ddp,
    "compile_vit": step_compile_vit,
}
