"""Calibration: input statistics in folds, Ledoit–Wolf shrinkage, whitened-SVD errors that
hold on inputs the fit did not see, and the trust flag."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rmt_deploy.calibration import (
    InputStats,
    collect_input_stats,
    output_error,
    rank_for_error,
    whitened_factors,
)
from rmt_deploy.layers import layer_view


def _stats(x: torch.Tensor, folds: int = 1) -> InputStats:
    stats = InputStats(x.shape[1], folds)
    for i in range(folds):
        stats.add(x[i::folds], i)
    return stats


def _measured(x: torch.Tensor, w: torch.Tensor, approx: torch.Tensor) -> float:
    """The relative output error, straight from the outputs."""
    return float(((x @ (w - approx).T) ** 2).sum() / ((x @ w.T) ** 2).sum())


def test_whitened_svd_error_is_the_output_error():
    torch.manual_seed(3)
    x = (torch.randn(4000, 32) @ torch.randn(32, 32)).double()  # correlated inputs
    w = torch.randn(24, 32).double()
    f = whitened_factors(w, _stats(x), cross_validate=False, shrink=False)
    for rank in (2, 8, 16):
        left, right = f.factors(rank, torch.float64)
        measured = _measured(x, w, left @ right)
        assert measured == pytest.approx(float(f.fitted[rank]), rel=1e-3)
        assert output_error(w, left @ right, x.T @ x / len(x)) == pytest.approx(measured, rel=1e-9)
        # ...and it beats plain SVD truncation of W on the same inputs (SVD-LLM's point).
        uu, ss, vv = torch.linalg.svd(w)
        assert measured <= _measured(x, w, (uu[:, :rank] * ss[:rank]) @ vv[:rank]) + 1e-12
    assert float(f.fitted[0]) == pytest.approx(1.0) and float(f.fitted[-1]) == 0.0


def test_a_slightly_indefinite_covariance_still_whitens():
    """Float32 per-batch products can leave a covariance with dead input channels slightly
    indefinite (seen on EfficientNet-Lite1): the factors are still exact for W."""
    from rmt_deploy.calibration import _whiten

    torch.manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    values = torch.tensor([1e3] + [1.0] * 9 + [0.0, 0.0], dtype=torch.float64)
    values[-1] = -1e-3  # below −1e-6 × the mean eigenvalue (≈ 84): one damping step too few
    cov = (basis * values) @ basis.T
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(cov + 1e-6 * float(torch.trace(cov)) / 12 * torch.eye(12))
    w = torch.randn(5, 12, dtype=torch.float64)
    u, sigma, right = _whiten(w, cov)
    assert torch.allclose((u * sigma) @ right, w, atol=1e-8)


def test_ledoit_wolf_shrinkage():
    torch.manual_seed(0)
    d = 64
    true = torch.diag(torch.linspace(0.2, 3.0, d)).double()
    few = torch.randn(40, d).double() @ true.sqrt()  # fewer samples than dimensions
    stats = _stats(few)
    sample = stats.covariance()
    assert torch.linalg.matrix_rank(sample, rtol=1e-5) <= 40  # singular
    shrunk, weight = stats.shrunk()
    assert 0 < weight < 1
    assert float(torch.linalg.eigvalsh(shrunk).min()) > 0  # well conditioned
    # closer to the truth than the sample covariance (the estimator's purpose)
    assert torch.linalg.norm(shrunk - true) < 0.8 * torch.linalg.norm(sample - true)
    plenty = _stats(torch.randn(20000, d).double() @ true.sqrt())
    assert plenty.shrunk()[1] < 0.05  # with enough samples it barely shrinks


def test_cross_validated_error_holds_on_new_inputs_when_the_fit_does_not():
    """A 128-wide layer calibrated on 60 samples: the in-sample error of a rank is far below
    what new inputs see; the cross-validated error stays within 2× of it."""
    torch.manual_seed(1)
    d = 128
    mixing = torch.randn(d, d).double() * torch.linspace(1.0, 0.05, d).double()
    w = torch.randn(64, d).double()
    calib = torch.randn(60, d).double() @ mixing
    fresh = torch.randn(20000, d).double() @ mixing
    f = whitened_factors(w, _stats(calib, folds=4))
    cov_fresh = fresh.T @ fresh / len(fresh)
    naive = whitened_factors(w, _stats(calib), cross_validate=False, shrink=False)
    for eps in (0.05, 0.1, 0.2):
        rank = rank_for_error(f.predicted, eps, 0)
        measured = output_error(w, torch.matmul(*f.factors(rank, torch.float64)), cov_fresh)
        assert measured / 2 <= float(f.predicted[rank]) <= 2 * measured
        # the unshrunk in-sample fit promises almost nothing is lost at its own rank for eps
        r_naive = rank_for_error(naive.fitted, eps, 0)
        lost = output_error(w, torch.matmul(*naive.factors(r_naive, torch.float64)), cov_fresh)
        assert lost > 2 * eps
    assert not f.trusted_at(rank_for_error(f.predicted, 0.1, 0))  # fewer samples than inputs


def test_collect_input_stats_folds_whole_images_through_the_view():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 6))
    data = TensorDataset(torch.randn(10, 3, 5, 5), torch.zeros(10, dtype=torch.long))
    views = {"0": layer_view(conv), "3": layer_view(model[3])}
    stats = collect_input_stats(model, views, DataLoader(data, batch_size=3), 10, folds=4)
    assert stats["0"].images == 10
    assert stats["0"].count == [3 * 25, 3 * 25, 2 * 25, 2 * 25]  # images 0,4,8 | 1,5,9 | …
    assert stats["3"].count == [3, 3, 2, 2]
    x = data.tensors[0]
    patches = nn.functional.unfold(x, 3, padding=1).transpose(1, 2)  # every position a sample
    fold0 = patches[[0, 4, 8]].reshape(-1, 27).double()
    assert torch.allclose(stats["0"].gram[0], fold0.T @ fold0, rtol=1e-5, atol=1e-4)
    everything = patches.reshape(-1, 27).double()
    assert torch.allclose(
        stats["0"].covariance(), everything.T @ everything / len(everything), atol=1e-5
    )


def test_rank_for_error_respects_edge_and_multiple():
    errors = torch.tensor([1.0, 0.5, 0.2, 0.05, 0.01, 0.0])
    assert rank_for_error(errors, 0.1, 0) == 3
    assert rank_for_error(errors, 0.1, 4) == 4  # never below the MP edge
    assert rank_for_error(errors, 0.3, 0, multiple=4) == 4
    assert rank_for_error(errors, 0.0, 0, multiple=8) == 5  # capped at full rank


@pytest.mark.slow
def test_predicted_errors_hold_on_other_images_of_the_real_model(imagenet_sample):
    """EfficientNet-Lite1 (real ImageNet weights): for every layer the low-rank plan factorizes,
    the output error predicted from 200 calibration images is within 2× of the error measured
    on 200 other images — the classifier's 1280-wide input included."""
    from rmt_deploy import DataConfig, load_model, plan
    from rmt_deploy.data import eval_transform, load_image_dataset, split_parts
    from rmt_deploy.targets import find_targets

    model = load_model("efficientnet_lite1")
    images = load_image_dataset(imagenet_sample, eval_transform(DataConfig.from_model(model)))
    parts = split_parts(images, {"calib": 200, "other": 200, "rest": None})
    the_plan = plan(model, "lowrank", 0.3, data=parts["calib"], calib_images=200, batch_size=50)
    factorized = [layer for layer in the_plan.layers if layer.action == "lowrank"]
    assert len(factorized) >= 10 and "_fc" in {layer.name for layer in factorized}
    views = find_targets(model).views
    other = collect_input_stats(
        model,
        {layer.name: views[layer.name] for layer in factorized},
        DataLoader(parts["other"], batch_size=50),
        200,
        folds=1,
    )
    for layer in factorized:
        approx = layer.payload["left"].double() @ layer.payload["right"].double()
        measured = output_error(views[layer.name].weight, approx, other[layer.name].covariance())
        predicted = layer.stats["output_error"]
        assert measured / 2 <= predicted <= 2 * measured, (layer.name, predicted, measured)
