"""Budget metrics against hand-computed values, their standard errors, and refusals."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rmt_deploy.budget import (
    METRICS,
    BudgetError,
    Reference,
    check_metric,
    measure,
    model_outputs,
    resolve_metric,
)

LABELS = torch.tensor([0, 1, 2, 0])
DENSE = torch.tensor([[3.0, 0, 0], [0, 3, 0], [0, 0, 3], [0, 3, 0]])  # right, right, right, wrong
SMALL = torch.tensor([[3.0, 0, 0], [3, 0, 0], [0, 0, 3], [0, 3, 0]])  # second one now wrong


def test_top1_loss_and_its_standard_error():
    loss = measure(METRICS["top1"], Reference(DENSE, LABELS), SMALL)
    assert loss.mean == pytest.approx(25.0)  # 75 % → 50 %
    # per input 0, 100, 0, 0: sample std 50, standard error 50 / √4
    assert loss.se == pytest.approx(25.0) and loss.n == 4
    assert loss.upper == pytest.approx(25.0 + 1.645 * 25.0)


def test_agreement_kl_and_cosine_by_hand():
    ref = Reference(DENSE, None)
    assert measure(METRICS["agreement"], ref, SMALL).mean == pytest.approx(25.0)
    assert measure(METRICS["agreement"], ref, DENSE).mean == 0.0
    p, q = torch.tensor([[0.0, 0.0]]), torch.log(torch.tensor([[0.9, 0.1]]))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert measure(METRICS["kl"], Reference(p, None), q).mean == pytest.approx(expected)
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [2.0, 2.0]])  # orthogonal, then parallel
    assert measure(METRICS["cosine"], Reference(a, None), b).mean == pytest.approx(0.5)


def test_metrics_the_data_cannot_support_are_refused():
    with pytest.raises(BudgetError, match="top1 needs labelled images"):
        check_metric(METRICS["top1"], labelled=False, output_shape=(8, 10))
    with pytest.raises(BudgetError, match="needs N × classes scores.*use cosine"):
        check_metric(METRICS["kl"], labelled=True, output_shape=(8, 3, 4, 4))
    check_metric(METRICS["cosine"], labelled=False, output_shape=(8, 3, 4, 4))
    with pytest.raises(BudgetError, match="unknown budget metric 'top5'"):
        resolve_metric("top5")


def test_user_metrics_from_a_file(tmp_path):
    source = tmp_path / "metrics.py"
    source.write_text(
        "def worst(ref, out, labels):\n    return float((ref - out).abs().max())\n"
        "def per_input(ref, out, labels):\n    return (ref - out).abs().amax(dim=1)\n"
        "def words(ref, out, labels):\n    return 'fine'\n"
    )
    ref = Reference(DENSE, LABELS)
    scalar = measure(resolve_metric(f"{source}:worst"), ref, SMALL)
    assert scalar.mean == 3.0 and scalar.se == 0.0
    per_input = measure(resolve_metric(f"{source}:per_input"), ref, SMALL)
    assert per_input.mean == pytest.approx(0.75) and per_input.se > 0
    with pytest.raises(BudgetError, match="returned str, not a number"):
        measure(resolve_metric(f"{source}:words"), ref, SMALL)


def test_model_outputs_know_when_there_are_no_labels():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    images = torch.randn(5, 3, 2, 2)
    out, labels = model_outputs(model, TensorDataset(images, torch.full((5,), -1)))
    assert out.shape == (5, 3) and labels is None
    out, labels = model_outputs(model, TensorDataset(images, torch.arange(5) % 3))
    assert torch.equal(labels, torch.arange(5) % 3)

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(BudgetError, match="returns a tuple"):
        model_outputs(Pair(), TensorDataset(images, torch.zeros(5)))
