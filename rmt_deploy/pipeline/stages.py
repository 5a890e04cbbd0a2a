"""The pipeline's stages. Each takes the RunContext and returns (artifacts, summary); what a
later stage needs is read back from the output folder, so any stage can run in a new process.

A stage only translates its config sections into calls of the verbs (`rmt_deploy.verbs`), the
same calls the CLI's commands make, and records what they did."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import evenly_spaced
from ..errors import RmtDeployError
from ..layout import RunLayout, VariantFiles
from ..paths import read_json, write_json_atomic
from ..verbs import PlanRequest, RecoveryOptions
from .config import RunConfig


@dataclass
class _TestPool:
    """The test images (a folder or a user's loader) and the loader's own metric, if any."""

    images: Any
    metric: Any = None


@dataclass
class RunContext:
    config: RunConfig
    out: Path
    assets: Path
    progress: bool = True
    log: Callable[[str], None] = print

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.out)

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

    def _labelled(self, value: str, transform):
        """A folder whose labels are used (to train, to score): by class name where the model
        names its classes, as the CLI opens --data (`verbs.labelled_images`)."""
        from ..verbs import labelled_images

        return labelled_images(self.data_path(value), transform, self.dense, self.input_shape)

    @cached_property
    def train(self):
        from ..data import train_transform

        if self.config.data.train == "calib":  # recovery on the calibration images alone
            return self.calib
        return self._labelled(self.config.data.train, train_transform(self.data_config))

    @cached_property
    def _pool(self) -> _TestPool:
        """The images plans are validated and reported on, with the loader's metric."""
        from ..data import eval_transform, images_from_loader

        d = self.config.data
        if d.loader is None:
            return _TestPool(self._labelled(d.test, eval_transform(self.data_config)))
        limit = None
        if d.test_images is not None:
            limit = d.val_images + d.test_images + (d.calib_images if d.calib == "test" else 0)
        return _TestPool(*images_from_loader(d.loader, self.input_shape, limit))

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
        return split_parts(self._pool.images, sizes, seed=self.config.seed, where=where)

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
            metric = self._pool.metric
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
        f = self.config.finetune
        if f.steps > 0 and not self.train.labelled and f.distill_alpha == 0:
            raise RmtDeployError(
                f"fine-tuning on unlabelled images (data.train: {self.data_path(d.train)}) "
                "learns from the dense model: set finetune.distill_alpha > 0, use a labelled "
                "folder, or finetune.steps: 0"
            )
        self._check_image_files()
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
            check_metric(self.budget_metric, val.labelled, tuple(outputs.shape), outputs)

    def _check_image_files(self) -> None:
        """Every image file the run reads opens, checked before any stage (a corrupt or empty
        JPEG was found by the evaluate stage, after analyze, plan and compress): the test
        parts' images and a calibration folder's decoded, the training folder's headers read —
        all of it, as training draws its batches at random, but not decoded (seconds more on
        CIFAR-10's 50,000)."""
        from ..data import check_images
        from ..strategies import needs_training

        d = self.config.data
        for part in self.split.values():
            check_images(part, "data.test")
        if d.calib not in ("train", "test"):
            check_images(self.calib, "data.calib")
        trains = self.config.finetune.steps > 0 or needs_training(self.config.compress.strategy)
        if trains:
            check_images(self.train, "data.train", decode=False)
        elif d.calib == "train":
            check_images(self.calib, "data.train", decode=False)

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

        return CompressionPlan.load(self.layout.plan).load_payloads(self.layout.payloads)

    def shipped_dense(self) -> bool:
        """True when the plan compresses nothing (no plan fitted the budget): the dense model
        is what ships, and nothing is exported or benchmarked twice."""
        return not self.load_plan().compressed

    def compressed(self) -> nn.Module:
        from ..models import load_model

        return load_model(self.config.model, self.layout.compressed)


def stage_analyze(ctx: RunContext):
    from ..verbs import analyze_to

    spectrum, written = analyze_to(
        ctx.dense,
        ctx.folder("analyze"),
        name=ctx.config.model,
        plots=ctx.config.analyze.plots,
        progress=ctx.progress,
    )
    noise = [layer.fit.noise_fraction for layer in spectrum.fitted]
    summary = {"layers": len(spectrum.layers), "fitted": len(spectrum.fitted)}
    if noise:
        summary["mean_noise_share"] = sum(noise) / len(noise)
    return written, summary


def plan_request(ctx: RunContext) -> PlanRequest:
    """The compress section as the plan verb takes it, the same for every strategy."""
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
    return PlanRequest(
        c.strategy,
        c.sparsity,
        name=ctx.config.model,
        settings=settings,
        target=Target(targets, c.device, c.batch),
        budget=budget,
    )


def _spectrum(ctx: RunContext):
    from ..analysis import ModelSpectrum

    return ModelSpectrum.load(ctx.layout.spectrum)


def stage_plan(ctx: RunContext):
    from ..planner import BudgetNotMetError
    from ..verbs import plan_model
    from .planner_report import write_planner

    folder = ctx.folder("plan")
    written: list[Path] = []
    for stale in ("planner.json", "planner.md", "layer_tables.json"):  # an earlier search
        (folder / stale).unlink(missing_ok=True)
    try:
        the_plan = plan_model(
            ctx.dense,
            plan_request(ctx),
            train=lambda: ctx.train,
            calib=lambda: ctx.calib,
            heldout=ctx.val,
            spectrum=_spectrum(ctx),
        )
    except BudgetNotMetError as exc:
        written += write_planner(folder, exc.report, outcome=str(exc))
        if ctx.config.compress.require_compression:
            raise
        # No dead end: ship the best dense deployment, and say why.
        ctx.log(f"[plan] {exc}; shipping the dense model (--require-compression to fail)")
        the_plan = exc.fallback
    else:
        if the_plan.search is not None:
            written += write_planner(folder, the_plan.search)
    ctx.log(f"[plan] {the_plan.coverage_line()}")
    written += [
        the_plan.save(ctx.layout.plan),
        the_plan.save_payloads(ctx.layout.payloads),
    ]
    return written, {**the_plan.summary(), "coverage": the_plan.coverage_line()}


def recovery_options(ctx: RunContext) -> RecoveryOptions:
    """The finetune section as the recover verb takes it (the CLI's recovery flags)."""
    f = ctx.config.finetune
    return RecoveryOptions(
        steps=f.steps,
        bn_recal_images=f.bn_recal_images,
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


def _recipe(ctx: RunContext, model: nn.Module):
    """The recipe the compress stage fine-tunes `model` with."""
    from ..verbs import recovery_recipe

    return recovery_recipe(model, recovery_options(ctx))


def stage_compress(ctx: RunContext):
    from ..verbs import compress_and_recover, save_compressed

    the_plan = ctx.load_plan()
    ctx.folder("compress")  # made for the files below
    options = recovery_options(ctx)
    inputs = {
        "calib": lambda: ctx.calib,
        "train": lambda: ctx.train,
        "spectrum": partial(_spectrum, ctx),
        "device": ctx.device,
        "progress": ctx.progress,
    }
    ctx.layout.dense_finetuned.unlink(missing_ok=True)  # from an earlier config
    info, written, teacher = {}, [], None
    if options.steps > 0 and the_plan.compressed:
        teacher, info["dense_reference"], saved = _dense_reference(ctx, options, inputs)
        written.append(saved)
    # Nothing compressed (no plan fitted the budget): the dense model ships as it is.
    check = (lambda: ctx.val) if options.steps > 0 and len(ctx.val) else None
    model, info["compressed"] = compress_and_recover(
        ctx.dense, the_plan, options, check=check, teacher=teacher, **inputs
    )
    written.insert(0, save_compressed(model, the_plan, ctx.config.model, ctx.layout.compressed))
    written.append(write_json_atomic(ctx.layout.finetune, info))
    return written, {k: v.get("steps", 0) for k, v in info.items()}


def _dense_reference(ctx: RunContext, options, inputs: dict):
    """The same recovery on the dense model: the fair reference for the accuracy cost, and the
    teacher the compressed model then learns from — on images unlike its training data
    (CIFAR-10 as JPEG: +5 pp) the recovered dense model is the better teacher. It learns from
    the labels (from itself only where the images have none)."""
    from ..models import save_checkpoint
    from ..verbs import recover_

    reference = copy.deepcopy(ctx.dense)
    unlabelled = not getattr(ctx.train, "labelled", True)
    teacher = ctx.dense if options.distill_alpha > 0 and unlabelled else None
    info = recover_(reference, options, teacher=teacher, **inputs)
    meta = {"rmt_deploy.model": ctx.config.model}
    saved = save_checkpoint(reference, ctx.layout.dense_finetuned, meta)
    return reference.eval(), info, saved


def _test_outputs(ctx: RunContext) -> tuple[dict, torch.Tensor | None]:
    """(name → outputs on the test part, labels or None) of dense, compressed and the
    fine-tuned dense reference when there is one."""
    from ..budget import model_outputs
    from ..models import load_model

    models = {"dense": ctx.dense, "compressed": ctx.compressed()}
    reference_file = ctx.layout.dense_finetuned
    if reference_file.is_file():
        models["dense_finetuned"] = load_model(ctx.config.model, reference_file)
    outputs, labels = {}, None
    for name, model in models.items():
        outputs[name], labels = model_outputs(model, ctx.test, device=ctx.device)
        model.cpu()
    return outputs, labels


def _fidelity(ctx: RunContext, outputs: dict, reference: str, labels) -> dict:
    """Per model, its distance to the `reference` model: cosine always, disagreement and KL
    where the outputs are class scores (unless the model says it has no classifier)."""
    from ..budget import METRICS, Reference, measure

    declared = (getattr(ctx.dense, "pretrained_cfg", None) or {}).get("num_classes")
    classes = (
        outputs["dense"].dim() == 2
        and declared != 0
        and getattr(ctx.dense, "num_classes", None) != 0
    )
    ref = Reference(outputs[reference], labels)
    fidelity = {}
    for name, out in outputs.items():
        if name == reference:
            continue
        row = {"cosine_distance": measure(METRICS["cosine"], ref, out).mean}
        if classes:
            row["disagreement_pp"] = measure(METRICS["agreement"], ref, out).mean
            row["kl"] = measure(METRICS["kl"], ref, out).mean
        fidelity[name] = row
    return fidelity


def stage_evaluate(ctx: RunContext):
    """Every model on the test part: top-1 where there are labels, and always its fidelity to
    the dense model (top-1 agreement, cosine of the outputs, the budget's metric)."""
    from ..budget import Reference, measure, top1

    outputs, labels = _test_outputs(ctx)
    reference = "dense_finetuned" if "dense_finetuned" in outputs else "dense"
    ref = Reference(outputs[reference], labels)
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
        "fidelity": _fidelity(ctx, outputs, reference, labels),
        "budget_metric": metric.name,
        "budget_loss": None if budget_loss is None else budget_loss.mean,
        "budget_loss_se": None if budget_loss is None else budget_loss.se,
        "shipped": "compressed" if ctx.load_plan().compressed else "dense",
    }
    if labels is not None:
        scores = {name: top1(out, labels) for name, out in outputs.items()}
        summary.update(top1=scores, loss_pp=scores[reference] - scores["compressed"])
    ctx.folder("evaluate")  # made for the files below
    written = [
        write_json_atomic(ctx.layout.accuracy, summary),
        write_json_atomic(ctx.layout.split, ctx.split_record(names=True)),
    ]
    return written, summary


def stage_export(ctx: RunContext):
    e = ctx.config.export
    if not e.onnx:
        return [], {"onnx": "not requested"}
    variants = _variants(ctx)
    for stale in {"dense", "compressed"} - {name for name, _ in variants}:
        shutil.rmtree(ctx.out / "export" / stale, ignore_errors=True)  # an earlier run's model
    deployments = ctx.deployments(benchmark=True)
    if ctx.config.compress.strategy == "latency":
        deployments += ctx.deployments()
    artifacts = {d.artifact for d in deployments}
    written: list[Path] = []
    summary: dict = {}
    for name, model in variants:
        artifact = _export_variant(ctx, name, model)
        written += [artifact.onnx_path, artifact.manifest_path]
        summary[name] = {"max_abs_diff": artifact.parity.max_abs_diff}
        quantized = _quantize(ctx, artifact.onnx_path, artifacts)
        if quantized:
            summary[name]["int8"] = quantized
            written += [artifact.onnx_path.with_name(n) for n in quantized]
        if e.tensorrt is not None:
            summary[name]["tensorrt"] = _build_engine(ctx, artifact.onnx_path, written)
    return written, summary


def _export_variant(ctx: RunContext, name: str, model: nn.Module):
    """`export/<name>/model.onnx` with its manifest, verified on the test images."""
    from ..verbs import export_onnx

    checkpoint = None if name == "dense" else ctx.layout.compressed
    source = {
        "model": ctx.config.model,
        "checkpoint": str(checkpoint or ctx.config.checkpoint or "") or None,
        "variant": name,
    }
    plan = None if name == "dense" else read_json(ctx.layout.plan, "plan")
    return export_onnx(
        model,
        ctx.folder(f"export/{name}"),
        ctx.data_config,
        source=source,
        plan=plan,
        name=name,
        opset=ctx.config.export.opset,
        verify_data=ctx.test,
        n_verify=ctx.config.export.verify_images,
    )


def _quantize(ctx: RunContext, onnx_path: Path, artifacts: set[str]) -> dict:
    """The INT8 models the int8 deployments run, made as the planner made and measured them:
    its recipe and its layers in float, calibrated on the same images (`int8_images`)."""
    from ..exporters.quantize import Int8Recipe
    from ..layout import INT8_NAMES
    from ..verbs import export_int8, int8_calibration

    if not artifacts & set(INT8_NAMES):  # none asked for: only stale files are removed
        return export_int8(onnx_path, artifacts, [])
    planner_file = ctx.layout.planner
    planner = read_json(planner_file, "planner report") if planner_file.is_file() else {}
    chosen = planner.get("int8_recipe", {}).get("recipe")
    nncf_within = None
    if planner.get("nncf_max_drop") is not None:  # the planner's NNCF accuracy control, again
        val = ctx.val
        pairs = [(val[i][0].numpy(), int(val[i][1])) for i in range(len(val))]
        nncf_within = (pairs, planner["nncf_max_drop"])
    return export_int8(
        onnx_path,
        artifacts,
        int8_calibration(ctx.calib),
        recipe=Int8Recipe.from_dict(chosen) if chosen else None,
        float_nodes=planner.get("int8_float_nodes", []),
        nncf_within=nncf_within,
    )


def _build_engine(ctx: RunContext, onnx_path: Path, written: list[Path]) -> str:
    from ..exporters.tensorrt_build import (
        BatchProfile,
        TensorRTUnavailable,
        build_engine,
        engine_info_path,
        engine_layers_path,
    )

    t = ctx.config.export.tensorrt
    engine = VariantFiles(onnx_path.parent).engine(t.precision)
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
    from ..verbs import BenchSettings, auto_backends, benchmark_variants, variant_files

    b, device = ctx.config.benchmark, ctx.config.compress.device
    trt = ctx.config.export.tensorrt
    variants = {}
    for name, model in _variants(ctx):
        folder = ctx.out / "export" / name
        engine = VariantFiles(folder).engine(trt.precision) if trt is not None else None
        variants[name] = {"model": model, **variant_files(folder, engine)}
    # auto: the dense model in every deployment here, the baselines
    backends = auto_backends(device)[0] if b.backends == ["auto"] else b.backends
    settings = BenchSettings(
        backends,
        sorted({*b.batches, ctx.config.compress.batch}),  # the headline is read at the latter
        device=device,
        runs=b.runs,
        warmup_s=b.warmup_s,
        power=b.power,
    )
    agree = evenly_spaced(ctx.test, b.agreement_images)  # None: the whole test part
    suite, written = benchmark_variants(
        variants,
        settings,
        ctx.input_shape,
        ctx.folder("bench"),
        f"{ctx.config.model}: dense vs compressed",
        data=agree if b.agreement_images != 0 else None,
        reference="dense",
        progress=ctx.progress,
    )
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
