"""The dense baselines' precision: each deployment validated on the held-out images (exact ones
need not be), too small a calibration set refused for INT8, and INT8 over budget made to fit —
QDQ layers back in float by measured effect, NNCF's model by NNCF's own accuracy control."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..budget import BudgetMetric, Loss, Reference, measure
from ..deploy import Deployment
from ..errors import RmtDeployError
from ..layout import VariantFiles
from .engines import Engines, exact
from .results import Engine, LatencyPlanReport


@dataclass
class Validation:
    """What a model is validated against: the budget's metric, the dense model's held-out
    outputs (and labels), the held-out images and the budget."""

    metric: BudgetMetric
    reference: Reference
    images: torch.Tensor
    budget: float

    def loss(self, outputs: torch.Tensor) -> Loss:
        return measure(self.metric, self.reference, outputs)


def set_loss(engine: Engine, loss: Loss, budget: float) -> None:
    engine.heldout_loss, engine.heldout_loss_se = loss.mean, loss.se
    engine.heldout_loss_upper = loss.upper
    engine.within_budget = loss.upper <= budget


def validate_baselines(
    deployments: list[Deployment],
    baselines: list[Engine],
    engines: Engines,
    files: dict,
    check: Validation,
) -> dict:
    """Each dense deployment's loss on the held-out images (exact ones: none); its runners."""
    runners = {}
    for deployment, engine in zip(deployments, baselines, strict=True):
        run = engines.runner(deployment, files)
        if exact(deployment):
            loss = Loss(0.0, 0.0, len(check.images))
        else:
            loss = check.loss(engines.outputs(run, check.images))
        set_loss(engine, loss, check.budget)
        runners[engine.label] = run
    return runners


def enough_for_int8(deployments, skipped: dict, calib: Dataset, targets) -> list:
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


def ladder(count: int) -> list[int]:
    """How many layers to try in float: 1, 2, 4, … and all of them."""
    sizes, k = [], 1
    while k < count:
        sizes.append(k)
        k *= 2
    return [*sizes, count] if count else []


def mixed_precision(
    engines: Engines,
    files: dict,
    over: list[Deployment],
    report: LatencyPlanReport,
    check: Validation,
    progress: bool,
) -> dict:
    """INT8 deployments over budget: the QDQ ones get layers back in float by measurement
    (`float_ladder`), NNCF's model is remade by NNCF's own accuracy control. Returns the
    re-validated runners; the report keeps every step."""
    baselines = {e.deployment: e for e in report.baselines}
    first = {d.name: baselines[d.name].heldout_loss_upper for d in over}
    qdq = [d for d in over if d.artifact == "onnx_int8"]
    nncf = [d for d in over if d.artifact == "openvino_int8"]
    runners: dict = {}
    if qdq:
        runners.update(float_ladder(engines, files, qdq, report, baselines, check, progress))
    for d in nncf:
        runners.update(nncf_within(engines, files, d, report, baselines[d.name], check))
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


def float_ladder(engines, files, chosen, report, baselines, check, progress) -> dict:
    """Layers back in float, the ones whose float saves the most output error first (each
    measured alone on the check images, by toggling its Q/DQ), 1, 2, 4, … of them until a QDQ
    deployment in `chosen` fits the budget. That smallest set is kept for all of them (they
    run one file): every further float layer slows INT8 down (ONNX Runtime's mixed model of
    EfficientNet-Lite1 with 16 float layers ran slower than its fp32 one), so a deployment
    that does not fit by then is dropped rather than made to fit at the others' expense."""
    from ..exporters.qdq import float_effects

    folder = Path(files.onnx).parent
    at = VariantFiles(folder)
    full_error, effects = float_effects(at.int8_full, at.prepared, engines.check, progress)
    report.int8_effects = {"full_error": full_error, "layers": [e.to_dict() for e in effects]}
    ranked = [e.node for e in effects if e.gain > 0]
    runners: dict = {}
    for k in ladder(len(ranked)):
        engines.float_nodes = ranked[:k]
        engines.apply_float(folder)
        runners.update(
            validate_baselines(chosen, [baselines[d.name] for d in chosen], engines, files, check)
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


def nncf_within(engines, files, deployment, report, baseline, check: Validation) -> dict:
    """NNCF's model remade by `nncf.quantize_with_accuracy_control` on the held-out images,
    allowed the mean top-1 drop that leaves room for the 95 % bound (top-1 budgets only)."""
    from ..exporters.nncf_int8 import nncf_int8_within

    # The bound is mean + 1.645 se: the mean may drop by what the spread leaves of the budget,
    # and by a tenth of it at least (fewer changed answers also narrow the spread).
    margin = baseline.heldout_loss_upper - baseline.heldout_loss
    max_drop = max(check.budget - margin, check.budget / 10)
    labels = check.reference.labels
    if check.metric.name != "top1" or labels is None:
        return {}
    validation = list(zip(check.images.numpy(), labels.tolist(), strict=True))
    path = Path(files.onnx)
    xml = VariantFiles(path.parent).openvino_int8
    nncf_int8_within(path, xml, engines.calib, validation, max_drop)
    report.nncf_accuracy_control = f"NNCF accuracy control at a {max_drop:.2f} pp drop"
    report.nncf_max_drop = max_drop
    return validate_baselines([deployment], [baseline], engines, files, check)
