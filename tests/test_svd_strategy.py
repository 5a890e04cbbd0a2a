"""The data-free truncated-SVD strategy: ranks by hand, grouped convolutions kept dense."""

import pytest
import torch
from torch import nn

from rmt_deploy import compress_, plan
from rmt_deploy.layers import LowRankConv2d, LowRankLinear
from rmt_deploy.strategies import StrategyError
from rmt_deploy.strategies.svd import uniform_rank


def test_uniform_rank_by_hand():
    # ViT-B's MLP: 0.5·768·3072/3840 = 307.2 → 307 → multiple of 16 below: 304.
    assert uniform_rank(3072, 768, 0.5, 16) == 304
    assert uniform_rank(768, 768, 0.5, 16) == 192  # 0.5·768²/1536 = 192 exactly
    assert uniform_rank(10, 10, 0.5, 16) == 0  # 2.5 → nothing fits


def test_svd_plan_and_compress():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(16, 64, 3),  # 64 × 144: 0.7·64·144/208 = 31.0 → 16·1 = 16
        nn.Conv2d(64, 64, 3, groups=4),  # grouped: dense
        nn.Flatten(),
        nn.LazyLinear(10),
    )
    model(torch.randn(1, 16, 8, 8))  # materialize the lazy layer: 10 × 256 → 0.7·2560/266 = 6
    the_plan = plan(model, "svd", 0.3)
    by_name = {layer.name: layer for layer in the_plan.layers}
    assert (by_name["0"].action, by_name["0"].rank) == ("lowrank", 16)
    assert by_name["0"].params_after == 16 * (64 + 144)
    assert by_name["1"].action == "dense" and "grouped" in by_name["1"].reason
    assert by_name["3"].action == "dense" and by_name["3"].category == "break_even"
    compress_(model, the_plan)
    assert isinstance(model[0], LowRankConv2d) and model[0].rank == 16
    assert not isinstance(model[3], LowRankLinear)


def test_svd_rank_multiple_must_be_positive():
    with pytest.raises(StrategyError, match="svd rank_multiple must be an integer ≥ 1"):
        plan(nn.Sequential(nn.Linear(64, 64)), "svd", 0.5, rank_multiple=0)
