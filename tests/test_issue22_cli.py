"""Issue 22's CLI items: Ctrl-C in `bench` is one line (its memory child no longer prints its
own traceback), `export --static-batch` passes its own parity check, and a refused pickle
says how to save the weights safely instead of torch's advice to load it unsafely."""

import multiprocessing
import os
import signal

import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rmt_deploy.cli import main
from rmt_deploy.errors import CheckpointError


class SelfInterrupting(nn.Module):
    """Sends itself SIGINT in a child process, as a terminal's Ctrl-C reaches every process of
    the group (module-level, so that a spawned process can unpickle it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if multiprocessing.parent_process() is not None:
            os.kill(os.getpid(), signal.SIGINT)
        return self.fc(x.flatten(1))


def test_bench_memory_child_leaves_ctrl_c_to_the_parent(capfd):
    from rmt_deploy.bench.memory import peak_memory_mb

    rss, _, why = peak_memory_mb({"model": SelfInterrupting()}, "torch", {}, (2, 3, 2, 2))
    err = capfd.readouterr().err
    assert why is None and rss is not None and rss > 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_bench_interrupted_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch, assets):
    import rmt_deploy.bench.runner as runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "time_runs", interrupted)
    code = main(
        ["--quiet", "bench", "cifar_resnet20", "--out", str(tmp_path / "b"), "--backends",
         "torch", "--batches", "1", "--runs", "2", "--warmup", "0"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 130
    assert (
        err == "rmt-deploy: interrupted; rerun the same command — no output was left half-written\n"
    )


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))


@pytest.mark.parametrize("with_data", [False, True])
def test_static_batch_export_passes_parity_with_a_fixed_batch(tmp_path, with_data):
    from rmt_deploy.exporters import export

    data = TensorDataset(torch.randn(10, 3, 8, 8), torch.zeros(10)) if with_data else None
    artifact = export(
        _tiny().eval(), tmp_path, (3, 8, 8), dynamic_batch=False, verify_data=data, n_verify=10
    )
    assert artifact.parity.passed and artifact.parity.n_images == 10
    graph = onnx.load(str(artifact.onnx_path))
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.HasField("dim_value") and batch.dim_value == 1  # really static


def test_static_batch_through_the_cli(tmp_path, capsys, assets):
    code = main(
        ["--quiet", "export", "cifar_resnet20", "--out", str(tmp_path / "e"), "--static-batch",
         "--verify-images", "4"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "top-1 agreement 100.00 %" in captured.out
    graph = onnx.load(str(tmp_path / "e" / "model.onnx"))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


class _Payload:
    """Unpickling this runs a command: what a refused pickle must never do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_needing_arbitrary_objects_names_the_safe_fix(tmp_path, capsys, assets):
    from rmt_deploy.models.checkpoint import read_state_dict

    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError) as e:
        read_state_dict(path)
    message = str(e.value)
    assert "holds arbitrary Python objects (posix.system)" in message
    assert "model.state_dict()" in message and "safetensors" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    assert e.value.__cause__ is None and e.value.__suppress_context__  # torch's advice hidden
    code = main(["--quiet", "eval", "cifar_resnet20", "--checkpoint", str(path), "--data", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "arbitrary Python objects" in err
    assert "weights_only" not in err.replace("weights_only=True", "")
    assert not marker.exists()
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*\(Unsupported operand"):
        read_state_dict(corrupt)  # torch's detail kept, its advice to load unsafely left out
