"""Every Linear/Conv2d-like layer is planned or skipped with its reason; compressed forms keep
what the layer did in its forward (same padding, weight standardization, unfused attention):
exact outputs at full rank, ONNX export and ONNX Runtime parity."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, ScaledStdConv2d, StdConv2d, StdConv2dSame
from torch import nn

from rmt_deploy import compress_, plan
from rmt_deploy.compress import truncated_svd
from rmt_deploy.exporters import export
from rmt_deploy.layers import (
    LowRankConv2d,
    LowRankLinear,
    UnfusedMultiheadAttention,
    register_layer_adapter,
)
from rmt_deploy.layers.views import ADAPTERS
from rmt_deploy.plan import CompressionPlan, LayerPlan
from rmt_deploy.targets import find_targets


class StaticSamePadConv(nn.Conv2d):
    """EfficientNet(-Lite)'s Conv2dStaticSamePadding, as its package defines it: the padding is
    fixed at construction for one image size and done in forward."""

    def __init__(self, cin, cout, k, stride=1, image_size=16, **kwargs):
        super().__init__(cin, cout, k, stride, **kwargs)
        import math

        oh = math.ceil(image_size / self.stride[0])
        pad = max((oh - 1) * self.stride[0] + (k - 1) + 1 - image_size, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x):
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


# The adapter is registered for the package's class name; the test class mimics it.
register_layer_adapter("StaticSamePadConv")(ADAPTERS["Conv2dStaticSamePadding"])


def conv_zoo() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        StaticSamePadConv(3, 8, 3, stride=2, image_size=16, bias=False),
        nn.ReLU(),
        Conv2dSame(8, 12, 3, stride=2),  # TF 'SAME' from the input size, asymmetric here
        nn.ReLU(),
        StdConv2d(12, 16, 3, padding=1),
        nn.ReLU(),
        StdConv2dSame(16, 16, 3, stride=2),
        nn.ReLU(),
        ScaledStdConv2d(16, 16, 1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding="same", padding_mode="reflect"),
        nn.Flatten(),
        nn.LazyLinear(10),
    )


def full_rank_plan(model: nn.Module, names, kind="lowrank") -> CompressionPlan:
    layers = []
    for name in names:
        w = model.get_submodule(name).weight
        m, n = w.shape[0], w[0].numel()
        if kind == "lowrank":
            layers.append(
                LayerPlan(
                    name, "lowrank", tuple(w.shape), m * n, min(m, n) * (m + n), rank=min(m, n)
                )
            )
        else:
            layers.append(LayerPlan(name, "mask", tuple(w.shape), m * n, m * n, density=1.0))
    return CompressionPlan("test", {}, layers)


def _full_rank_payloads(model, the_plan):
    """Factors of the effective weight (the view's), as the strategies produce them."""
    found = find_targets(model)
    for layer in the_plan.layers:
        view = found.views[layer.name]
        left, right = truncated_svd(view.weight.double(), layer.rank)
        layer.payload = {"left": left.float(), "right": right.float()}
    return the_plan


def test_conv_subclasses_are_planned_and_exact_at_full_rank(tmp_path):
    model = conv_zoo()
    x = torch.randn(2, 3, 16, 16)
    model(x)  # materialize the lazy Linear
    model.eval()
    found = find_targets(model, example=x)
    assert [s.name for s in found.skipped] == []
    assert list(found.views) == ["0", "2", "4", "6", "8", "10", "12"]
    expected = model(x)
    for kind in ("lowrank", "mask"):
        compressed = copy.deepcopy(model)
        the_plan = full_rank_plan(compressed, list(found.views), kind)
        if kind == "lowrank":
            the_plan = _full_rank_payloads(compressed, the_plan)
        compress_(compressed, the_plan)
        assert isinstance(compressed[2], LowRankConv2d if kind == "lowrank" else nn.Conv2d)
        assert torch.allclose(compressed(x), expected, atol=1e-4, rtol=1e-4), kind
        artifact = export(compressed, tmp_path / kind, (3, 16, 16), n_verify=8)
        assert artifact.parity.passed and artifact.parity.max_abs_diff < 1e-3


def test_plan_covers_subclasses_and_low_rank_stays_close():
    """Every conv subclass is planned; each factorized layer, measured directly on images the
    plan never saw (the original layer's own inputs), loses within 2× of the output error the
    plan predicted, ‖(W − W')x‖² / ‖Wx‖², and holds exactly the parameters the plan counts."""
    model = conv_zoo()
    x = torch.randn(4, 3, 16, 16)
    model(x)
    model.eval()
    original = copy.deepcopy(model)
    torch.manual_seed(2)
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 16, 16), torch.zeros(64).long())
    p = plan(model, "lowrank", 0.1, data=data, calib_images=64)
    assert [layer.name for layer in p.layers] == ["0", "2", "4", "6", "8", "10", "12"]
    assert p.skipped == []
    compress_(model, p)
    factorized = [layer for layer in p.layers if layer.action == "lowrank"]
    assert len(factorized) >= 3
    assert sum(layer.params_after for layer in p.layers) <= 0.9 * sum(
        layer.params_before for layer in p.layers
    )
    inputs = {}
    hooks = [
        original.get_submodule(layer.name).register_forward_pre_hook(
            lambda _m, args, name=layer.name: inputs.__setitem__(name, args[0])
        )
        for layer in factorized
    ]
    with torch.no_grad():
        original(torch.randn(64, 3, 16, 16))  # images the plan did not calibrate on
    for hook in hooks:
        hook.remove()
    for layer in factorized:
        old, new = original.get_submodule(layer.name), model.get_submodule(layer.name)
        assert isinstance(new, LowRankConv2d | LowRankLinear), layer.name
        m, n = layer.weight_shape[0], math.prod(layer.weight_shape[1:])
        kept = sum(t.numel() for key, t in new.named_parameters() if not key.endswith("bias"))
        assert kept == layer.rank * (m + n) == layer.params_after < m * n, layer.name
        with torch.no_grad():
            before = old(inputs[layer.name])
            after = new(inputs[layer.name])
        bias = 0 if old.bias is None else old.bias.detach().view(1, -1, *[1] * (before.ndim - 2))
        measured = float((after - before).pow(2).sum() / (before - bias).pow(2).sum())
        predicted = layer.stats["output_error"]
        assert predicted / 2 <= measured <= 2 * predicted, (layer.name, measured, predicted)


class EncoderBlock(nn.Module):
    """torchvision ViT's block: nn.MultiheadAttention called with need_weights=False."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))

    def forward(self, x):
        y = self.ln(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(x)


def test_multihead_attention_is_unfused_planned_and_exact(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(EncoderBlock(), EncoderBlock()).eval()
    x = torch.randn(3, 7, 32)
    expected = model(x)
    fused = find_targets(model, example=x)
    assert {s.code for s in fused.skipped} == {"fused_attention"}  # out_proj is never called
    the_plan = plan(model, "magnitude", 0.0, example=x)  # unfuses in place
    assert isinstance(model[0].self_attention, UnfusedMultiheadAttention)
    assert torch.allclose(model(x), expected, atol=1e-5)  # unfusing changes nothing
    names = [layer.name for layer in the_plan.layers]
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert f"0.self_attention.{proj}" in names
    assert the_plan.skipped == []
    full = _full_rank_payloads(model, full_rank_plan(model, names))
    compress_(model, full)
    assert isinstance(model[1].self_attention.out_proj, LowRankLinear)
    assert torch.allclose(model(x), expected, atol=1e-4)
    artifact = export(model, tmp_path, (7, 32), n_verify=6)
    assert artifact.parity.passed and artifact.parity.max_abs_diff < 1e-3


def test_attention_with_bias_kv_stays_fused_and_says_why():
    mha = nn.MultiheadAttention(16, 2, add_bias_kv=True, batch_first=True)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.head = mha, nn.Linear(16, 4)

        def forward(self, x):
            return self.head(self.attn(x, x, x)[0])

    model = Block().eval()
    p = plan(model, "magnitude", 0.3, example=torch.randn(2, 5, 16))
    assert [layer.name for layer in p.layers] == ["head"]
    (skipped,) = p.skipped
    assert skipped.name == "attn.out_proj" and skipped.code == "fused_attention"
    assert "add_bias_kv" in skipped.reason


class Doubled(nn.Linear):
    """A subclass whose forward is not its weight's linear map."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_unknown_forward_is_skipped_with_the_reason():
    torch.manual_seed(0)
    model = nn.Sequential(Doubled(8, 8), nn.Linear(8, 4), nn.Conv1d(1, 1, 1))
    model.unused = nn.Linear(8, 8)

    def forward(x):
        return model[1](model[0](x))

    model.forward = forward
    found = find_targets(model, example=torch.randn(3, 8))
    by_name = {s.name: s for s in found.skipped}
    assert list(found.views) == ["1"]
    assert by_name["0"].code == "forward_differs" and "register an adapter" in by_name["0"].reason
    assert by_name["2"].code == "conv_nd"
    assert by_name["unused"].code == "never_called"
    blind = find_targets(model)  # no input to check against: the override is not trusted
    assert {s.name: s.code for s in blind.skipped}["0"] == "unverified"
    assert "1" in blind.views and "unused" in blind.views


def test_plan_summary_counts_by_reason():
    model = nn.Sequential(Doubled(8, 8), nn.Linear(8, 8), nn.Conv2d(1, 1, 1))
    model.forward = lambda x: model[1](model[0](x))
    p = plan(model, "nm24", example=torch.randn(2, 8))
    s = p.summary()
    assert s["layers"] == 1 and s["nm24_layers"] == 1
    assert s["skipped_by_reason"] == {"forward_differs": 1, "never_called": 1}
    line = p.coverage_line()
    assert line.startswith("1 layers planned: 1 2:4") and "2 skipped" in line
    again = CompressionPlan.from_dict(p.to_dict())
    assert [x.code for x in again.skipped] == [x.code for x in p.skipped]


@pytest.mark.slow
def test_efficientnet_lite1_every_layer_planned_or_explained():
    from rmt_deploy import load_model

    model = load_model("efficientnet_lite1")
    found = find_targets(model, example=torch.randn(1, 3, 240, 240))
    assert found.skipped == []
    kinds = {type(v.module).__name__ for v in found.views.values()}
    assert kinds == {"Conv2dStaticSamePadding", "Linear"}
    grouped = [n for n, v in found.views.items() if v.groups > 1]
    matrices = [n for n, v in found.views.items() if v.groups == 1]
    assert len(grouped) == 21 and len(matrices) == 44  # depthwise / 1×1 + stem + fc
