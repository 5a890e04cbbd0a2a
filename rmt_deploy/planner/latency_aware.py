"""The latency-aware planner: the fastest engine within a budget, measured on this machine.

1. **Baselines.** The dense model is exported once and measured in every deployment this
   machine offers (ONNX Runtime fp32 and INT8, OpenVINO at its default and f32, bf16 and INT8
   where it can), interleaved; each is validated on the held-out images — INT8 can cost more
   than the budget, and then the layers whose quantization hurts most stay in float.
2. **The spectrum proposes, the data decides.** Every Linear/Conv2d-like layer gets options:
   dense and a few ranks (never below the MP edge, multiples of 8, below break-even), each
   with its output error cross-validated on calibration images (`calibration.py`) and a
   sensitivity measured on calibration images (`allocate.py`).
3. **The target's clock arbitrates.** Each option is timed on each deployment that keeps the
   budget, in context (`layer_table.py`); a dynamic program picks per layer the options that
   save the most latency for each level of predicted damage.
4. **Validated, then timed whole.** The allocations are validated one-shot on the held-out
   images (the budget's metric, with its 95 % upper bound); the fastest predicted ones within
   budget are exported and timed as whole models, interleaved with the dense baselines over
   repeated rounds. The fastest *measured* engine within budget wins — dense, if no plan beats
   the best dense deployment by `min_speedup` with 95 % confidence, timed head to head.

Predictions are the per-layer table's savings scaled by one factor per deployment, measured
on a whole-model probe (the most aggressive allocation): layers timed in small graphs do not
add up to the whole model, and by how much depends on the runtime (OpenVINO's whole-graph
compilation saves less than its small graphs promise).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..analysis import analyze
from ..budget import (
    BudgetMetric,
    Loss,
    Reference,
    check_metric,
    measure,
    model_outputs,
    resolve_metric,
)
from ..calibration import WhitenedFactors, collect_input_stats, output_error, whitened_factors
from ..compress import compress_
from ..data import TensorImages, evenly_spaced
from ..deploy import DEPLOYMENTS, Deployment, resolve
from ..devices import resolve_device
from ..errors import RmtDeployError
from ..exporters.quantize import RecipeChoice
from ..layers import nm_mask, unfuse_attention_
from ..layers.semi_structured import semi_structured_incompatibility
from ..plan import (
    CompressionPlan,
    LayerPlan,
    dense_entry,
    example_batch,
    factorized_entry,
    mask_entry,
)
from ..targets import find_targets
from .allocate import Allocation, allocate, refine_sensitivity
from .layer_table import (
    LayerEntry,
    LayerOption,
    LayerTable,
    TableMismatchError,
    layer_options,
    machine_signature,
    measure_options,
    model_fingerprint,
)
from .timing import paired_speedup, spread, time_interleaved

# Damage caps (predicted relative output error of the whole model) the DP is solved for.
DAMAGE_CAPS = tuple(1e-5 * 2**k for k in range(18))


class BudgetNotMetError(RmtDeployError):
    """No compressed plan keeps the held-out loss within the budget. `fallback` is the plan
    that keeps every layer dense, each with the reason: what ships instead."""

    def __init__(self, message: str, report: LatencyPlanReport, fallback: CompressionPlan):
        super().__init__(message)
        self.report = report
        self.fallback = fallback

    def __reduce__(self):  # it crosses process boundaries (the plan stage runs in its own)
        return (type(self), (str(self), self.report, self.fallback))


@dataclass
class Candidate:
    """One allocation on one deployment: what the table predicts and what validation says."""

    deployment: str
    damage_cap: float
    lowrank_layers: int
    nm24_layers: int
    params_after: int
    damage: float  # predicted relative output error of the whole model
    predicted_ms: float  # the table's saving, scaled by the deployment's probe calibration
    predicted_speedup: float  # against the dense model on the same deployment
    table_ms: float | None = None  # the table's saving as it is (uncalibrated)
    heldout_loss: float | None = None
    heldout_loss_se: float | None = None
    heldout_loss_upper: float | None = None
    heldout_top1: float | None = None
    layer_error: float | None = None  # fixed-ε plans only


@dataclass
class Engine:
    """A whole model on a deployment, timed interleaved with the others: a baseline (dense) or
    a finalist (a validated plan)."""

    label: str
    deployment: str
    candidate: int | None  # index into the report's candidates; None: the dense model
    predicted_ms: float | None = None
    measured_ms: float | None = None
    q1_ms: float | None = None
    q3_ms: float | None = None
    heldout_loss: float | None = None
    heldout_loss_se: float | None = None
    heldout_loss_upper: float | None = None
    within_budget: bool = True
    note: str = ""
    # Head to head against the best dense engine: SpeedupEstimate.to_dict() + "against".
    confirmed: dict | None = None

    def confirms(self, min_speedup: float) -> bool:
        return self.confirmed is not None and self.confirmed["low"] >= min_speedup


@dataclass
class LatencyPlanReport:
    deployments: list[str]
    skipped_deployments: dict[str, str]
    batch: int
    budget_metric: str | None
    budget: float | None
    dense_heldout_top1: float | None = None
    heldout_images: int = 0
    latency_target: float | None = None
    baselines: list[Engine] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    finalists: list[Engine] = field(default_factory=list)
    chosen: str | None = None  # the label of the engine that ships
    chosen_deployment: str | None = None
    outcome: str = "compressed"  # or why the dense model ships
    calibration: list[dict] = field(default_factory=list)
    # INT8: the recipe chosen (and every recipe's output error), the layers kept in float, each
    # step of the mixed-precision search, and each layer's measured effect.
    int8_recipe: dict = field(default_factory=dict)
    int8_float_nodes: list[str] = field(default_factory=list)
    int8_mixed: list[dict] = field(default_factory=list)
    int8_effects: dict = field(default_factory=lambda: {"layers": []})
    # NNCF's model, when the default one was over budget: made by its accuracy control
    nncf_accuracy_control: str = ""
    nncf_max_drop: float | None = None
    # Per deployment: the probe's predicted and measured share of the dense time, and κ.
    calibrations: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # The per-layer tables and whole-model timings (what `table=` reuses); not in to_dict.
    tables: dict = field(default_factory=dict, repr=False, compare=False)

    def engine(self, label: str | None) -> Engine | None:
        for e in [*self.baselines, *self.finalists]:
            if e.label == label:
                return e
        return None

    def best_baseline(self) -> Engine | None:
        within = [e for e in self.baselines if e.within_budget and e.measured_ms is not None]
        return min(within, key=lambda e: e.measured_ms) if within else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("tables")
        return data


def _top1(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((outputs.argmax(dim=1) == labels).float().mean())


def _images(data: Dataset) -> torch.Tensor:
    return torch.cat([x for x, _ in DataLoader(data, batch_size=100, num_workers=0)])


class _Engines:
    """Builds and runs whole models on deployments: ONNX files (and their INT8 models, made by
    the recipe chosen on the dense model, with the layers chosen to stay in float) in a work
    folder, runners, held-out outputs."""

    def __init__(self, folder: Path, input_shape, calib: Dataset, threads: int):
        from ..exporters.quantize import int8_images, to_batches

        self.folder, self.input_shape, self.threads = folder, tuple(input_shape), threads
        ranges, check = int8_images(calib)
        self.calib = to_batches(_images(Subset(calib, ranges)))
        self.check = to_batches(_images(Subset(calib, check))) if check else self.calib[:4]
        self.recipe: RecipeChoice | None = None
        self.float_nodes: list[str] = []

    def files(self, model: nn.Module, tag: str, deployments=()) -> dict:
        folder = self.folder / tag
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.onnx"
        if not path.is_file():
            from ..exporters import export

            export(copy.deepcopy(model), folder, self.input_shape, n_verify=4, name=tag)
        files = {"model": model, "onnx": path}
        artifacts = {d.artifact for d in deployments}
        if "onnx_int8" in artifacts:
            files["onnx_int8"] = self._qdq(path, folder)
        if "openvino_int8" in artifacts:
            files["openvino_int8"] = self.nncf(path, folder)
        return files

    def _qdq(self, path: Path, folder: Path) -> Path:
        """model.int8.onnx: the full QDQ model (the recipe picked on the first model asked
        for), with the float layers put back (model.int8.full.onnx keeps the full one)."""
        from ..exporters.quantize import choose_recipe, preprocess, quantize_int8

        target, full = folder / "model.int8.onnx", folder / "model.int8.full.onnx"
        if target.is_file():
            return target
        if self.recipe is None:
            self.recipe = choose_recipe(path, folder, self.calib, self.check)
            shutil.copyfile(self.recipe.path, full)
        else:
            quantize_int8(path, full, self.calib, recipe=self.recipe.recipe)
        preprocess(path, folder / "model.prepared.onnx")
        self.apply_float(folder)
        return target

    def apply_float(self, folder: Path) -> None:
        """Rewrite folder/model.int8.onnx with `float_nodes` (those it has) in float."""
        from ..exporters.qdq import keep_float_present

        full, target = folder / "model.int8.full.onnx", folder / "model.int8.onnx"
        keep_float_present(full, folder / "model.prepared.onnx", self.float_nodes, target)

    def nncf(self, path: Path, folder: Path) -> Path:
        from ..exporters.nncf_int8 import nncf_int8

        xml = folder / "model.nncf.xml"
        if not xml.is_file():
            nncf_int8(path, xml, self.calib)
        return xml

    def runner(self, deployment: Deployment, files: dict):
        from ..bench.backends import prepare

        options = {"threads": self.threads}
        if deployment.runtime == "torch":
            options.update(device=deployment.device, precision=deployment.precision)
            return prepare("torch", files["model"], None, **options).run
        return prepare(
            deployment.name,
            None,
            files["onnx"],
            onnx_int8=files.get("onnx_int8"),
            openvino_int8=files.get("openvino_int8"),
            **options,
        ).run

    @staticmethod
    def outputs(run, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
        return torch.cat(
            [
                torch.from_numpy(np.asarray(run(images[i : i + batch].numpy())).copy()).float()
                for i in range(0, len(images), batch)
            ]
        )


def _exact(deployment: Deployment) -> bool:
    """Deployments that compute what PyTorch fp32 computes (validated in PyTorch)."""
    from ..deploy import openvino_default_precision

    if deployment.precision in ("fp32", "f32"):
        return deployment.device == "cpu"
    return deployment.precision == "default" and openvino_default_precision() == "f32"


def latency_plan(
    model: nn.Module,
    calib: Dataset,
    *,
    heldout: Dataset | None = None,
    targets: list[str] | str | None = None,
    backend: str | None = None,
    device: str = "cpu",
    batch: int = 8,
    layer_error: float | None = None,
    accuracy_budget: float | None = None,
    budget_metric: str | BudgetMetric = "top1",
    latency_target: float | None = None,
    nm24: bool | None = None,
    min_gain: float = 0.02,
    min_speedup: float = 1.03,
    plan_within: float = 1.5,
    calib_images: int = 512,
    sensitivity_images: int = 32,
    rank_multiple: int = 8,
    finalists: int = 2,  # per deployment (as strategy latency)
    rounds: int = 5,
    runs: int = 10,
    table: str | Path | None = None,
    edge_floor: bool = True,
    sensitivity_prior: str = "none",
    refine: bool = True,
    filter_fn=None,
    name: str = "",
    progress: bool = True,
) -> tuple[CompressionPlan, LatencyPlanReport]:
    """Plan `model` for the fastest deployment within budget at `batch`.

    `targets`: deployment names or "auto" (every one this machine runs; those whose dense model
    is more than `plan_within` times slower than the fastest are measured, not planned for);
    `backend` is the
    single-deployment spelling. With `accuracy_budget` (the most `budget_metric` may lose on
    `heldout`) the fastest measured engine within it is chosen; without, every layer takes its
    fastest option with error ≤ `layer_error` on the first target. `latency_target` (×, against
    the best dense baseline) prefers the least damaging plan predicted to reach it. `table`: a
    JSON file of per-layer tables and whole-model timings, reused when it matches this model,
    deployment, batch and machine (the same config on the same table chooses the same plan),
    written otherwise. `edge_floor`, `sensitivity_prior` ("none" or "seb": SEB's layer weights
    divide the sensitivities) and `refine` (measure the sensitivities on calibration images;
    without, every layer counts alike) switch the RMT ingredients, for ablations."""
    if sensitivity_prior not in ("none", "seb"):
        raise RmtDeployError(f"the sensitivity prior is none or seb, got {sensitivity_prior!r}")
    if targets is None:
        targets = [backend] if backend else "auto"
    metric: BudgetMetric | None = None
    if accuracy_budget is not None:
        if heldout is None:
            raise RmtDeployError("a budget needs held-out images to validate plans on")
        if not 0 <= accuracy_budget < float("inf"):
            raise RmtDeployError(f"the budget must be ≥ 0, got {accuracy_budget}")
        metric = resolve_metric(budget_metric)
    elif layer_error is None:
        layer_error = 0.02
    if layer_error is not None and not layer_error > 0:
        raise RmtDeployError("layer errors must be positive")
    if latency_target is not None and not latency_target > 0:
        raise RmtDeployError(f"the latency target must be a speedup > 0, got {latency_target}")
    deployments, skipped = resolve(targets, device)
    deployments = _enough_for_int8(deployments, skipped, calib, targets)
    on_gpu = any(d.device == "cuda" for d in deployments)
    nm24 = on_gpu if nm24 is None else nm24
    if nm24 and not on_gpu:
        raise RmtDeployError("2:4 candidates are timed on a CUDA deployment")
    threads = torch.get_num_threads()
    unfuse_attention_(model)
    model.eval()
    example = example_batch(calib, batch)
    if example.shape[0] < batch:  # a tiny calibration set: repeat images to reach the batch
        reps = (batch + example.shape[0] - 1) // example.shape[0]
        example = example.repeat(reps, *([1] * (example.dim() - 1)))[:batch]
    found = find_targets(model, filter_fn, example[:2])
    if not found.views:
        raise RmtDeployError("no Linear/Conv2d layer to plan (check the filter)")
    targets_ = dict(found.items())
    eligible = {n: v for n, v in found.views.items() if v.groups == 1}
    report = LatencyPlanReport(
        [d.name for d in deployments],
        skipped,
        batch,
        metric.name if metric else None,
        accuracy_budget,
        latency_target=latency_target,
    )
    reference: Reference | None = None
    heldout_images = None
    if metric is not None:
        heldout_images = _images(heldout)
        outputs, labels = model_outputs(model, heldout)
        check_metric(metric, labels is not None, tuple(outputs.shape))
        reference = Reference(outputs, labels)
        report.heldout_images = len(heldout_images)
        if labels is not None:
            report.dense_heldout_top1 = _top1(outputs, labels)
    loader = DataLoader(
        calib, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    spectrum = analyze(model, lambda m, q: q in eligible)
    # The MP edge is the rank floor (the spikes are signal); without it every rank is open.
    spikes = {
        layer.name: layer.fit.n_spikes if edge_floor else 0
        for layer in spectrum.layers
        if layer.fit
    }
    prior = {}
    if sensitivity_prior == "seb":  # SEB's layer weights: the layers it prunes harder cost less
        from ..scores import seb_weights

        prior = seb_weights(spectrum, list(eligible), 0.5)
    # Calibration, sensitivities and PyTorch validation run on `device`; exports from the CPU.
    compute = resolve_device("cpu" if device.startswith("cpu") else device)
    stats = collect_input_stats(
        model, eligible, loader, calib_images, progress=progress, device=compute
    )
    factors: dict[str, WhitenedFactors] = {
        n: whitened_factors(v.weight, stats[n]) for n, v in eligible.items()
    }
    model.cpu()
    report.calibration = [
        {
            "name": n,
            "samples": f.samples,
            "inputs": f.dim,
            "shrinkage": round(f.shrinkage, 4),
            "images": stats[n].images,
        }
        for n, f in factors.items()
    ]
    # Evenly spaced calibration images (a folder sorted by class keeps every class): INT8
    # calibration (128, as onnxruntime's examples) and the sensitivity probe.
    calib_tensor = _images(evenly_spaced(calib, max(sensitivity_images, 128)))
    from .timing import capture_input_shapes

    shapes = capture_input_shapes(model, targets_, example)

    def entries_for(deployment: Deployment) -> list[LayerEntry]:
        entries = []
        for lname, view in found.views.items():
            m, n = view.matrix_shape
            if lname not in factors:
                entries.append(
                    LayerEntry(
                        lname,
                        view.kind,
                        list(shapes[lname]),
                        [m, n],
                        0,
                        [LayerOption("dense", params=m * n)],
                        note="grouped convolution",
                    )
                )
                continue
            nm24_error = None
            if (
                nm24
                and deployment.device == "cuda"
                and view.kind == "linear"
                and semi_structured_incompatibility(view.module) is None
            ):
                nm24_error = output_error(
                    view.weight, view.weight * nm_mask(view.weight), stats[lname].covariance()
                )
            options = layer_options(
                view, factors[lname], spikes.get(lname, 0), rank_multiple, nm24_error
            )
            entries.append(
                LayerEntry(
                    lname, view.kind, list(shapes[lname]), [m, n], spikes.get(lname, 0), options
                )
            )
        return entries

    fingerprint = model_fingerprint(model)
    machine = machine_signature(threads)
    saved = _load_tables(table, fingerprint, batch, machine)
    tables: dict[str, LayerTable] = {}
    whole_cache: dict[str, dict] = saved.get("whole", {})

    def build_plan(
        allocation: Allocation | None, label: str, deployment: str | None, category: str = "budget"
    ):
        table_ = tables.get(deployment or "")
        dense_ms = {e.name: e.dense.ms for e in table_.layers} if table_ else {}
        return _to_plan(
            allocation,
            targets_,
            found,
            factors,
            label,
            deployment,
            batch,
            name,
            rank_multiple,
            dense_ms,
            category,
        )

    with tempfile.TemporaryDirectory(prefix="rmt-plan-") as tmp:
        engines = _Engines(Path(tmp), example.shape[1:], calib, threads)
        dense_files = engines.files(model, "dense", deployments)
        if engines.recipe is not None:
            report.int8_recipe = engines.recipe.to_dict()

        # Fixed per-layer error: no budget, no whole-model search.
        if metric is None:
            deployment = deployments[0]
            tables[deployment.name] = _table(
                saved,
                deployment,
                fingerprint,
                batch,
                machine,
                entries_for,
                found,
                threads,
                progress,
            )
            choices = {}
            for entry in tables[deployment.name].layers:
                fits = [
                    o
                    for o in entry.options[1:]
                    if o.error <= layer_error
                    and o.ms is not None
                    and o.ms < entry.dense.ms * (1 - min_gain)
                ]
                choices[entry.name] = min(fits, key=lambda o: o.ms) if fits else entry.dense
            saving = sum(
                tables[deployment.name].entry(n).dense.ms - o.ms for n, o in choices.items()
            )
            allocation = Allocation(choices, saving, 0.0)
            dense_ms = sum(e.dense.ms for e in tables[deployment.name].layers)
            cand = _candidate(deployment.name, 0.0, allocation, dense_ms, targets_)
            cand.layer_error = layer_error
            report.candidates.append(cand)
            report.chosen, report.chosen_deployment = "plan 0", deployment.name
            plan = build_plan(allocation, f"fixed layer error {layer_error}", deployment.name)
            plan.config.update(layer_error=layer_error)
            report.tables = _save_tables(table, tables, whole_cache, fingerprint, batch, machine)
            return plan, report

        # 1. Baselines: the dense model in every deployment, validated and timed.
        x = example.numpy().astype(np.float32)
        report.baselines = [Engine(f"dense / {d.name}", d.name, None) for d in deployments]
        runners = _validate_baselines(
            deployments,
            report.baselines,
            engines,
            dense_files,
            metric,
            reference,
            heldout_images,
            accuracy_budget,
        )
        over = [
            d
            for d, e in zip(deployments, report.baselines, strict=True)
            if d.quantized and not e.within_budget
        ]
        if over:  # INT8 costs too much: the layers whose float saves most go back to float
            runners.update(
                _mixed_precision(
                    engines, dense_files, over, deployments, report, metric, reference,
                    heldout_images, accuracy_budget, progress,
                )  # fmt: skip
            )
        inputs = {label: x for label in runners}
        _time_engines(report.baselines, runners, inputs, rounds, runs, whole_cache, progress)

        # 2–3. Per-layer tables and allocations for every deployment whose dense model fits.
        # A deployment whose dense model is much slower than the best dense one would need a
        # plan that speeds it up by that much just to tie: it is not planned for. The limit is
        # loose (×1.5) because this early timing is noisy and forms rank differently once
        # factorized: with ×1.15 a ViT run dropped ORT fp32 as ×1.18 the INT8 model (×0.97
        # when timed again) and shipped ×1.29 where fp32 low rank gives ×2.2.
        fastest = min(e.measured_ms for e in report.baselines if e.within_budget)
        plannable = []
        for d, e in zip(deployments, report.baselines, strict=True):
            if d.artifact == "openvino_int8":
                report.notes.append(
                    f"{d.name} is measured as a baseline, not planned for: NNCF quantizes a whole "
                    "model; low rank in OpenVINO INT8 is planned on openvino-int8 (the QDQ file)"
                )
            elif e.within_budget and e.measured_ms <= plan_within * fastest:
                plannable.append(d)
            elif e.within_budget:
                report.notes.append(
                    f"{d.name} not planned for: its dense model is ×{e.measured_ms / fastest:.2f} "
                    f"the fastest dense deployment (limit ×{plan_within})"
                )
        calib_sens = calib_tensor[:: max(1, len(calib_tensor) // sensitivity_images)][
            :sensitivity_images
        ]
        # Measured sensitivities come from the table when it has them; unrefined, all alike.
        sensitivities: dict[str, float | None] | None = saved.get("sensitivity") if refine else None
        finalist_pool: list[tuple[Deployment, int, Allocation]] = []
        for deployment in plannable:
            tables[deployment.name] = _table(
                saved,
                deployment,
                fingerprint,
                batch,
                machine,
                entries_for,
                found,
                threads,
                progress,
            )
            entries = tables[deployment.name].layers
            if sensitivities is None:
                if refine:
                    model.to(compute)
                    refine_sensitivity(model, entries, found.views, factors, calib_sens, progress)
                    model.cpu()
                sensitivities = {
                    e.name: e.sensitivity if refine else 1.0 for e in entries if len(e.options) > 1
                }
            for entry in entries:
                raw = sensitivities.get(entry.name)
                entry.sensitivity = None if raw is None else raw / prior.get(entry.name, 1.0)
            baseline = next(e for e in report.baselines if e.deployment == deployment.name)
            allocations = [
                a
                for a in allocate(entries, list(DAMAGE_CAPS), min_gain)
                if any(o.form != "dense" for o in a.choices.values())
            ]
            kappa = _calibrate(
                allocations,
                deployment,
                baseline,
                runners[baseline.label],
                model,
                engines,
                build_plan,
                x,
                rounds,
                runs,
                whole_cache,
                report,
            )
            validated = _validate_search(
                allocations,
                deployment,
                baseline,
                kappa,
                model,
                engines,
                metric,
                reference,
                heldout_images,
                accuracy_budget,
                report,
                targets_,
                build_plan,
                progress,
                compute,
            )
            finalist_pool += [(deployment, i, allocations[j]) for i, j in validated[:finalists]]

        # 4. Finalists, timed whole with the baselines.
        runners = {e.label: runners[e.label] for e in report.baselines}
        inputs = {label: x for label in runners}
        for deployment, index, allocation in finalist_pool:
            cand = report.candidates[index]
            label = f"plan {index} / {deployment.name}"
            plan = build_plan(allocation, label, deployment.name)
            trial = compress_(copy.deepcopy(model), plan)
            files = engines.files(trial, f"plan{index}", [deployment])
            engine = Engine(label, deployment.name, index, cand.predicted_ms)
            engine.heldout_loss, engine.heldout_loss_se = cand.heldout_loss, cand.heldout_loss_se
            engine.heldout_loss_upper = cand.heldout_loss_upper
            report.finalists.append(engine)
            runners[label], inputs[label] = engines.runner(deployment, files), x
        _time_engines(
            [*report.baselines, *report.finalists],
            runners,
            inputs,
            rounds,
            runs,
            whole_cache,
            progress,
            keys={e.label: _whole_key(e, report) for e in [*report.baselines, *report.finalists]},
        )
        best_dense = report.best_baseline()
        if latency_target is None and best_dense is not None:
            _confirm(report, best_dense, runners, x, rounds, runs, min_speedup, whole_cache)
    report.tables = _save_tables(
        table, tables, whole_cache, fingerprint, batch, machine, sensitivities
    )

    # 5. The fastest measured engine within budget ships.
    pool = [e for e in [*report.baselines, *report.finalists] if e.within_budget]
    best_dense = report.best_baseline()
    if latency_target is not None and best_dense is not None:
        reaching = [
            e for e in report.finalists if best_dense.measured_ms / e.measured_ms >= latency_target
        ]
        if reaching:
            pool = [min(reaching, key=lambda e: e.heldout_loss_upper or 0.0)]
        else:
            report.notes.append(
                f"no plan reaches the latency target ×{latency_target} over "
                f"{best_dense.label}; the fastest within budget ships"
            )
    if latency_target is None:  # a plan ships only when its head-to-head speedup is sure
        pool = [e for e in pool if e.candidate is None or e.confirms(min_speedup)]
    if not pool:
        raise RmtDeployError(
            "no deployment of the dense model keeps the budget (INT8 only?): "
            + "; ".join(f"{e.label}: {e.note or e.heldout_loss_upper}" for e in report.baselines)
        )
    chosen = min(pool, key=lambda e: e.measured_ms)
    # Within the noise of a shared machine (±2 % interleaved) a plan is no win: it must beat
    # the best dense deployment by `min_speedup`, or the dense model ships.
    if (
        chosen.candidate is not None
        and best_dense is not None
        and latency_target is None
        and best_dense.measured_ms / chosen.measured_ms < min_speedup
    ):
        chosen = best_dense
    report.chosen, report.chosen_deployment = chosen.label, chosen.deployment
    if chosen.candidate is None:
        tried = [c for c in report.candidates if c.heldout_loss_upper is not None]
        # why every layer stays dense, as the plan counts it: over budget, or nothing faster
        category = "budget" if tried and not report.finalists else "not_faster"
        if not report.finalists:
            why = (
                "no layer is measurably faster in a compressed form on "
                f"{', '.join(d.name for d in plannable) or 'any deployment'} at batch {batch}"
                if not tried
                else _over_budget_why(metric, accuracy_budget, tried)
            )
        elif any(e.confirmed for e in report.finalists):
            first = next(e for e in report.finalists if e.confirmed)
            c = first.confirmed
            why = (
                f"no plan within budget beats the best dense deployment by ×{min_speedup} with "
                f"95 % confidence, timed head to head: {first.label} ×{c['median']:.3f} "
                f"(95 % lower bound ×{c['low']:.3f}) over {c['against']}"
            )
        else:
            fastest = min(report.finalists, key=lambda e: e.measured_ms)
            why = (
                f"no plan within budget beats the best dense deployment by ×{min_speedup} "
                f"measured whole: {chosen.label} {chosen.measured_ms:.2f} ms vs the fastest "
                f"plan ({fastest.label}) {fastest.measured_ms:.2f} ms"
            )
        report.outcome = why
        fallback = build_plan(None, why, chosen.deployment, category)
        raise BudgetNotMetError(why, report, fallback)
    allocation = next(
        a for d, i, a in finalist_pool if i == chosen.candidate and d.name == chosen.deployment
    )
    return build_plan(allocation, chosen.label, chosen.deployment), report


def _set_loss(engine: Engine, loss: Loss, budget: float) -> None:
    engine.heldout_loss, engine.heldout_loss_se = loss.mean, loss.se
    engine.heldout_loss_upper = loss.upper
    engine.within_budget = loss.upper <= budget


def _validate_baselines(
    deployments, baselines, engines, files, metric, reference, images, budget
) -> dict:
    """Each dense deployment's loss on the held-out images (exact ones: none); its runners."""
    runners = {}
    for deployment, engine in zip(deployments, baselines, strict=True):
        run = engines.runner(deployment, files)
        if _exact(deployment):
            loss = Loss(0.0, 0.0, len(images))
        else:
            loss = measure(metric, reference, engines.outputs(run, images))
        _set_loss(engine, loss, budget)
        runners[engine.label] = run
    return runners


def _enough_for_int8(deployments, skipped: dict, calib: Dataset, targets) -> list:
    """The deployments minus the INT8 ones when the calibration set is too small for INT8:
    an error when they were asked for by name, a reason in `skipped` under `auto`."""
    from ..exporters.quantize import MIN_CALIBRATION_IMAGES

    if len(calib) >= MIN_CALIBRATION_IMAGES:
        return deployments
    int8 = [d.name for d in deployments if d.quantized]
    why = (
        f"INT8 calibration needs at least {MIN_CALIBRATION_IMAGES} images and the calibration "
        f"set has {len(calib)}"
    )
    if int8 and targets not in ("auto", ["auto"]):
        raise RmtDeployError(f"{why}: give more (data.calib_images) or drop {', '.join(int8)}")
    skipped.update(dict.fromkeys(int8, why))
    return [d for d in deployments if not d.quantized]


def _ladder(count: int) -> list[int]:
    """How many layers to try in float: 1, 2, 4, … and all of them."""
    sizes, k = [], 1
    while k < count:
        sizes.append(k)
        k *= 2
    return [*sizes, count] if count else []


def _mixed_precision(
    engines, files, over, deployments, report, metric, reference, images, budget, progress
) -> dict:
    """INT8 deployments over budget: the QDQ ones get layers back in float by measurement
    (`_float_ladder`), NNCF's model is remade by NNCF's own accuracy control. Returns the
    re-validated runners; the report keeps every step."""
    baselines = {e.deployment: e for e in report.baselines}
    first = {d.name: baselines[d.name].heldout_loss_upper for d in over}
    qdq = [d for d in deployments if d in over and d.artifact == "onnx_int8"]
    nncf = [d for d in deployments if d in over and d.artifact == "openvino_int8"]
    runners: dict = {}
    checks = (metric, reference, images, budget)
    if qdq:
        runners.update(_float_ladder(engines, files, qdq, report, baselines, checks, progress))
    for d in nncf:
        runners.update(_nncf_within(engines, files, d, report, baselines[d.name], checks))
    for d in over:
        e = baselines[d.name]
        how = (
            f"with {len(engines.float_nodes)} of {len(report.int8_effects['layers'])} quantized "
            "layers in float"
            if d in qdq
            else report.nncf_accuracy_control or "NNCF's accuracy control could not be used"
        )
        e.note = (
            f"full INT8 lost {first[d.name]:.3g} (95 % bound); {how}: {e.heldout_loss_upper:.3g}"
            + ("" if e.within_budget else " — still over budget: dropped")
        )
    return runners


def _float_ladder(engines, files, chosen, report, baselines, checks, progress) -> dict:
    """Layers back in float, the ones whose float saves the most output error first (each
    measured alone on the check images, by toggling its Q/DQ), 1, 2, 4, … of them until a QDQ
    deployment in `chosen` fits the budget. That smallest set is kept for all of them (they
    run one file): every further float layer slows INT8 down (ONNX Runtime's mixed model of
    EfficientNet-Lite1 with 16 float layers ran slower than its fp32 one), so a deployment
    that does not fit by then is dropped rather than made to fit at the others' expense."""
    from ..exporters.qdq import float_effects

    folder = Path(files["onnx"]).parent
    full_error, effects = float_effects(
        folder / "model.int8.full.onnx", folder / "model.prepared.onnx", engines.check, progress
    )
    report.int8_effects = {"full_error": full_error, "layers": [e.to_dict() for e in effects]}
    ranked = [e.node for e in effects if e.gain > 0]
    runners: dict = {}
    for k in _ladder(len(ranked)):
        engines.float_nodes = ranked[:k]
        engines.apply_float(folder)
        runners.update(
            _validate_baselines(
                chosen, [baselines[d.name] for d in chosen], engines, files, *checks
            )
        )
        report.int8_mixed.append(
            {
                "float_layers": k,
                "nodes": ranked[:k],
                "loss_upper": {d.name: baselines[d.name].heldout_loss_upper for d in chosen},
            }
        )
        if any(baselines[d.name].within_budget for d in chosen):
            break
    report.int8_float_nodes = list(engines.float_nodes)
    return runners


def _nncf_within(engines, files, deployment, report, baseline, checks) -> dict:
    """NNCF's model remade by `nncf.quantize_with_accuracy_control` on the held-out images,
    allowed the mean top-1 drop that leaves room for the 95 % bound (top-1 budgets only)."""
    from ..exporters.nncf_int8 import nncf_int8_within

    metric, reference, images, budget = checks
    # The bound is mean + 1.645 se: the mean may drop by what the spread leaves of the budget,
    # and by a tenth of it at least (fewer changed answers also narrow the spread).
    margin = baseline.heldout_loss_upper - baseline.heldout_loss
    max_drop = max(budget - margin, budget / 10)
    if metric.name != "top1" or reference.labels is None:
        return {}
    validation = list(zip(images.numpy(), reference.labels.tolist(), strict=True))
    path = Path(files["onnx"])
    nncf_int8_within(path, path.parent / "model.nncf.xml", engines.calib, validation, max_drop)
    report.nncf_accuracy_control = f"NNCF accuracy control at a {max_drop:.2f} pp drop"
    report.nncf_max_drop = max_drop
    return _validate_baselines([deployment], [baseline], engines, files, *checks)


def _whole_key(engine: Engine, report: LatencyPlanReport) -> str:
    if engine.candidate is None:
        return f"dense|{engine.deployment}"
    cand = report.candidates[engine.candidate]
    return f"{engine.deployment}|{cand.damage_cap:.3e}|{cand.params_after}"


def _time_engines(engines, runners, inputs, rounds, runs, cache, progress, keys=None) -> None:
    """Whole-model latency of every engine, interleaved over rounds; reused from `cache` (a
    saved table) when every engine is there, so a replan on the same table decides alike."""
    keys = keys or {e.label: f"dense|{e.deployment}" for e in engines}
    if all(keys[e.label] in cache for e in engines):
        measured = {e.label: cache[keys[e.label]] for e in engines}
    else:
        wanted = {e.label: runners[e.label] for e in engines}
        samples = {}
        for _ in tqdm(range(1), desc="time engines", disable=not progress):
            samples = time_interleaved(wanted, inputs, rounds, runs)
        measured = {label: spread(values) for label, values in samples.items()}
        for e in engines:
            cache[keys[e.label]] = measured[e.label]
    for e in engines:
        m = measured[e.label]
        e.measured_ms, e.q1_ms, e.q3_ms = m["median_ms"], m["q1_ms"], m["q3_ms"]


def _candidate(
    deployment, cap, allocation: Allocation, dense_ms, targets, kappa: float = 1.0
) -> Candidate:
    params = sum(option.params for option in allocation.choices.values())
    params += sum(m.weight.numel() for n, m in targets.items() if n not in allocation.choices)
    predicted = max(dense_ms - kappa * allocation.saving_ms, 1e-6)
    forms = [o.form for o in allocation.choices.values()]
    return Candidate(
        deployment,
        cap,
        forms.count("lowrank"),
        forms.count("nm24"),
        params,
        allocation.damage,
        predicted,
        dense_ms / predicted,
        table_ms=max(dense_ms - allocation.saving_ms, 1e-6),
    )


# Below this predicted share of the dense time a probe's measured saving is mostly noise.
MIN_PROBE_SHARE = 0.02
KAPPA_RANGE = (0.0, 2.0)


def _calibrate(
    allocations,
    deployment,
    baseline,
    dense_runner,
    model,
    engines,
    build_plan,
    x,
    rounds,
    runs,
    cache,
    report,
) -> float:
    """κ for one deployment: measured / predicted saving of the most aggressive allocation,
    timed whole head to head with the dense model. Predictions become dense − κ·Σ savings
    (the table's ranking of plans is unchanged). 1.0 where the probe saves too little to
    measure."""
    if not allocations:
        return 1.0
    probe = allocations[-1]
    share = probe.saving_ms / baseline.measured_ms
    params = sum(o.params for o in probe.choices.values())
    compressed = sum(o.form != "dense" for o in probe.choices.values())
    record = {"predicted_share": share, "probe_layers": compressed}
    if share < MIN_PROBE_SHARE:
        report.calibrations[deployment.name] = {**record, "kappa": 1.0, "measured_share": None}
        return 1.0
    key = f"calibration|{deployment.name}|{params}"
    if key not in cache:
        plan = build_plan(probe, "probe", deployment.name)
        trial = compress_(copy.deepcopy(model), plan)
        files = engines.files(trial, f"probe-{deployment.name}", [deployment])
        runner = engines.runner(deployment, files)
        samples = time_interleaved(
            {"dense": dense_runner, "probe": runner}, {"dense": x, "probe": x}, rounds, runs
        )
        cache[key] = paired_speedup(samples["dense"], samples["probe"]).to_dict()
    measured_share = 1 - 1 / cache[key]["median"]
    kappa = float(np.clip(measured_share / share, *KAPPA_RANGE))
    report.calibrations[deployment.name] = {
        **record,
        "measured_share": measured_share,
        "kappa": kappa,
    }
    return kappa


# Finalists confirmed head to head at most (fastest first, until one is sure to win).
CONFIRM_AT_MOST = 3


def _confirm(report, best, runners, x, rounds, runs, min_speedup, cache) -> None:
    """Time the fastest finalists that beat the best dense engine by `min_speedup` alone with
    it, twice as long, and keep the paired speedup with its bootstrap bounds: with seven
    engines in one process a plan measured ×1.07 in the planner and ×1.01 in the benchmark
    stage here, and a plan that is not surely faster should not cost accuracy."""
    contenders = sorted(
        (
            f
            for f in report.finalists
            if f.within_budget and best.measured_ms / f.measured_ms >= min_speedup
        ),
        key=lambda f: f.measured_ms,
    )
    for f in contenders[:CONFIRM_AT_MOST]:
        key = f"confirm|{_whole_key(f, report)}|{_whole_key(best, report)}"
        if key not in cache:
            pair = {best.label: runners[best.label], f.label: runners[f.label]}
            samples = time_interleaved(pair, {k: x for k in pair}, 2 * rounds, runs)
            cache[key] = paired_speedup(samples[best.label], samples[f.label]).to_dict()
        f.confirmed = {**cache[key], "against": best.label}
        if f.confirms(min_speedup):
            return


def _validate_search(
    allocations,
    deployment,
    baseline,
    kappa,
    model,
    engines,
    metric,
    reference,
    images,
    budget,
    report,
    targets,
    build_plan,
    progress,
    compute,
):
    """Validate allocations (ordered by growing damage) by bisection for the largest one within
    budget, then the next smaller ones; returns [(candidate index, allocation index)] within
    budget, fastest predicted first."""
    dense_ms = baseline.measured_ms
    results: dict[int, int] = {}

    def check(j: int) -> bool:
        if j in results:
            return report.candidates[results[j]].heldout_loss_upper <= budget
        allocation = allocations[j]
        cand = _candidate(deployment.name, 0.0, allocation, dense_ms, targets, kappa)
        cand.damage_cap = allocation.damage
        trial = compress_(copy.deepcopy(model), build_plan(allocation, "trial", deployment.name))
        if _exact(deployment):
            unlabelled = TensorImages(
                images, torch.full((len(images),), -1), [str(i) for i in range(len(images))]
            )
            outputs, _ = model_outputs(trial, unlabelled, workers=0, device=compute)
        else:
            files = engines.files(trial, f"trial-{deployment.name}-{j}", [deployment])
            outputs = engines.outputs(engines.runner(deployment, files), images)
        loss = measure(metric, reference, outputs)
        cand.heldout_loss, cand.heldout_loss_se, cand.heldout_loss_upper = (
            loss.mean,
            loss.se,
            loss.upper,
        )
        if reference.labels is not None:
            cand.heldout_top1 = _top1(outputs, reference.labels)
        report.candidates.append(cand)
        results[j] = len(report.candidates) - 1
        return loss.upper <= budget

    lo, hi = -1, len(allocations)  # allocations[:lo+1] may pass; allocations[hi:] fail
    bar = tqdm(desc=f"validate plans ({deployment.name})", unit="plan", disable=not progress)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        bar.update()
        if check(mid):
            lo = mid
        else:
            hi = mid
    for j in range(lo - 1, max(lo - 3, -1), -1):  # the next smaller plans, for the finalists
        bar.update()
        check(j)
    bar.close()
    passing = [
        (results[j], j)
        for j in sorted(results, reverse=True)
        if report.candidates[results[j]].heldout_loss_upper <= budget
    ]
    return sorted(passing, key=lambda item: report.candidates[item[0]].predicted_ms)


def _over_budget_why(metric, budget, tried) -> str:
    best = min(tried, key=lambda c: c.heldout_loss_upper)
    return (
        f"no plan keeps the held-out {metric.name} loss within {budget}"
        f"{' ' + metric.unit if metric.unit else ''} (95 % upper bound): the best found loses "
        f"{best.heldout_loss:.3g} ± {best.heldout_loss_se:.2g} ({best.lowrank_layers} low-rank "
        f"layers, predicted ×{best.predicted_speedup:.2f} on {best.deployment})"
    )


def _to_plan(
    allocation,
    targets,
    found,
    factors,
    label,
    deployment,
    batch,
    name,
    multiple,
    dense_times,
    category="budget",
):
    """The CompressionPlan of an allocation (None: every layer dense, `label` the reason and
    `category` its class: budget or not_faster; grouped convolutions are counted as such)."""
    layers: list[LayerPlan] = []
    for lname, module in targets.items():
        option = allocation.choices.get(lname) if allocation else None
        dense_ms = dense_times.get(lname) or 0.0
        if option is None or option.form == "dense":
            if lname not in factors:
                reason, why = "kept dense: grouped convolution", "grouped_conv"
            elif allocation is None:
                reason, why = f"kept dense: {label}", category
            else:
                reason, why = "kept dense: no option saves latency within the budget", "not_chosen"
            layers.append(dense_entry(lname, module, reason, why, dense_ms=dense_ms))
            continue
        stats = {
            "chosen_ms": option.ms or 0.0,
            "dense_ms": dense_ms,
            "output_error": option.error,
            "trusted": float(option.trusted),
        }
        if option.form == "lowrank":
            reason = (
                f"rank {option.rank}: output error {option.error:.3g} (cross-validated"
                f"{'' if option.trusted else ', untrusted: safe rank'}); measured "
                f"{option.ms:.4f} ms vs dense {dense_ms:.4f} ms in context on {deployment}"
            )
            layers.append(
                factorized_entry(lname, module, factors[lname], option.rank, reason, stats)
            )
        else:
            mask = nm_mask(found.views[lname].weight)
            entry = mask_entry(lname, module, mask, f"2:4: output error {option.error:.3g}", "nm24")
            entry.stats.update(stats)
            layers.append(entry)
    config = {
        "deployment": deployment,
        "batch": batch,
        "rank_multiple": multiple,
        "engine": label,
        "runtime": DEPLOYMENTS[deployment].runtime if deployment else None,
        "precision": DEPLOYMENTS[deployment].precision if deployment else None,
    }
    if allocation is None:
        config["outcome"] = "dense"
    return CompressionPlan("latency", config, layers, model=name, skipped=found.skipped)


def _load_tables(path, fingerprint, batch, machine) -> dict:
    from ..paths import read_json

    if path is None or not Path(path).is_file():
        return {}
    data = read_json(path, "layer tables", TableMismatchError)
    if (
        data.get("fingerprint") != fingerprint
        or data.get("batch") != batch
        or data.get("machine") != machine
    ):
        LayerTable(
            data.get("fingerprint", "?"), "?", data.get("batch", 0), data.get("machine", {})
        ).check(fingerprint, "?", batch, machine)
    return data


def _table(
    saved, deployment, fingerprint, batch, machine, entries_for, found, threads, progress
) -> LayerTable:
    if deployment.name in saved.get("tables", {}):
        table = LayerTable.from_dict(saved["tables"][deployment.name])
        table.check(fingerprint, deployment.name, batch, machine)
        return table
    table = LayerTable(fingerprint, deployment.name, batch, machine, entries_for(deployment))
    measure_options(table.layers, found.views, deployment, threads, progress=progress)
    return table


def _save_tables(path, tables, whole, fingerprint, batch, machine, sensitivity=None) -> dict:
    """The tables as one record (written to `path` when given)."""
    from ..paths import write_json_atomic

    record = {
        "fingerprint": fingerprint,
        "batch": batch,
        "machine": machine,
        "tables": {name: t.to_dict() for name, t in tables.items()},
        "whole": whole,
        "sensitivity": sensitivity,
    }
    if path is not None:
        write_json_atomic(path, record)
    return record
