"""Budgets: how far the compressed model may move away from the dense one on held-out inputs.

A budget is a metric and a maximum. Labelled images allow `top1` (the loss of top-1 accuracy
in percentage points). Any input allows fidelity to the dense model, so any model can be
planned without labels: `agreement` (percentage points of inputs whose top-1 class changes),
`kl` (mean KL divergence from the dense softmax to the compressed one, in nats) and `cosine`
(1 − mean cosine similarity of the flattened outputs: for backbones, embedders, anything with
a tensor output). A metric of your own is `package.module:callable` or `path/file.py:callable`
taking (reference outputs, outputs, labels or None) and returning the loss (larger is worse).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .errors import BudgetError, RmtDeployError  # noqa: F401  (BudgetError: re-exported)

# (reference outputs, outputs, labels or None) → the loss per input (a tensor), or one number
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], "torch.Tensor | float"]
# One-sided 95 % normal quantile: a plan passes when its loss's upper bound is within budget.
CONFIDENCE_Z = 1.645


@dataclass(frozen=True)
class BudgetMetric:
    name: str
    unit: str
    needs_labels: bool
    needs_classes: bool  # outputs must be N × classes scores
    loss: LossFn
    summary: str = ""


def _correct(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=1) == labels).double()


def top1(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of class scores against labels (one definition, used by the
    planner, the evaluation verbs and the benchmarks)."""
    return 100.0 * float(_correct(outputs, labels).mean())


def _top1_loss(reference, outputs, labels) -> torch.Tensor:
    """Per input: 100 × (dense right − compressed right) ∈ {−100, 0, 100}; its mean is the
    top-1 loss in pp."""
    return 100.0 * (_correct(reference, labels) - _correct(outputs, labels))


def _disagreement(reference, outputs, _labels) -> torch.Tensor:
    return 100.0 * (reference.argmax(dim=1) != outputs.argmax(dim=1)).double()


def _kl(reference, outputs, _labels) -> torch.Tensor:
    """KL(p_dense ‖ p_compressed) per input, in nats."""
    log_p, log_q = reference.double().log_softmax(dim=1), outputs.double().log_softmax(dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _cosine_distance(reference, outputs, _labels) -> torch.Tensor:
    a, b = reference.flatten(1).double(), outputs.flatten(1).double()
    return 1.0 - F.cosine_similarity(a, b, dim=1)


METRICS: dict[str, BudgetMetric] = {
    m.name: m
    for m in (
        BudgetMetric("top1", "pp", True, True, _top1_loss, "top-1 accuracy lost on labels"),
        BudgetMetric("agreement", "pp", False, True, _disagreement, "inputs whose top-1 moves"),
        BudgetMetric("kl", "nats", False, True, _kl, "KL(dense ‖ compressed) of the softmax"),
        BudgetMetric("cosine", "", False, False, _cosine_distance, "1 − cosine of the outputs"),
    )
}


def resolve_metric(spec: str | BudgetMetric) -> BudgetMetric:
    """A built-in metric by name, or a user's `module:callable` / `file.py:callable`."""
    if isinstance(spec, BudgetMetric):
        return spec
    if spec in METRICS:
        return METRICS[spec]
    if ":" not in spec:
        raise BudgetError(
            f"unknown budget metric {spec!r}: one of {', '.join(METRICS)} or "
            "'package.module:callable' / 'path/file.py:callable'"
        )
    from .usercode import load_callable

    fn = load_callable(spec, "budget metric")
    return BudgetMetric(spec, "", False, False, _user_loss(spec, fn), "user metric")


def _user_loss(spec: str, fn: Callable) -> LossFn:
    def loss(reference, outputs, labels):
        from .usercode import call_user, metric_value

        value = call_user(fn, spec, reference, outputs, labels)
        return metric_value(value, spec, len(outputs))  # a loss per input: a confidence bound

    return loss


@dataclass
class Reference:
    """The dense model's outputs on the held-out inputs, computed once per plan search."""

    outputs: torch.Tensor
    labels: torch.Tensor | None


@torch.inference_mode()
def model_outputs(
    model: nn.Module,
    data: Dataset,
    batch_size: int = 100,
    workers: int = 1,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(outputs, labels) of `model` on all of `data`; labels None when the data has none
    (an unlabelled folder or loader marks every label −1)."""
    if len(data) == 0:
        raise BudgetError("the held-out data is empty")
    from .devices import resolve_device

    target = resolve_device(device, model)
    model.eval().to(target)
    outputs, labels = [], []
    for images, batch_labels in DataLoader(data, batch_size=batch_size, num_workers=workers):
        out = model(images.to(target))
        if not isinstance(out, torch.Tensor):
            raise BudgetError(
                f"the model returns a {type(out).__name__}; budgets compare one output tensor "
                "(wrap the model so that forward returns a tensor)"
            )
        outputs.append(out.float().cpu())
        labels.append(torch.as_tensor(batch_labels))
    all_labels = torch.cat(labels)
    return torch.cat(outputs), None if bool((all_labels < 0).any()) else all_labels


def check_metric(
    metric: BudgetMetric,
    labelled: bool,
    output_shape: tuple[int, ...],
    sample: torch.Tensor | None = None,
) -> None:
    """Refuse a metric the data or the model's outputs cannot support, naming the fix; with
    `sample` (the model's outputs on a few images) call it once, so that a user metric that
    raises or returns NaN or a non-number fails here, before any stage, not after planning."""
    if metric.needs_labels and not labelled:
        raise BudgetError(
            f"budget metric {metric.name} needs labelled images, and the held-out data has no "
            "labels: use a labelled folder (class sub-folders or labels.csv), or a fidelity "
            "metric (agreement, kl, cosine)"
        )
    if metric.needs_classes and len(output_shape) != 2:
        raise BudgetError(
            f"budget metric {metric.name} needs N × classes scores, but the model outputs shape "
            f"{tuple(output_shape)}: use cosine (or a metric of your own)"
        )
    if sample is not None:
        _probe_metric(metric, labelled, sample)


def _probe_metric(metric: BudgetMetric, labelled: bool, sample: torch.Tensor) -> None:
    """The metric on `sample` against a slightly perturbed copy (a compressed model's
    outputs are never identical), labels the sample's own top-1 where the data has labels."""
    reference = sample.detach().float()
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(0))
    outputs = reference + 1e-3 * (float(reference.std()) if reference.numel() > 1 else 1.0) * noise
    labels = reference.argmax(1) if labelled and reference.dim() == 2 else None
    metric.loss(reference, outputs, labels)


@dataclass(frozen=True)
class Loss:
    """A metric's loss on held-out inputs: the mean, its standard error (0 when the metric
    gives one number, not one per input) and the one-sided 95 % upper bound."""

    mean: float
    se: float
    n: int

    @property
    def upper(self) -> float:
        return self.mean + CONFIDENCE_Z * self.se


def measure(metric: BudgetMetric, reference: Reference, outputs: torch.Tensor) -> Loss:
    """The metric's loss of `outputs` against the dense reference, with its sampling error.

    Per-input losses give the standard error of their mean: on 300 images a plan that moves
    10 % of the top-1 predictions has a top-1 loss uncertain by ±1.8 pp, so a plan must pass
    the budget with its upper bound, not by the luck of the draw."""
    value = metric.loss(reference.outputs, outputs, reference.labels)
    if isinstance(value, torch.Tensor):
        n = len(value)
        se = float(value.std(unbiased=True)) / n**0.5 if n > 1 else 0.0
        return Loss(float(value.mean()), se, n)
    return Loss(float(value), 0.0, len(outputs))
