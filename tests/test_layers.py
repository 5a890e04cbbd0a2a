"""Low-rank, masked and 2:4 layers: exact algebra, masks that hold, readable printing."""

import pytest
import torch
from torch import nn

from rmt_deploy.compress import truncated_svd
from rmt_deploy.layers import (
    LowRankConv2d,
    LowRankLinear,
    is_nm_sparse,
    layer_view,
    magnitude_mask,
    masked_from_view,
    nm_incompatibility,
    nm_mask,
)


def test_lowrank_linear_is_the_truncated_matrix():
    torch.manual_seed(0)
    dense = nn.Linear(48, 32)
    left, right = truncated_svd(dense.weight, 8)
    layer = LowRankLinear.from_factors(left, right, dense.bias)
    x = torch.randn(5, 48)
    u, s, vh = torch.linalg.svd(dense.weight.double())
    w8 = (u[:, :8] * s[:8]) @ vh[:8]
    assert torch.allclose(layer(x).double(), x.double() @ w8.T + dense.bias.double(), atol=1e-5)
    assert sum(p.numel() for p in layer.parameters()) == 8 * (48 + 32) + 32
    assert "rank=8" in repr(layer)
    full = LowRankLinear.from_factors(*truncated_svd(dense.weight, 32), dense.bias)
    assert torch.allclose(full(x), dense(x), atol=1e-5)


@pytest.mark.parametrize(("stride", "padding", "dilation"), [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_lowrank_conv_keeps_geometry(stride, padding, dilation):
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 10, 3, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, 6, 13, 13)
    view = layer_view(conv)
    full = LowRankConv2d.from_factors(view, *truncated_svd(conv.weight, 10))
    assert torch.allclose(full(x), conv(x), atol=1e-5)
    low = LowRankConv2d.from_factors(view, *truncated_svd(conv.weight, 3))
    ref = nn.functional.conv2d(x, low.dense_weight(), conv.bias, stride, padding, dilation)
    assert torch.allclose(low(x), ref, atol=1e-5)
    assert low.second.kernel_size == (1, 1) and "rank=3" in repr(low)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_masks_hold_through_training(optimizer):
    torch.manual_seed(2)
    dense_lin, dense_conv = nn.Linear(16, 8), nn.Conv2d(4, 8, 3)
    lin = masked_from_view(layer_view(dense_lin), magnitude_mask(dense_lin.weight, 0.3))
    conv = masked_from_view(layer_view(dense_conv), nm_mask(dense_conv.weight))
    params = [*lin.parameters(), *conv.parameters()]
    opt = (
        torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1)
        if optimizer == "sgd"
        else torch.optim.AdamW(params, lr=0.1, weight_decay=0.1)
    )
    for _ in range(5):
        loss = lin(torch.randn(4, 16)).pow(2).sum() + conv(torch.randn(2, 4, 6, 6)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        assert torch.all(lin.weight.grad[lin.weight_mask == 0] == 0)
        opt.step()
    # The stored weights stay zero too: no gradient, so neither momentum nor decay moves them.
    assert torch.all(lin.weight[lin.weight_mask == 0] == 0)
    assert torch.all(conv.weight[conv.weight_mask == 0] == 0)
    assert lin.density == pytest.approx(0.3, abs=0.01)
    assert is_nm_sparse(conv.masked_weight()) and "density=0.500" in repr(conv)


def test_nm_mask_keeps_the_two_largest_of_each_input_group():
    torch.manual_seed(3)
    w = torch.randn(8, 12)
    mask = nm_mask(w)
    groups = (w.abs() * mask).reshape(8, 3, 4)
    kept = mask.reshape(8, 3, 4).sum(-1)
    assert torch.all(kept == 2)
    top2 = w.abs().reshape(8, 3, 4).topk(2, dim=-1).values.sum(-1)
    assert torch.allclose(groups.sum(-1), top2)


def test_conv_groups_run_along_input_channels():
    torch.manual_seed(4)
    w = torch.randn(5, 8, 3, 3)
    mask = nm_mask(w)
    # For every output channel and kernel position, 2 of each 4 consecutive input channels.
    per_position = mask.permute(0, 2, 3, 1).reshape(-1, 2, 4).sum(-1)
    assert torch.all(per_position == 2)
    assert is_nm_sparse(w * mask) and not is_nm_sparse(w)


def test_incompatible_shapes_are_named():
    assert nm_incompatibility((16, 3, 3, 3)) == "input dimension 3 is not divisible by 4"
    assert nm_incompatibility((16, 64)) is None
    with pytest.raises(ValueError, match="not divisible by 4"):
        nm_mask(torch.randn(16, 3, 3, 3))


def test_semi_structured_needs_a_gpu_or_runs_on_one():
    from torch import nn

    from rmt_deploy.errors import RmtDeployError
    from rmt_deploy.layers import layer_view, masked_from_view, nm_mask, semi_structured_

    torch.manual_seed(0)
    dense = nn.Linear(128, 64)
    model = nn.Sequential(masked_from_view(layer_view(dense), nm_mask(dense.weight.detach())))
    x = torch.randn(32, 128)
    expected = model(x)
    if not torch.cuda.is_available():
        with pytest.raises(RmtDeployError, match="need an NVIDIA GPU"):
            semi_structured_(model)
        return
    assert semi_structured_(model, torch.float16) == 1
    got = model(x.cuda().half()).float().cpu()
    assert torch.allclose(got, expected, atol=5e-2, rtol=5e-2)


def test_semi_structured_shapes_by_backend():
    from torch import nn

    from rmt_deploy.layers.semi_structured import semi_structured_incompatibility as why

    # torch's fp16/bf16 constraints: cuSPARSELt rows and cols multiples of 16, CUTLASS 32 × 64.
    assert why(nn.Linear(48, 32), "cusparselt") is None
    assert why(nn.Linear(48, 32), "cutlass") == (
        "32×48: cutlass needs out % 32 == 0 and in % 64 == 0"
    )
    assert why(nn.Linear(40, 32), "cusparselt") == (
        "32×40: cusparselt needs out % 16 == 0 and in % 16 == 0"
    )
    assert why(nn.Conv2d(64, 128, 1), "cusparselt") is None  # a 1×1 conv is a matmul
    for conv in (nn.Conv2d(64, 128, 3), nn.Conv2d(64, 128, 1, stride=2),
                 nn.Conv2d(64, 128, 1, groups=2)):  # fmt: skip
        assert why(conv, "cusparselt").startswith("only 1×1 convolutions with stride 1")
    assert why(nn.LayerNorm(8), "cusparselt") == "only Linear layers and 1×1 convolutions"
