"""The GPU suite's dry run: every step on the CPU at toy sizes, with the packages the lent GPU
image lacks blocked, so the GPU run cannot rot unseen (benchmarks/gpu_suite.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_assets import prepare  # noqa: E402

STEPS = ["probe", "kernels_24", "latency_vit", "latency_cnn", "accuracy_cifar_vit", "ddp",
         "compile_vit"]  # fmt: skip
# Not on the GPU image (issue: TracyWidom is sdist-only; OpenVINO, TensorRT too large).
ABSENT = ("TracyWidom", "openvino", "onnxslim", "tensorrt", "efficientnet_lite_pytorch", "nncf")


def suite(tmp_path: Path, assets: Path, *args: str) -> subprocess.CompletedProcess:
    blocker = tmp_path / "blocked"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in ABSENT)
    )
    env = {**os.environ, "PYTHONPATH": str(blocker), "PYTHON": sys.executable}
    command = ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--assets", str(assets), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500)


@pytest.fixture(scope="module")
def tiny_assets(assets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "gpu_assets"
    prepare(assets, out, train_per_class=20, test_per_class=10)
    return out


def test_asset_subset_keeps_the_layout(tiny_assets):
    for part, per_class in (("train", 20), ("test", 10)):
        folders = sorted((tiny_assets / "cifar10" / part).iterdir())
        assert [f.name for f in folders][:2] == ["airplane", "automobile"] and len(folders) == 10
        assert all(len(list(f.iterdir())) == per_class for f in folders)


@pytest.mark.slow
def test_dry_run_runs_every_step(tmp_path, tiny_assets):
    out = tmp_path / "out"
    done = suite(tmp_path, tiny_assets, "--out", str(out), "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert {name: r["status"] for name, r in summary["steps"].items()} == dict.fromkeys(STEPS, "ok")

    vit = json.loads((out / "latency_vit.json").read_text())
    # Dry ViT: width 64, MLP 256, 2 blocks, 8×8 patches. Uniform SVD at s = 0.5, multiple 16:
    # qkv 192×64 → ⌊0.5·192·64/256⌋ = 24 → 16; proj 64×64 → 16; fc1/fc2 256×64 → 25 → 16;
    # patch conv 64×192 → 24 → 16; head 1000×64 → 30 → 16.
    assert set(vit["variants"]["lowrank"]["ranks"].values()) == {16}
    assert len(vit["variants"]["lowrank"]["ranks"]) == 10
    # 2:4 on 2 blocks × (qkv, proj, fc1, fc2) + head; the patch conv has 3 input channels.
    assert vit["variants"]["nm24"]["nm24_layers"] == 9
    for dtype in ("fp16", "bf16"):
        rows = vit["dtypes"][dtype]
        assert list(rows) == ["dense", "lowrank", "nm24", "lowrank+nm24"]
        for row in rows.values():
            assert row["rel_error_vs_fp32"] < 0.05  # half precision of the same model
            for cell in row["batches"].values():
                assert cell["min_ms"] <= cell["median_ms"] <= cell["max_ms"]
        assert {c["speedup"] for c in rows["dense"]["batches"].values()} == {1.0}
    cnn = json.loads((out / "latency_cnn.json").read_text())
    assert cnn["variants"]["lowrank"]["params"] < cnn["variants"]["dense"]["params"]

    accuracy = json.loads((out / "accuracy_cifar_vit.json").read_text())
    assert accuracy["train_images"] == 200 and accuracy["test_images"] == 100
    for row in accuracy["rows"].values():
        assert row["steps"] == 3 and 0 <= row["top1_recovered"] <= 100
        assert row["top1_deployed"] == row["top1_recovered"]  # fp32 on the CPU: same model
    ddp = json.loads((out / "ddp.json").read_text())
    assert (ddp["backend"], ddp["world_size"], ddp["steps"]) == ("gloo", 1, 2)
    compiled = json.loads((out / "compile_vit.json").read_text())["rows"]
    assert set(compiled) == {"dense", "lowrank", "nm24", "lowrank+nm24"}
    assert all(row["max_abs_diff"] < 1e-3 for row in compiled.values())


def test_a_spent_budget_fails_the_run(tmp_path, tiny_assets):
    out = tmp_path / "out"
    done = suite(tmp_path, tiny_assets, "--out", str(out), "--dry-run", "--budget-s", "0")
    assert done.returncode == 1
    statuses = json.loads((out / "summary.json").read_text())["steps"]
    assert list(statuses) == STEPS
    assert all(r["status"].startswith("not run") for r in statuses.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")
def test_without_a_gpu_the_suite_refuses(tmp_path, tiny_assets):
    done = suite(tmp_path, tiny_assets, "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "no CUDA device visible" in done.stderr and "--dry-run" in done.stderr


def test_unknown_step_is_refused(tmp_path, tiny_assets):
    done = suite(tmp_path, tiny_assets, "--out", str(tmp_path / "o"), "--steps", "latency,probe")
    assert done.returncode == 2 and "unknown steps ['latency']" in done.stderr
