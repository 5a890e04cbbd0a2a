"""The pipeline's stages. Each takes the RunContext and returns (artifacts, summary); what a
later stage needs is read back from the output folder, so any stage can run in a new process."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from torch import nn

from ..data import evenly_spaced
from ..errors import RmtDeployError
from ..paths import write_json_atomic, write_text_atomic
from .config import RunConfig


@dataclass
class RunContext:
    config: RunConfig
    out: Path
    assets: Path
    progress: bool = True
    log: Callable[[str], None] = print

    def folder(self, name: str) -> Path:
        path = self.out / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def data_path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() or path.exists() else self.assets / value

    @cached_property
    def dense(self) -> nn.Module:
        from ..models import load_model

        return load_model(self.config.model, self.config.checkpoint, assets=self.config.assets)

    @cached_property
    def data_config(self):
        from ..models import DataConfig

        return DataConfig.from_model(self.dense)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.data_config.input_size)  # type: ignore[return-value]

    @cached_property
    def train(self):
        from ..data import load_image_dataset, train_transform

        return load_image_dataset(
            self.data_path(self.config.data.train), train_transform(self.data_config)
        )

    @cached_property
    def calib(self):
        from ..data import eval_transform, load_image_dataset

        return load_image_dataset(
            self.data_path(self.config.data.train), eval_transform(self.data_config)
        )

    @cached_property
    def _split(self):
        """(validation, test): every k-th test image validates plans; the rest is the test."""
        from ..data import eval_transform, load_image_dataset

        full = load_image_dataset(
            self.data_path(self.config.data.test), eval_transform(self.data_config)
        )
        n_val = self.config.data.val_images
        if n_val >= len(full):
            raise RmtDeployError(
                f"data.val_images ({n_val}) must be smaller than the test folder ({len(full)})"
            )
        step = len(full) / n_val if n_val else None
        val_index = {int(i * step) for i in range(n_val)} if step else set()
        val, test = copy.copy(full), copy.copy(full)
        val.samples = [s for i, s in enumerate(full.samples) if i in val_index]
        test.samples = [s for i, s in enumerate(full.samples) if i not in val_index]
        return val, evenly_spaced(test, self.config.data.test_images)

    @property
    def val(self):
        return self._split[0]

    @property
    def test(self):
        return self._split[1]

    def load_plan(self):
        from ..plan import CompressionPlan

        folder = self.out / "plan"
        return CompressionPlan.load(folder / "plan.json").load_payloads(
            folder / "payload.safetensors"
        )

    def compressed(self) -> nn.Module:
        from ..models import load_model

        return load_model(self.config.model, self.out / "compress" / "model.safetensors")


def stage_analyze(ctx: RunContext):
    from ..analysis import analyze
    from ..report.spectrum import write_spectrum_report

    spectrum = analyze(ctx.dense, name=ctx.config.model, progress=ctx.progress)
    written = write_spectrum_report(
        spectrum, ctx.folder("analyze"), plots=ctx.config.analyze.plots, progress=ctx.progress
    )
    noise = [layer.fit.noise_fraction for layer in spectrum.fitted]
    summary = {"layers": len(spectrum.layers), "fitted": len(spectrum.fitted)}
    if noise:
        summary["mean_noise_share"] = sum(noise) / len(noise)
    return written, summary


def stage_plan(ctx: RunContext):
    from ..analysis import ModelSpectrum
    from ..planner import ERROR_GRID, BudgetNotMetError, latency_plan
    from ..strategies import plan

    c = ctx.config.compress
    folder = ctx.folder("plan")
    written = []
    if c.strategy == "latency":
        budget = c.accuracy_budget if c.layer_error is None else None
        try:
            the_plan, report = latency_plan(
                ctx.dense,
                ctx.calib,
                heldout=ctx.val if budget is not None else None,
                backend=c.backend,
                device=c.device,
                batch=c.batch,
                layer_error=c.layer_error,
                accuracy_budget=budget,
                error_grid=tuple(c.error_grid) if c.error_grid else ERROR_GRID,
                calib_images=ctx.config.data.calib_images,
                name=ctx.config.model,
                progress=ctx.progress,
            )
        except BudgetNotMetError as exc:
            _write_planner(folder, exc.report)
            raise
        written += _write_planner(folder, report)
    else:
        for stale in ("planner.json", "planner.md"):  # from an earlier latency-aware plan
            (folder / stale).unlink(missing_ok=True)
        spectrum = ModelSpectrum.load(ctx.out / "analyze" / "spectrum.json")
        data = ctx.train if c.strategy in ("ser", "hybrid") else ctx.calib
        the_plan = plan(
            ctx.dense,
            c.strategy,
            c.sparsity,
            data=data,
            spectrum=spectrum,
            name=ctx.config.model,
            config=c.settings,
        )
    written += [
        the_plan.save(folder / "plan.json"),
        the_plan.save_payloads(folder / "payload.safetensors"),
    ]
    return written, the_plan.summary()


def _write_planner(folder: Path, report) -> list[Path]:
    lines = [
        f"# Latency-aware plan ({report.backend} on {report.device}, batch {report.batch})",
        "",
        f"Dense model: {report.dense_model_ms:.3f} ms measured. "
        + (
            f"Accuracy budget {report.accuracy_budget} pp on held-out images "
            f"(dense {report.dense_heldout_top1:.2f} %)."
            if report.accuracy_budget is not None
            else "Fixed per-layer error budget."
        ),
        "",
        "| layer error ε | low-rank layers | 2:4 layers | params | predicted ms | predicted × "
        "| held-out top-1 | loss pp | chosen |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for cand in report.candidates:
        top1 = "–" if cand.heldout_top1 is None else f"{cand.heldout_top1:.2f}"
        drop = "–" if cand.drop_pp is None else f"{cand.drop_pp:.2f}"
        mark = "✔" if cand.layer_error == report.chosen_layer_error else ""
        lines.append(
            f"| {cand.layer_error:g} | {cand.lowrank_layers} | {cand.nm24_layers} | "
            f"{cand.params_after:,} | {cand.predicted_ms:.3f} | ×{cand.predicted_speedup:.2f} | "
            f"{top1} | {drop} | {mark} |"
        )
    return [
        write_json_atomic(folder / "planner.json", report.to_dict()),
        write_text_atomic(folder / "planner.md", "\n".join(lines) + "\n"),
    ]


def _recipe(ctx: RunContext, model: nn.Module):
    from ..recovery import FinetuneConfig

    f = ctx.config.finetune
    transformer = any(isinstance(m, nn.LayerNorm) for m in model.modules())
    optimizer = f.optimizer or ("adamw" if transformer else "sgd")
    return FinetuneConfig(
        max_steps=f.steps,
        batch_size=f.batch_size,
        optimizer=optimizer,
        lr=f.lr if f.lr is not None else (1e-4 if optimizer == "adamw" else 0.01),
        weight_decay=0.01 if optimizer == "adamw" else 1e-6,
        distill_alpha=f.distill_alpha,
        seed=ctx.config.seed,
    )


def _recover(ctx: RunContext, model: nn.Module, teacher: nn.Module | None) -> dict:
    from ..recovery import bn_recalibrate, finetune

    f = ctx.config.finetune
    info: dict = {}
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and f.bn_recal_images > 0:
        info["bn_recal_images"] = bn_recalibrate(
            model, ctx.calib, n_images=f.bn_recal_images, progress=ctx.progress
        )
    if f.steps > 0:
        recipe = _recipe(ctx, model)
        result = finetune(model, ctx.train, recipe, teacher=teacher, progress=ctx.progress)
        info.update(
            optimizer=recipe.optimizer,
            lr=recipe.lr,
            steps=result.steps,
            images=result.images,
            seconds=round(result.seconds, 1),
            first_loss=result.first_loss,
            last_loss=result.last_loss,
        )
    return info


def stage_compress(ctx: RunContext):
    from ..compress import compress_
    from ..models import save_checkpoint
    from ..models.checkpoint import PLAN_METADATA_KEY

    the_plan = ctx.load_plan()
    folder = ctx.folder("compress")
    model = compress_(copy.deepcopy(ctx.dense), the_plan)
    teacher = ctx.dense if ctx.config.finetune.distill_alpha > 0 else None
    info = {"compressed": _recover(ctx, model, teacher)}
    meta = {PLAN_METADATA_KEY: the_plan.to_json(), "rmt_deploy.model": ctx.config.model}
    written = [save_checkpoint(model, folder / "model.safetensors", meta)]
    (folder / "dense_finetuned.safetensors").unlink(missing_ok=True)  # from an earlier config
    if ctx.config.finetune.steps > 0:
        # The same recovery on the dense model: the fair reference for the accuracy cost.
        reference = copy.deepcopy(ctx.dense)
        info["dense_reference"] = _recover(ctx, reference, None)
        written.append(
            save_checkpoint(
                reference,
                folder / "dense_finetuned.safetensors",
                {"rmt_deploy.model": ctx.config.model},
            )
        )
    written.append(write_json_atomic(folder / "finetune.json", info))
    return written, {k: v.get("steps", 0) for k, v in info.items()}


def stage_evaluate(ctx: RunContext):
    from ..evaluate import evaluate
    from ..models import load_model

    models = {"dense": ctx.dense, "compressed": ctx.compressed()}
    reference_file = ctx.out / "compress" / "dense_finetuned.safetensors"
    if reference_file.is_file():
        models["dense_finetuned"] = load_model(ctx.config.model, reference_file)
    top1 = {
        name: evaluate(model, ctx.test, progress=ctx.progress).top1
        for name, model in models.items()
    }
    reference = "dense_finetuned" if "dense_finetuned" in top1 else "dense"
    summary = {
        "test_images": len(ctx.test),
        "top1": top1,
        "reference": reference,
        "loss_pp": top1[reference] - top1["compressed"],
    }
    return [write_json_atomic(ctx.folder("evaluate") / "accuracy.json", summary)], summary


def stage_export(ctx: RunContext):
    from ..exporters import export

    e = ctx.config.export
    written: list[Path] = []
    summary: dict = {}
    if not e.onnx:
        return written, {"onnx": "not requested"}
    for name, model in (("dense", ctx.dense), ("compressed", ctx.compressed())):
        artifact = export(
            model,
            ctx.folder(f"export/{name}"),
            ctx.input_shape,
            opset=e.opset,
            verify_data=ctx.test,
            n_verify=e.verify_images,
            name=name,
        )
        written += [artifact.onnx_path, artifact.manifest_path]
        summary[name] = {"max_abs_diff": artifact.parity.max_abs_diff}
        if e.tensorrt is not None:
            summary[name]["tensorrt"] = _build_engine(ctx, artifact.onnx_path, written)
    return written, summary


def _build_engine(ctx: RunContext, onnx_path: Path, written: list[Path]) -> str:
    from ..exporters.tensorrt_build import (
        BatchProfile,
        TensorRTUnavailable,
        build_engine,
        engine_info_path,
    )

    t = ctx.config.export.tensorrt
    engine = engine_path(onnx_path.parent, t.precision)
    for old in onnx_path.parent.glob("*.engine"):  # never benchmark an engine of another ONNX
        old.unlink()
        engine_info_path(old).unlink(missing_ok=True)
    try:
        report = build_engine(
            onnx_path,
            engine,
            precision=t.precision,
            sparsity=t.sparsity,
            batch=BatchProfile.parse(t.batch),
        )
    except TensorRTUnavailable as exc:
        ctx.log(f"[export] TensorRT engine not built: {exc}")
        return f"not built: {exc}"
    written += [report.engine_path, engine_info_path(report.engine_path)]
    return f"built with TensorRT {report.tensorrt_version}"


def stage_benchmark(ctx: RunContext):
    from ..bench import benchmark, write_report

    b = ctx.config.benchmark
    variants = {}
    for name, model in (("dense", ctx.dense), ("compressed", ctx.compressed())):
        folder = ctx.out / "export" / name
        onnx_path = folder / "model.onnx"
        trt = ctx.config.export.tensorrt
        engine = engine_path(folder, trt.precision) if trt is not None else None
        variants[name] = {
            "model": model,
            "onnx": onnx_path if onnx_path.is_file() else None,
            "engine": engine if engine is not None and engine.is_file() else None,
        }
    agree = evenly_spaced(copy.copy(ctx.test), b.agreement_images)
    suite = benchmark(
        variants,
        b.backends,
        b.batches,
        ctx.input_shape,
        data=agree if b.agreement_images > 0 else None,
        reference="dense",
        warmup_s=b.warmup_s,
        runs=b.runs,
        power=b.power,
        progress=ctx.progress,
        backend_options={
            "device": ctx.config.compress.device,
            "precision": "fp16" if ctx.config.compress.device.startswith("cuda") else "fp32",
            "sparse24": True,  # CUDA: 2:4 layers run on the sparse kernels the planner timed
        },
    )
    written = write_report(suite, ctx.folder("bench"), f"{ctx.config.model}: dense vs compressed")
    speedups = {
        f"{r.backend}/b{r.batch}": round(r.extra["speedup_vs_reference"], 3)
        for r in suite.results
        if r.variant == "compressed" and "speedup_vs_reference" in r.extra
    }
    return written, {"speedups": speedups, "skipped": suite.skipped}


def engine_path(folder: Path, precision: str) -> Path:
    return folder / f"model_{precision}.engine"


def stage_report(ctx: RunContext):
    from .report import write_run_report

    return write_run_report(ctx), {}


STAGE_FUNCTIONS = {
    "analyze": stage_analyze,
    "plan": stage_plan,
    "compress": stage_compress,
    "evaluate": stage_evaluate,
    "export": stage_export,
    "benchmark": stage_benchmark,
    "report": stage_report,
}
