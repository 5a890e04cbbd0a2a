"""The target-side kit in export/: standalone (no torch, no rmt_deploy), run through ORT."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rmt_deploy.cli import main

KIT = Path(__file__).resolve().parent.parent / "export"


@pytest.mark.parametrize("script", ["run.py", "build_engine.py"])
def test_kit_needs_neither_torch_nor_rmt_deploy(script):
    tree = ast.parse((KIT / script).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & {"torch", "torchvision", "timm", "rmt_deploy"}, names


@pytest.fixture(scope="module")
def exported(tmp_path_factory, assets):
    """ResNet-20 exported once for both kit runs."""
    out = tmp_path_factory.mktemp("kit")
    args = [
        "--quiet",
        "--assets",
        str(assets),
        "export",
        "cifar_resnet20",
        "--out",
        str(out),
        "--verify-images",
        "8",
    ]
    assert main(args) == 0
    return out


def run_kit(exported, *extra):
    return subprocess.run(
        [
            sys.executable,
            str(KIT / "run.py"),
            "--onnx",
            str(exported / "model.onnx"),
            "--manifest",
            str(exported / "manifest.json"),
            "--warmup-seconds",
            "0.2",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
    )


def test_run_onnx_on_real_images_matches_eval(exported, tmp_path, cifar_test, assets, capsys):
    assert (
        main(
            [
                "--quiet",
                "--assets",
                str(assets),
                "eval",
                "cifar_resnet20",
                "--data",
                str(cifar_test),
                "--limit",
                "300",
                "--json",
            ]
        )
        == 0
    )
    expected = json.loads(capsys.readouterr().out)["top1"]
    result = tmp_path / "run.json"
    done = run_kit(
        exported,
        "--images",
        str(cifar_test),
        "--limit",
        "300",
        "--batch",
        "50",
        "--threads",
        "2",
        "--json",
        str(result),
    )
    data = json.loads(result.read_text())
    assert data["images"] == 300 and data["top1"] == pytest.approx(expected, abs=1e-6)
    assert "p99" in data["latency_ms"] and "top-1" in done.stdout


def test_run_random_input_latency(exported):
    done = run_kit(exported, "--batch", "4", "--iterations", "20")
    assert "batch 4, 20 runs" in done.stdout and "median" in done.stdout
