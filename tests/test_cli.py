"""The CLI end to end: outputs written, and one clear line plus exit 2 for bad input."""

import json
import re
import subprocess
import sys

import torch

from rmt_deploy.cli import main
from rmt_deploy.models import CifarResNet


def run(capsys, *argv):
    code = main(["--quiet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_resnet56_writes_report(capsys, tmp_path, assets):
    code, out, err = run(
        capsys, "--assets", str(assets), "analyze", "cifar_resnet56", "--out", str(tmp_path)
    )
    assert code == 0, err
    data = json.loads((tmp_path / "spectrum.json").read_text())
    assert data["model"] == "cifar_resnet56" and data["summary"]["fitted"] == 55
    assert data["layers"][-1]["skipped"].startswith("too small")
    md = (tmp_path / "spectrum.md").read_text()
    assert "| `layer3.8.conv2` | conv2d | 64×576 |" in md and "## Skipped layers" in md
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert len(plots) == 55 and "layer2.0.conv1.png" in plots
    assert all((tmp_path / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert not [p for p in tmp_path.rglob(".*tmp")]  # no temporary files left behind
    assert "55 layers fitted" in out


def test_analyze_timm_vit_no_plots(capsys, tmp_path):
    code, out, err = run(
        capsys,
        "analyze",
        "vit_tiny_patch16_224",
        "--out",
        str(tmp_path),
        "--no-plots",
        "--beta",
        "0.5",
    )
    assert code == 0, err
    data = json.loads((tmp_path / "spectrum.json").read_text())
    assert data["beta"] == 0.5 and data["summary"]["fitted"] == 50
    assert not (tmp_path / "plots").exists()


def test_eval_limit_json(capsys, cifar_test):
    code, out, err = run(
        capsys, "eval", "cifar_resnet20", "--data", str(cifar_test), "--limit", "200", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["n_images"] == 200 and 60 < result["top1"] <= 100


def _bad_checkpoints(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 truncated zip")
    nan_state = CifarResNet(20).state_dict()
    nan_state["conv1.weight"].fill_(float("nan"))
    torch.save(nan_state, tmp_path / "nan.pth")
    torch.save(CifarResNet(32).state_dict(), tmp_path / "r32.pth")
    return corrupt, tmp_path / "nan.pth", tmp_path / "r32.pth"


def test_bad_input_exits_2_with_one_clear_line(capsys, tmp_path, assets):
    corrupt, nan, other = _bad_checkpoints(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = str(tmp_path / "out")
    cases = [
        (
            ["analyze", "cifar_resnet20", "--checkpoint", str(tmp_path / "none.pth"), "--out", out],
            "checkpoint not found",
        ),
        (
            ["analyze", "cifar_resnet20", "--checkpoint", str(corrupt), "--out", out],
            "cannot read checkpoint",
        ),
        (
            ["analyze", "cifar_resnet20", "--checkpoint", str(other), "--out", out],
            "does not match the model",
        ),
        (["analyze", "cifar_resnet20", "--checkpoint", str(nan), "--out", out], "NaN/Inf"),
        (["analyze", "vit_base_patch16_2244", "--out", out], "unknown model"),
        (
            ["analyze", "cifar_resnet20", "--out", str(blocker / "sub")],
            "cannot write to output directory",
        ),
        (["eval", "cifar_resnet20", "--data", str(tmp_path)], "not an image folder"),
        (["eval", "cifar_resnet20", "--data", str(assets / "cifar10")], "point at"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert err.startswith("rmt-deploy: error:") and message in err, (argv, err)
        assert "Traceback" not in err and err.count("\n") == 1


def test_bad_options_are_rejected_by_the_parser(capsys, tmp_path):
    code = main(["analyze", "cifar_resnet20", "--out", str(tmp_path), "--alpha", "0.7"])
    err = capsys.readouterr().err
    assert code == 2 and "--alpha must lie in (0, 0.5), got 0.7" in err
    assert err.startswith("rmt-deploy: error: analyze:") and err.count("\n") == 1


def test_console_entry_point():
    """`python -m rmt_deploy` and the installed `rmt-deploy` script are the same CLI: every
    verb listed, a verb's own help, and an unknown verb refused in one line with exit 2."""
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parent.parent
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"rmt-deploy": "rmt_deploy.cli:main"}
    script = Path(sys.executable).parent / "rmt-deploy"
    for command in ([sys.executable, "-m", "rmt_deploy"], [str(script)]):
        done = subprocess.run([*command, "--help"], capture_output=True, text=True)
        assert done.returncode == 0
        listed = re.findall(r"^    (\w+)  ", done.stdout, flags=re.MULTILINE)
        verbs = ["analyze", "compress", "export", "build", "bench", "run", "report", "eval"]
        assert listed == verbs
        verb = subprocess.run([*command, "export", "--help"], capture_output=True, text=True)
        assert verb.returncode == 0 and "--opset" in verb.stdout
        bad = subprocess.run([*command, "prune"], capture_output=True, text=True)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
        assert "invalid choice: 'prune'" in bad.stderr


def test_compress_then_eval(capsys, tmp_path, assets, cifar_test):
    out = tmp_path / "c20"
    code, stdout, err = run(
        capsys,
        "compress",
        "cifar_resnet20",
        "--strategy",
        "seb",
        "--sparsity",
        "0.4",
        "--data",
        str(assets / "cifar10" / "train"),
        "--bn-recal-images",
        "400",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "seb s=0.4" in stdout and (out / "model.safetensors").is_file()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["strategy"] == "seb" and abs(plan["summary"]["sparsity"] - 0.4) < 1e-4
    code, stdout, err = run(
        capsys,
        "eval",
        "cifar_resnet20",
        "--checkpoint",
        str(out / "model.safetensors"),
        "--data",
        str(cifar_test),
        "--limit",
        "300",
        "--json",
    )
    assert code == 0, err
    assert json.loads(stdout)["top1"] > 50  # 40 % pruned + BN recal: still a working model
    code, _, err = run(
        capsys,
        "eval",
        "cifar_resnet32",
        "--checkpoint",
        str(out / "model.safetensors"),
        "--data",
        str(cifar_test),
    )
    assert code == 2 and "does not match the model" in err  # made for another model


def test_compress_bad_input(capsys, tmp_path):
    out = str(tmp_path / "o")
    code, _, err = run(capsys, "compress", "cifar_resnet20", "--strategy", "magic", "--out", out)
    assert code == 2 and "unknown strategy 'magic'" in err and "nm24" in err
    code, _, err = run(capsys, "compress", "cifar_resnet20", "--strategy", "ser", "--out", out)
    assert code == 2 and "needs training/calibration data" in err
    code, _, err = run(
        capsys,
        "compress",
        "cifar_resnet20",
        "--strategy",
        "classic_rmt",
        "--set",
        "tau=1",
        "--out",
        out,
    )
    assert code == 2 and "no setting tau" in err
    code = main(
        ["compress", "cifar_resnet20", "--strategy", "seb", "--sparsity", "1.0", "--out", out]
    )
    assert code == 2 and "--sparsity must lie in [0, 1), got 1.0" in capsys.readouterr().err
