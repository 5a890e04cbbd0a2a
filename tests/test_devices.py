"""Devices honoured end to end: calibration, BatchNorm re-estimation, fine-tuning and
evaluation put the model and every batch on the device asked for, and refuse one that is not
there. The CUDA test runs where a GPU is."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rmt_deploy.budget import model_outputs
from rmt_deploy.calibration import collect_input_stats
from rmt_deploy.errors import RmtDeployError
from rmt_deploy.evaluate import evaluate
from rmt_deploy.layers import layer_view
from rmt_deploy.recovery import FinetuneConfig, bn_recalibrate, finetune


class Spy(nn.Module):
    """Records the device of every input batch and of its weights at each call."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)
        self.seen: list[tuple[str, str]] = []

    def forward(self, x):
        self.seen.append((x.device.type, self.conv.weight.device.type))
        return self.fc(self.bn(self.conv(x)).flatten(1))


def data(n=24):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    )


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_every_step_runs_where_asked(device):
    model = Spy()
    finetune(
        model, data(), FinetuneConfig(max_steps=3, batch_size=8), device=device, progress=False
    )
    bn_recalibrate(model, data(), n_images=16, batch_size=8, device=device)
    stats = collect_input_stats(
        model, {"fc": layer_view(model.fc)}, DataLoader(data(), batch_size=8), 16, device=device
    )
    outputs, _ = model_outputs(model, data(), workers=0, device=device)
    result = evaluate(model, data(), workers=0, progress=False, device=device)
    assert model.seen and set(model.seen) == {(device, device)}
    assert stats["fc"].images == 16 and stats["fc"].gram[0].device.type == "cpu"
    assert outputs.device.type == "cpu" and 0 <= result.top1 <= 100


def test_a_device_that_is_not_there_is_refused():
    model = Spy()
    with pytest.raises(RmtDeployError, match="unsupported device 'meta'|unknown device"):
        finetune(model, data(), FinetuneConfig(max_steps=1), device="meta", progress=False)
    with pytest.raises(RmtDeployError, match="unknown device 'tpu'"):
        evaluate(model, data(), progress=False, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RmtDeployError, match="no CUDA device is visible"):
            bn_recalibrate(model, data(), device="cuda")
    assert not model.seen  # refused before any work


def _finetune_recording_dtypes(device: str) -> tuple[Spy, dict, list[torch.dtype]]:
    """Two fine-tuning steps on `device`; the dtype of fc's output at every forward call, and
    the weights before (a CPU copy)."""
    model = Spy()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dtypes: list[torch.dtype] = []
    model.fc.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    finetune(
        model, data(), FinetuneConfig(max_steps=2, batch_size=8), device=device, progress=False
    )
    return model, before, dtypes


def test_cpu_finetune_stays_in_float32():
    """On the CPU autocast is off: both steps' forwards are float32 and the weights move."""
    model, before, dtypes = _finetune_recording_dtypes("cpu")
    assert dtypes == [torch.float32, torch.float32]  # one forward per step, nothing else
    assert not torch.equal(model.fc.weight.detach(), before["fc.weight"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_finetune_uses_autocast():
    """Each of the two steps runs its forward in bf16 on a GPU with bf16 tensor cores (compute
    capability 8.0, Ampere, and newer), in fp16 before; the fp32 master weights are trained."""
    model, before, dtypes = _finetune_recording_dtypes("cuda")
    major, _ = torch.cuda.get_device_capability()
    expected = torch.bfloat16 if major >= 8 else torch.float16
    assert dtypes == [expected, expected]
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32 and param.device.type == "cuda", name
    assert not torch.equal(model.fc.weight.detach().cpu(), before["fc.weight"])
