"""Every strategy's rewrite on tiny random-weight variants of the six timm families."""

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from rmt_deploy import load_model
from rmt_deploy.compress import compress_
from rmt_deploy.layers import MASKED_TYPES, LowRankConv2d, LowRankLinear, is_nm_sparse
from rmt_deploy.recovery import FinetuneConfig, finetune
from rmt_deploy.strategies import plan
from tests.families import FAMILIES


def images(n=4):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(n, 3, 224, 224, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


def weight_count(model):
    """Non-zero weights of Linear/Conv layers as the model computes them."""
    total = 0
    for module in model.modules():
        if isinstance(module, MASKED_TYPES):
            total += int(torch.count_nonzero(module.masked_weight()))
        elif isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            total += int(torch.count_nonzero(module.weight))
    return total


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family(family):
    torch.manual_seed(0)
    name = FAMILIES[family]
    x = images(2).tensors[0]

    pristine = load_model(name, num_classes=10)  # timm builds some of these slowly: build once
    model = copy.deepcopy(pristine)
    before = weight_count(model)
    p = plan(model, "seb", 0.5)
    compress_(model, p)
    assert model(x).shape == (2, 10)
    assert weight_count(model) == pytest.approx(
        before - (p.summary()["params_before"] - p.summary()["params_after"]), rel=1e-3
    )
    masks = {
        n: m.weight_mask.clone() for n, m in model.named_modules() if isinstance(m, MASKED_TYPES)
    }
    finetune(model, images(), FinetuneConfig(max_steps=1, batch_size=2, lr=0.1), progress=False)
    for n, m in model.named_modules():
        if n in masks:
            assert torch.equal(m.weight_mask, masks[n])
            assert torch.all(m.masked_weight()[masks[n] == 0] == 0), n

    model = copy.deepcopy(pristine)
    p = plan(model, "nm24")
    compress_(model, p)
    assert model(x).shape == (2, 10)
    sparse = [m for m in model.modules() if isinstance(m, MASKED_TYPES)]
    assert sparse and all(is_nm_sparse(m.masked_weight()) for m in sparse)
    assert all(layer.reason for layer in p.layers if layer.action == "dense")

    model = copy.deepcopy(pristine)
    params = sum(q.numel() for q in model.parameters())
    # Layers up to 300k weights: every layer type of the family, without the SVDs of the
    # widest stages (minutes on 2 cores).
    p = plan(
        model,
        "lowrank",
        0.3,
        data=images(),
        calib_images=4,
        batch_size=2,
        filter_fn=lambda module, fqn: module.weight.numel() <= 300_000,
    )
    compress_(model, p)
    assert model(x).shape == (2, 10)
    assert any(isinstance(m, LowRankLinear | LowRankConv2d) for m in model.modules())
    saved = p.summary()["params_before"] - p.summary()["params_after"]
    assert sum(q.numel() for q in model.parameters()) == params - saved
