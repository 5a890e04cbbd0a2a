"""Every strategy's rewrite on tiny random-weight variants of the six timm families."""

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from rmt_deploy import load_model
from rmt_deploy.compress import compress_
from rmt_deploy.layers import MASKED_TYPES, LowRankConv2d, LowRankLinear
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


def matrix_layers(model) -> dict[str, torch.nn.Module]:
    return {
        n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    }


def groups_of_four(weight: torch.Tensor) -> torch.Tensor:
    """Groups of 4 consecutive input channels, one row each: (out, in) → (out·in/4, 4);
    (out, in, kh, kw): 4 input channels at each kernel position."""
    if weight.ndim == 2:
        return weight.reshape(weight.shape[0], -1, 4).reshape(-1, 4)
    out, cin, kh, kw = weight.shape
    return weight.reshape(out, cin // 4, 4, kh, kw).permute(0, 1, 3, 4, 2).reshape(-1, 4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family(family):
    """Counted on the models themselves, not on the plan's summary: SEB at 0.5 masks every
    Linear/Conv2d and keeps half of all their weights; 2:4 keeps the 2 largest of every 4
    input channels in each layer whose input channels divide by 4 (not grouped), the rest
    dense with a reason; low rank swaps each factorized m×n weight for r·(m+n) < m·n and keeps
    at most 0.7 of the layers it may touch (≤ 300k weights)."""
    torch.manual_seed(0)
    name = FAMILIES[family]
    x = images(2).tensors[0]

    pristine = load_model(name, num_classes=10)  # timm builds some of these slowly: build once
    layers = matrix_layers(pristine)
    total = sum(m.weight.numel() for m in layers.values())
    model = copy.deepcopy(pristine)
    p = plan(model, "seb", 0.5)
    compress_(model, p)
    assert model(x).shape == (2, 10)
    masked = {n for n, m in model.named_modules() if isinstance(m, MASKED_TYPES)}
    assert masked == set(layers) and p.skipped == []
    kept = sum(int(model.get_submodule(n).weight_mask.sum()) for n in masked)
    assert abs(kept - total / 2) <= 0.5  # the global target is exact (to the rounding)
    # zeros of the random init (Hiera's) score lowest, so they are among the pruned
    assert weight_count(model) == kept
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
    fits = {
        n for n, m in layers.items() if m.weight.shape[1] % 4 == 0 and getattr(m, "groups", 1) == 1
    }
    sparse = {n for n, m in model.named_modules() if isinstance(m, MASKED_TYPES)}
    assert sparse == fits and sparse
    for n in sparse:
        mask = groups_of_four(model.get_submodule(n).weight_mask)
        magnitude = groups_of_four(layers[n].weight.detach().abs())
        assert torch.all(mask.sum(dim=1) == 2), n
        kept_min = torch.where(mask.bool(), magnitude, torch.inf).min(dim=1).values
        pruned_max = torch.where(mask.bool(), -torch.inf, magnitude).max(dim=1).values
        assert torch.all(kept_min >= pruned_max), n
    dense = [layer for layer in p.layers if layer.action == "dense"]
    assert {layer.name for layer in dense} == set(layers) - fits
    assert all(layer.reason for layer in dense)

    model = copy.deepcopy(pristine)
    params = sum(q.numel() for q in model.parameters())
    # Layers up to 300k weights: every layer type of the family, without the SVDs of the
    # widest stages (minutes on 2 cores).
    small = {n for n, m in layers.items() if m.weight.numel() <= 300_000}
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
    factorized = {
        n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear | LowRankConv2d)
    }
    assert factorized and set(factorized) <= small
    saved = 0
    for n, module in factorized.items():
        m, k = layers[n].weight.shape[0], layers[n].weight[0].numel()
        factors = module.first.weight.numel() + module.second.weight.numel()
        assert factors == module.rank * (m + k) < m * k, n
        saved += m * k - factors
    assert sum(q.numel() for q in model.parameters()) == params - saved
    budget = sum(layers[n].weight.numel() for n in small)
    assert budget - saved <= 0.7 * budget
