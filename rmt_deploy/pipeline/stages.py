"""The pipeline's stages. Each takes the RunContext and returns (artifacts, summary); what a
later stage needs is read back from the output folder, so any stage can run in a new process."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
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
        """The model's own preprocessing, with `data.preprocess` overriding any of it."""
        from ..models import DataConfig

        p = self.config.data.preprocess
        return DataConfig.from_model(self.dense).with_overrides(
            input_size=p.input_size,
            mean=p.mean,
            std=p.std,
            interpolation=p.interpolation,
            crop_pct=p.crop_pct,
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.data_config.input_size)  # type: ignore[return-value]

    def _folder(self, value: str, transform):
        from ..data import load_image_dataset

        return load_image_dataset(self.data_path(value), transform)

    @cached_property
    def train(self):
        from ..data import train_transform

        return self._folder(self.config.data.train, train_transform(self.data_config))

    @cached_property
    def _pool(self):
        """(the images plans are validated and reported on, the loader's metric or None)."""
        from ..data import eval_transform, images_from_loader

        d = self.config.data
        if d.loader is None:
            return self._folder(d.test, eval_transform(self.data_config)), None
        limit = None
        if d.test_images is not None:
            limit = d.val_images + d.test_images + (d.calib_images if d.calib == "test" else 0)
        return images_from_loader(d.loader, self.input_shape, limit)

    @cached_property
    def split(self) -> dict:
        """Disjoint parts of the test images: calib (when data.calib is test), val, test."""
        from ..data import split_parts

        d = self.config.data
        sizes: dict[str, int | None] = {}
        if d.calib == "test":
            sizes["calib"] = d.calib_images
        sizes["val"] = d.val_images
        sizes["test"] = d.test_images
        where = f"data.loader {d.loader}" if d.loader else f"data.test ({self.data_path(d.test)})"
        return split_parts(self._pool[0], sizes, seed=self.config.seed, where=where)

    @cached_property
    def calib(self):
        from ..data import eval_transform

        d = self.config.data
        if d.calib == "test":
            return self.split["calib"]
        return self._folder(
            d.train if d.calib == "train" else d.calib, eval_transform(self.data_config)
        )

    @property
    def val(self):
        return self.split["val"]

    @property
    def test(self):
        return self.split["test"]

    @cached_property
    def budget_metric(self):
        """The budget's metric: a built-in or user one by name, or the loader's own."""
        from ..budget import BudgetMetric, _user_loss, resolve_metric

        name = self.config.compress.budget_metric
        if name == "loader":
            metric = self._pool[1]
            if metric is None:
                raise RmtDeployError(
                    f"compress.budget_metric is loader but data.loader {self.config.data.loader} "
                    "returns no metric (return (loader, metric) from it)"
                )
            spec = f"{self.config.data.loader} metric"
            return BudgetMetric(spec, "", False, False, _user_loss(spec, metric), "loader metric")
        return resolve_metric(name)

    def split_record(self, names: bool = False) -> dict:
        """What each part of the data is (with `names`, which images), for split.json."""
        d = self.config.data
        source = d.loader or str(self.data_path(d.test))
        parts = {
            key: {"from": source, "count": len(part), "labelled": part.labelled}
            | ({"images": part.names()} if names else {})
            for key, part in self.split.items()
        }
        if "calib" not in parts:
            calib_from = self.data_path(d.train if d.calib == "train" else d.calib)
            parts["calib"] = {
                "from": str(calib_from),
                "count": min(d.calib_images, len(self.calib)),
                "labelled": self.calib.labelled,
            }
        return {"seed": self.config.seed, "parts": parts}

    def validate(self) -> None:
        """Check the data and the budget against the model before any stage runs: a bad split,
        a loader with the wrong shapes or a metric the data cannot support fail here, in one
        line, with nothing written."""
        from ..budget import check_metric, model_outputs
        from ..strategies import example_batch

        c, d = self.config.compress, self.config.data
        val = self.val
        if self.config.finetune.steps > 0 and not self.train.labelled:
            raise RmtDeployError(
                f"fine-tuning needs labelled training images, and data.train "
                f"({self.data_path(d.train)}) has none: use a labelled folder or finetune.steps: 0"
            )
        probe = example_batch(self.calib)
        try:
            with torch.inference_mode():
                outputs = self.dense.eval()(probe)
        except Exception as exc:
            raise RmtDeployError(
                f"the model fails on a batch of shape {tuple(probe.shape)} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
                "check data.preprocess.input_size"
            ) from exc
        if c.strategy == "latency" and c.layer_error is None and c.accuracy_budget is not None:
            if not isinstance(outputs, torch.Tensor):
                model_outputs(self.dense, val.subset([0]))  # raises the clear error
            check_metric(self.budget_metric, val.labelled, tuple(outputs.shape))

    def load_plan(self):
        from ..plan import CompressionPlan

        folder = self.out / "plan"
        return CompressionPlan.load(folder / "plan.json").load_payloads(
            folder / "payload.safetensors"
        )

    def shipped_dense(self) -> bool:
        """True when the plan compresses nothing (no plan fitted the budget): the dense model
        is what ships, and nothing is exported or benchmarked twice."""
        return not self.load_plan().compressed

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
    written: list[Path] = []
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
                budget_metric=ctx.budget_metric if budget is not None else "top1",
                error_grid=tuple(c.error_grid) if c.error_grid else ERROR_GRID,
                calib_images=ctx.config.data.calib_images,
                rank_multiple=c.rank_multiple,
                name=ctx.config.model,
                progress=ctx.progress,
            )
        except BudgetNotMetError as exc:
            written += _write_planner(folder, exc.report, outcome=str(exc))
            if c.require_compression:
                raise
            # No dead end: ship the dense model, and say why.
            ctx.log(f"[plan] {exc}; shipping the dense model (--require-compression to fail)")
            the_plan = exc.fallback
        else:
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
    ctx.log(f"[plan] {the_plan.coverage_line()}")
    written += [
        the_plan.save(folder / "plan.json"),
        the_plan.save_payloads(folder / "payload.safetensors"),
    ]
    return written, {**the_plan.summary(), "coverage": the_plan.coverage_line()}


def _write_planner(folder: Path, report, outcome: str | None = None) -> list[Path]:
    budget = (
        f"Budget: {report.budget_metric} loss ≤ {report.budget} on {report.heldout_images} "
        "held-out images"
        + (
            f" (dense top-1 {report.dense_heldout_top1:.2f} %)."
            if report.dense_heldout_top1 is not None
            else "."
        )
        if report.budget is not None
        else "Fixed per-layer error budget."
    )
    lines = [
        f"# Latency-aware plan ({report.backend} on {report.device}, batch {report.batch})",
        "",
        f"Dense model: {report.dense_model_ms:.3f} ms measured. {budget}",
        "",
    ]
    if outcome:
        lines += [f"**No compressed plan: {outcome}.** The dense model ships.", ""]
    lines += [
        "| layer error ε | low-rank layers | 2:4 layers | params | predicted ms | predicted × "
        "| held-out top-1 | held-out loss ± se | 95 % bound | chosen |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for cand in report.candidates:
        top1 = "–" if cand.heldout_top1 is None else f"{cand.heldout_top1:.2f}"
        loss = (
            "–"
            if cand.heldout_loss is None
            else f"{cand.heldout_loss:.4g} ± {cand.heldout_loss_se:.2g}"
        )
        bound = "–" if cand.heldout_loss_upper is None else f"{cand.heldout_loss_upper:.4g}"
        mark = "✔" if cand.layer_error == report.chosen_layer_error else ""
        lines.append(
            f"| {cand.layer_error:g} | {cand.lowrank_layers} | {cand.nm24_layers} | "
            f"{cand.params_after:,} | {cand.predicted_ms:.3f} | ×{cand.predicted_speedup:.2f} | "
            f"{top1} | {loss} | {bound} | {mark} |"
        )
    untrusted = [c for c in report.calibration if c.get("untrusted_ranks")]
    if report.calibration:
        lines += [
            "",
            "Calibration: output errors are cross-validated over folds of calibration images; "
            f"{len(untrusted)} of {len(report.calibration)} layers had ranks whose folds "
            "disagree (kept at the safe rank where the worst fold meets ε).",
        ]
    record = {**report.to_dict(), "outcome": outcome or "compressed"}
    return [
        write_json_atomic(folder / "planner.json", record),
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
    # Nothing compressed (no plan fitted the budget): the dense model ships as it is.
    info = {"compressed": _recover(ctx, model, teacher) if the_plan.compressed else {}}
    meta = {PLAN_METADATA_KEY: the_plan.to_json(), "rmt_deploy.model": ctx.config.model}
    written = [save_checkpoint(model, folder / "model.safetensors", meta)]
    (folder / "dense_finetuned.safetensors").unlink(missing_ok=True)  # from an earlier config
    if ctx.config.finetune.steps > 0 and the_plan.compressed:
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
    """Every model on the test part: top-1 where there are labels, and always its fidelity to
    the dense model (top-1 agreement, cosine of the outputs, the budget's metric)."""
    from ..budget import METRICS, Reference, measure, model_outputs
    from ..models import load_model

    models = {"dense": ctx.dense, "compressed": ctx.compressed()}
    reference_file = ctx.out / "compress" / "dense_finetuned.safetensors"
    if reference_file.is_file():
        models["dense_finetuned"] = load_model(ctx.config.model, reference_file)
    outputs, labels = {}, None
    for name, model in models.items():
        outputs[name], labels = model_outputs(model, ctx.test)
    reference = "dense_finetuned" if "dense_finetuned" in outputs else "dense"
    ref = Reference(outputs[reference], labels)
    # Class scores (top-1, KL make sense) unless the model says it has no classifier.
    declared = (getattr(ctx.dense, "pretrained_cfg", None) or {}).get("num_classes")
    classes = (
        outputs["dense"].dim() == 2
        and declared != 0
        and getattr(ctx.dense, "num_classes", None) != 0
    )
    fidelity = {}
    for name in models:
        if name == reference:
            continue
        row = {"cosine_distance": measure(METRICS["cosine"], ref, outputs[name]).mean}
        if classes:
            row["disagreement_pp"] = measure(METRICS["agreement"], ref, outputs[name]).mean
            row["kl"] = measure(METRICS["kl"], ref, outputs[name]).mean
        fidelity[name] = row
    metric = ctx.budget_metric
    budget_loss = (
        measure(metric, ref, outputs["compressed"])
        if labels is not None or not metric.needs_labels
        else None
    )
    summary = {
        "test_images": len(ctx.test),
        "labelled": labels is not None,
        "reference": reference,
        "fidelity": fidelity,
        "budget_metric": metric.name,
        "budget_loss": None if budget_loss is None else budget_loss.mean,
        "budget_loss_se": None if budget_loss is None else budget_loss.se,
        "shipped": "compressed" if ctx.load_plan().compressed else "dense",
    }
    if labels is not None:
        top1 = {
            name: 100.0 * float((out.argmax(dim=1) == labels).float().mean())
            for name, out in outputs.items()
        }
        summary.update(top1=top1, loss_pp=top1[reference] - top1["compressed"])
    folder = ctx.folder("evaluate")
    written = [
        write_json_atomic(folder / "accuracy.json", summary),
        write_json_atomic(folder / "split.json", ctx.split_record(names=True)),
    ]
    return written, summary


def stage_export(ctx: RunContext):
    from ..exporters import export

    e = ctx.config.export
    written: list[Path] = []
    summary: dict = {}
    if not e.onnx:
        return written, {"onnx": "not requested"}
    variants = _variants(ctx)
    for stale in {"dense", "compressed"} - {name for name, _ in variants}:
        shutil.rmtree(ctx.out / "export" / stale, ignore_errors=True)  # an earlier run's model
    for name, model in variants:
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
    for name, model in _variants(ctx):
        folder = ctx.out / "export" / name
        onnx_path = folder / "model.onnx"
        trt = ctx.config.export.tensorrt
        engine = engine_path(folder, trt.precision) if trt is not None else None
        variants[name] = {
            "model": model,
            "onnx": onnx_path if onnx_path.is_file() else None,
            "engine": engine if engine is not None and engine.is_file() else None,
        }
    agree = evenly_spaced(ctx.test, b.agreement_images)
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


def _variants(ctx: RunContext) -> list[tuple[str, nn.Module]]:
    """The models to export and benchmark: dense and compressed, or dense alone when the
    plan compresses nothing."""
    if ctx.shipped_dense():
        return [("dense", ctx.dense)]
    return [("dense", ctx.dense), ("compressed", ctx.compressed())]


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
