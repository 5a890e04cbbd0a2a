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
from ..paths import read_json, write_json_atomic, write_text_atomic
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
    def device(self) -> str:
        """Where calibration, BatchNorm re-estimation, fine-tuning and evaluation run."""
        return self.config.compress.device

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
        self._check_int8_calibration()
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
        if c.accuracy_budget is not None:
            if not isinstance(outputs, torch.Tensor):
                model_outputs(self.dense, val.subset([0]))  # raises the clear error
            check_metric(self.budget_metric, val.labelled, tuple(outputs.shape))

    def listed_deployments(self) -> list[list[str]]:
        """The deployment lists this run uses: the planner's targets (latency strategy only)
        and the benchmark's backends."""
        lists = [self.config.benchmark.backends]
        if self.config.compress.strategy == "latency":
            lists.append(self.config.compress.targets)
        return lists

    def _check_int8_calibration(self) -> None:
        """INT8 deployments need calibration images: too few is an error before any stage."""
        from ..deploy import AUTO, DEPLOYMENTS
        from ..exporters.quantize import MIN_CALIBRATION_IMAGES

        # by name: resolving here would load the runtimes into the caller's process
        auto = AUTO["cuda" if self.config.compress.device.startswith("cuda") else "cpu"]
        names = set()
        for listed in self.listed_deployments():
            names |= set(auto) if listed == ["auto"] else set(listed)
        int8 = sorted(n for n in names if n in DEPLOYMENTS and DEPLOYMENTS[n].quantized)
        count = min(len(self.calib), self.config.data.calib_images)
        if int8 and count < MIN_CALIBRATION_IMAGES:
            raise RmtDeployError(
                f"INT8 ({', '.join(int8)}) needs at least {MIN_CALIBRATION_IMAGES} calibration "
                f"images and data.calib_images gives {count}: raise it, or name "
                "compress.targets and benchmark.backends without the int8 deployments"
            )

    def deployments(self, benchmark: bool = False) -> list:
        """The deployments this run plans for (compress.targets), or with `benchmark` those the
        benchmark stage measures (benchmark.backends; auto: every one this machine offers)."""
        from ..deploy import DEPLOYMENTS, resolve

        if benchmark and self.config.benchmark.backends != ["auto"]:
            return [DEPLOYMENTS[n] for n in self.config.benchmark.backends if n in DEPLOYMENTS]
        targets = self.config.compress.targets
        device = self.config.compress.device
        names = "auto" if targets == ["auto"] or benchmark else targets
        return resolve(names, device)[0]

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


def plan_inputs(ctx: RunContext) -> dict:
    """What `plan()` gets in the pipeline, the same for every strategy."""
    from ..budget import BudgetMetric
    from ..strategies import STRATEGIES, Budget, Target

    c = ctx.config.compress
    settings = dict(c.settings)
    if "calib_images" in STRATEGIES[c.strategy].defaults:
        settings.setdefault("calib_images", ctx.config.data.calib_images)
    budget = None
    if c.accuracy_budget is not None:
        metric: str | BudgetMetric = (
            ctx.budget_metric
            if c.budget_metric in ("loader",) or ":" in c.budget_metric
            else c.budget_metric
        )
        budget = Budget(c.accuracy_budget, metric)
    targets = "auto" if c.targets == ["auto"] else tuple(c.targets)
    return {
        "heldout": ctx.val,
        "budget": budget,
        "target": Target(targets, c.device, c.batch),
        "config": settings,
    }


def stage_plan(ctx: RunContext):
    from ..analysis import ModelSpectrum
    from ..planner import BudgetNotMetError
    from ..strategies import needs_training, plan

    c = ctx.config.compress
    folder = ctx.folder("plan")
    written: list[Path] = []
    for stale in ("planner.json", "planner.md", "layer_tables.json"):  # an earlier search
        (folder / stale).unlink(missing_ok=True)
    spectrum = ModelSpectrum.load(ctx.out / "analyze" / "spectrum.json")
    data = ctx.train if needs_training(c.strategy) else ctx.calib
    try:
        the_plan = plan(
            ctx.dense,
            c.strategy,
            c.sparsity,
            data=data,
            spectrum=spectrum,
            name=ctx.config.model,
            **plan_inputs(ctx),
        )
    except BudgetNotMetError as exc:
        written += _write_planner(folder, exc.report, outcome=str(exc))
        if c.require_compression:
            raise
        # No dead end: ship the best dense deployment, and say why.
        ctx.log(f"[plan] {exc}; shipping the dense model (--require-compression to fail)")
        the_plan = exc.fallback
    else:
        if the_plan.search is not None:
            written += _write_planner(folder, the_plan.search)
    ctx.log(f"[plan] {the_plan.coverage_line()}")
    written += [
        the_plan.save(folder / "plan.json"),
        the_plan.save_payloads(folder / "payload.safetensors"),
    ]
    return written, {**the_plan.summary(), "coverage": the_plan.coverage_line()}


def _write_planner(folder: Path, report, outcome: str | None = None) -> list[Path]:
    """planner.md / planner.json: the baselines, the validated plans and the finalists."""
    budget = (
        f"Budget: {report.budget_metric} loss ≤ {report.budget} (95 % upper bound) on "
        f"{report.heldout_images} held-out images"
        + (
            f" (dense top-1 {report.dense_heldout_top1:.2f} %)."
            if report.dense_heldout_top1 is not None
            else "."
        )
        if report.budget is not None
        else "Fixed per-layer error."
    )
    lines = [
        f"# Latency-aware plan (batch {report.batch})",
        "",
        f"Deployments: {', '.join(report.deployments)}"
        + (
            "; not here: "
            + "; ".join(f"{n} ({why})" for n, why in report.skipped_deployments.items())
            if report.skipped_deployments
            else ""
        )
        + f". {budget}",
        "",
    ]
    if outcome:
        lines += [f"**No compressed plan ships: {outcome}.**", ""]
    engines = [*report.baselines, *report.finalists]
    if engines:
        lines += [
            "## Engines timed whole (interleaved)",
            "",
            "| engine | predicted ms | measured ms (IQR) | held-out loss ± se | 95 % bound | "
            "within budget | chosen |",
            "|---|---:|---:|---:|---:|:-:|:-:|",
        ]
        for e in engines:
            pred = "–" if e.predicted_ms is None else f"{e.predicted_ms:.2f}"
            meas = (
                "–"
                if e.measured_ms is None
                else f"{e.measured_ms:.2f} ({e.q1_ms:.2f}–{e.q3_ms:.2f})"
            )
            loss = (
                "–" if e.heldout_loss is None else f"{e.heldout_loss:.3g} ± {e.heldout_loss_se:.2g}"
            )
            bound = "–" if e.heldout_loss_upper is None else f"{e.heldout_loss_upper:.3g}"
            mark = "✔" if e.label == report.chosen else ""
            lines.append(
                f"| {e.label} | {pred} | {meas} | {loss} | {bound} | "
                f"{'yes' if e.within_budget else 'no'} | {mark} |"
            )
            if e.note:
                lines.append(f"| ↳ {e.note} | | | | | | |")
        lines.append("")
    confirmed = [e for e in report.finalists if e.confirmed]
    if confirmed:
        lines += [
            "## Head to head with the best dense engine",
            "",
            "A plan ships only when the one-sided 95 % lower bound of its speedup, timed alone "
            "with the best dense engine (paired per-call ratios, bootstrap), reaches "
            "`min_speedup`.",
            "",
            "| plan | against | × median | 95 % bounds | pairs |",
            "|---|---|---:|---:|---:|",
        ]
        for e in confirmed:
            c = e.confirmed
            lines.append(
                f"| {e.label} | {c['against']} | ×{c['median']:.3f} | "
                f"×{c['low']:.3f}–×{c['high']:.3f} | {c['pairs']} |"
            )
        lines.append("")
    if report.calibrations:
        lines += [
            "## Prediction calibration",
            "",
            "Predicted ms = dense ms − κ · (the table's summed per-layer savings); κ is measured "
            "on a whole-model probe (the most aggressive allocation) timed with the dense model.",
            "",
            "| deployment | probe layers | predicted saving | measured saving | κ |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, c in report.calibrations.items():
            measured = "–" if c["measured_share"] is None else f"{100 * c['measured_share']:.1f} %"
            lines.append(
                f"| {name} | {c['probe_layers']} | {100 * c['predicted_share']:.1f} % | "
                f"{measured} | {c['kappa']:.2f} |"
            )
        lines.append("")
    if report.candidates:
        lines += [
            "## Plans validated",
            "",
            "| deployment | low-rank layers | params | predicted damage | table ms | "
            "predicted ms | predicted × | held-out loss ± se | 95 % bound |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for cand in report.candidates:
            loss = (
                "–"
                if cand.heldout_loss is None
                else f"{cand.heldout_loss:.3g} ± {cand.heldout_loss_se:.2g}"
            )
            bound = "–" if cand.heldout_loss_upper is None else f"{cand.heldout_loss_upper:.3g}"
            table = "–" if cand.table_ms is None else f"{cand.table_ms:.2f}"
            lines.append(
                f"| {cand.deployment} | {cand.lowrank_layers} | {cand.params_after:,} | "
                f"{cand.damage:.2e} | {table} | {cand.predicted_ms:.2f} | "
                f"×{cand.predicted_speedup:.2f} | {loss} | {bound} |"
            )
        lines.append("")
    for note in report.notes:
        lines += [f"Note: {note}", ""]
    if report.calibration:
        lines += [
            "Calibration: output errors are cross-validated over folds of calibration images; "
            "ranks whose folds disagree by more than 2× move to the safe rank where the worst "
            "fold meets the error. Per-layer tables: `plan/layer_tables.json`.",
        ]
    record = {**report.to_dict(), "outcome": outcome or report.outcome}
    written = [
        write_json_atomic(folder / "planner.json", record),
        write_text_atomic(folder / "planner.md", "\n".join(lines) + "\n"),
    ]
    if report.tables:  # reusable: compress.settings.table (same model, batch and machine)
        written.append(write_json_atomic(folder / "layer_tables.json", report.tables))
    return written


def _recipe(ctx: RunContext, model: nn.Module):
    from ..recovery import recipe_for

    f = ctx.config.finetune
    return recipe_for(
        model,
        f.steps,
        batch_size=f.batch_size,
        optimizer=f.optimizer,
        lr=f.lr,
        distill_alpha=f.distill_alpha,
        seed_regularizers=f.seed_regularizers,
        group_lasso=f.group_lasso,
        l1=f.l1,
        l2=f.l2,
        seed=ctx.config.seed,
    )


def _recover(ctx: RunContext, model: nn.Module, teacher: nn.Module | None) -> dict:
    """BatchNorm re-estimation and fine-tuning on the configured device."""
    try:
        return _recover_on_device(ctx, model, teacher)
    finally:  # checkpoints and exports are written from the CPU
        model.cpu()
        if teacher is not None:
            teacher.cpu()


def _recover_on_device(ctx: RunContext, model: nn.Module, teacher: nn.Module | None) -> dict:
    from ..recovery import bn_recalibrate, finetune

    f = ctx.config.finetune
    info: dict = {}
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and f.bn_recal_images > 0:
        info["bn_recal_images"] = bn_recalibrate(
            model, ctx.calib, n_images=f.bn_recal_images, progress=ctx.progress, device=ctx.device
        )
    if f.steps > 0:
        from ..analysis import ModelSpectrum
        from ..recovery import lasso_scales

        recipe = _recipe(ctx, model)
        scales = None
        if recipe.group_lasso or recipe.scale_gradients:
            scales = lasso_scales(ModelSpectrum.load(ctx.out / "analyze" / "spectrum.json"))
        result = finetune(
            model,
            ctx.train,
            recipe,
            teacher=teacher,
            lasso_scale=scales,
            progress=ctx.progress,
            device=ctx.device,
        )
        info.update(
            optimizer=recipe.optimizer,
            lr=recipe.lr,
            regularizers={
                "group_lasso": recipe.group_lasso,
                "l1": recipe.l1,
                "l2": recipe.l2,
                "scale_gradients": recipe.scale_gradients,
            },
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
        outputs[name], labels = model_outputs(model, ctx.test, device=ctx.device)
        model.cpu()
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
    from ..exporters.manifest import manifest_extra

    e = ctx.config.export
    written: list[Path] = []
    summary: dict = {}
    if not e.onnx:
        return written, {"onnx": "not requested"}
    variants = _variants(ctx)
    for stale in {"dense", "compressed"} - {name for name, _ in variants}:
        shutil.rmtree(ctx.out / "export" / stale, ignore_errors=True)  # an earlier run's model
    for name, model in variants:
        checkpoint = None if name == "dense" else ctx.out / "compress" / "model.safetensors"
        source = {
            "model": ctx.config.model,
            "checkpoint": str(checkpoint or ctx.config.checkpoint or "") or None,
            "variant": name,
        }
        plan = None if name == "dense" else read_json(ctx.out / "plan" / "plan.json", "plan")
        artifact = export(
            model,
            ctx.folder(f"export/{name}"),
            ctx.input_shape,
            opset=e.opset,
            verify_data=ctx.test,
            n_verify=e.verify_images,
            name=name,
            manifest_extra=manifest_extra(model, ctx.data_config, source, plan),
        )
        written += [artifact.onnx_path, artifact.manifest_path]
        summary[name] = {"max_abs_diff": artifact.parity.max_abs_diff}
        deployments = ctx.deployments(benchmark=True)
        if ctx.config.compress.strategy == "latency":
            deployments += ctx.deployments()
        quantized = _quantize(ctx, artifact.onnx_path, {d.artifact for d in deployments})
        if quantized:
            summary[name]["int8"] = quantized
            written += [artifact.onnx_path.with_name(n) for n in quantized]
        if e.tensorrt is not None:
            summary[name]["tensorrt"] = _build_engine(ctx, artifact.onnx_path, written)
    return written, summary


def _quantize(ctx: RunContext, onnx_path: Path, artifacts: set[str]) -> dict:
    """The INT8 models the int8 deployments run, made as the planner made and measured them:
    its recipe and its layers in float, calibrated on the same images (`int8_images`)."""
    from torch.utils.data import Subset

    from ..exporters.quantize import (
        DEFAULT_RECIPE,
        INT8_FILES,
        Int8Recipe,
        calibration_batches,
        int8_artifacts,
        int8_images,
    )

    planner_file = ctx.out / "plan" / "planner.json"
    planner = read_json(planner_file, "planner report") if planner_file.is_file() else {}
    chosen = planner.get("int8_recipe", {}).get("recipe")
    recipe = Int8Recipe.from_dict(chosen) if chosen else DEFAULT_RECIPE
    ranges, _ = int8_images(ctx.calib)
    batches = calibration_batches(Subset(ctx.calib, ranges), len(ranges))
    nncf_within = None
    if planner.get("nncf_max_drop") is not None:  # the planner's NNCF accuracy control, again
        val = ctx.val
        pairs = [(val[i][0].numpy(), int(val[i][1])) for i in range(len(val))]
        nncf_within = (pairs, planner["nncf_max_drop"])
    reports = int8_artifacts(
        onnx_path, artifacts, batches, recipe, planner.get("int8_float_nodes", []), nncf_within
    )
    return {
        INT8_FILES[a]: {"float_layers": len(r.excluded), "seconds": round(r.seconds, 1)}
        for a, r in reports.items()
    }


def _build_engine(ctx: RunContext, onnx_path: Path, written: list[Path]) -> str:
    from ..exporters.tensorrt_build import (
        BatchProfile,
        TensorRTUnavailable,
        build_engine,
        engine_info_path,
        engine_layers_path,
    )

    t = ctx.config.export.tensorrt
    engine = engine_path(onnx_path.parent, t.precision)
    for old in onnx_path.parent.glob("*.engine"):  # never benchmark an engine of another ONNX
        old.unlink()
        engine_info_path(old).unlink(missing_ok=True)
        engine_layers_path(old).unlink(missing_ok=True)
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
    written += [
        report.engine_path,
        engine_info_path(report.engine_path),
        engine_layers_path(report.engine_path),
    ]
    return f"built with TensorRT {report.tensorrt_version}"


def stage_benchmark(ctx: RunContext):
    from ..bench import benchmark, write_report
    from ..exporters.quantize import INT8_FILES

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
            **{a: folder / f for a, f in INT8_FILES.items() if (folder / f).is_file()},
            "engine": engine if engine is not None and engine.is_file() else None,
        }
    agree = evenly_spaced(ctx.test, b.agreement_images)  # None: the whole test part
    backends = b.backends
    if backends == ["auto"]:  # the dense model in every deployment here: the baselines
        backends = [d.name for d in ctx.deployments(benchmark=True)]
    # The deployment batch is always measured: the headline is read there.
    batches = sorted({*b.batches, ctx.config.compress.batch})
    suite = benchmark(
        variants,
        backends,
        batches,
        ctx.input_shape,
        data=agree if b.agreement_images != 0 else None,
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
