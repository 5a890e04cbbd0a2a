"""`rmt-deploy run`: config validation, the stages end to end on a real model, resuming,
dependencies, and the latency-aware planner on a model where low rank must win."""

import copy
import importlib.util
import json
import shutil

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from rmt_deploy.budget import BudgetError
from rmt_deploy.cli import main
from rmt_deploy.compress import compress_
from rmt_deploy.errors import DataError
from rmt_deploy.pipeline import ConfigError, RunConfig, StageDependencyError, load_config, run
from rmt_deploy.pipeline import stages as stage_module
from rmt_deploy.pipeline.run import StageNameError
from rmt_deploy.plan import CompressionPlan
from rmt_deploy.planner import BudgetNotMetError, latency_plan
from rmt_deploy.usercode import UserCodeError

run_module = importlib.import_module("rmt_deploy.pipeline.run")  # `pipeline.run` is the function

TINY = {
    "model": "cifar_resnet20",
    "analyze": {"plots": False},
    "data": {"calib_images": 128, "val_images": 200, "test_images": 300},
    "compress": {
        "strategy": "latency",
        "accuracy_budget": 100,  # the search itself, not its outcome, is under test here
        "batch": 32,
        "targets": ["onnxruntime"],
        "settings": {"rounds": 2, "runs": 3, "finalists": 1, "sensitivity_images": 8},
    },
    "finetune": {"steps": 2, "batch_size": 32, "bn_recal_images": 200},
    "export": {"verify_images": 16},
    "benchmark": {
        "backends": ["torch", "onnxruntime"],
        "batches": [1],
        "runs": 4,
        "warmup_s": 0.05,
        "agreement_images": 40,
    },
}


def _config(tmp_path, **changes) -> RunConfig:
    raw = json.loads(json.dumps(TINY))
    raw["output"] = str(tmp_path / "run")
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            raw[section][key] = value
        else:
            raw[section] = value
    return RunConfig.from_dict(raw)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"model": "x", "finetun": {}}, "unknown key finetun"),
        ({"model": "x", "finetune": {"step": 3}}, "unknown key finetune.step"),
        ({"model": "x", "finetune": {"steps": "many"}}, "finetune.steps: expected an integer"),
        ({"model": "x", "finetune": None}, r"finetune: null .* off: finetune: \{steps: 0\}"),
        ({"model": "x", "export": None}, "export: null is not a section: leave it out"),
        ({"model": "x", "benchmark": {"batches": [1, "a"]}}, r"benchmark.batches\[1\]"),
        ({"model": "x", "compress": {"sparsity": 1.5}}, r"sparsity must lie in \[0, 1\)"),
        ({"model": "x", "compress": {"strategy": "magic"}}, "unknown 'magic'"),
        ({"model": "x", "benchmark": {"backends": ["tensorflow"]}}, "unknown tensorflow"),
        ({"model": "x", "benchmark": {"backends": ["tensorrt"]}}, "export.tensorrt is not"),
        ({"model": "x", "export": {"tensorrt": {"batch": "8:1:1"}}}, "MIN:OPT:MAX"),
        ({"finetune": {}}, "missing required key model"),
        (["model"], "must be a mapping"),
    ],
)
def test_bad_configs_are_named(raw, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(raw)


def test_config_file_errors_through_the_cli(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: cifar_resnet20\nfinetune: {steps: [1\n")
    assert main(["run", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({"model": "cifar_resnet20", "export": {"onnx": "yes"}}))
    assert main(["run", str(bad)]) == 2
    assert "export.onnx: expected true or false" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        load_config(bad)


def test_examples_are_valid_configs():
    from pathlib import Path

    examples = sorted(Path(__file__).resolve().parents[1].glob("examples/*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        load_config(path)


def test_stage_with_missing_dependency(tmp_path):
    with pytest.raises(StageDependencyError, match="stage export needs analyze"):
        run(_config(tmp_path), stages=["export"], progress=False, log=lambda _: None)
    with pytest.raises(StageNameError, match="unknown stage"):
        run(_config(tmp_path), stages=["deploy"], progress=False, log=lambda _: None)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, assets):
    tmp = tmp_path_factory.mktemp("pipeline")
    config = _config(tmp)
    result = run(config, progress=False, log=lambda _: None)
    return tmp, config, result


def test_pipeline_end_to_end(finished_run):
    tmp, config, result = finished_run
    out = result.output
    assert result.ran == [
        "analyze",
        "plan",
        "compress",
        "evaluate",
        "export",
        "benchmark",
        "report",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    for stage in result.ran[:-1]:
        entry = manifest["stages"][stage]
        assert entry["artifacts"] and all((out / a).is_file() for a in entry["artifacts"])
    accuracy = json.loads((out / "evaluate" / "accuracy.json").read_text())
    assert accuracy["test_images"] == 300 and accuracy["reference"] == "dense_finetuned"
    assert 70 < accuracy["top1"]["dense"] <= 100  # the real pretrained ResNet-20
    planner = json.loads((out / "plan" / "planner.json").read_text())
    assert planner["deployments"] == ["onnxruntime"] and planner["budget"] == 100
    (baseline,) = planner["baselines"]
    assert baseline["label"] == "dense / onnxruntime" and baseline["measured_ms"] > 0
    assert baseline["heldout_loss"] == 0.0  # fp32 deployment: validated as the dense model
    assert planner["candidates"] and all(
        c["heldout_loss_upper"] is not None for c in planner["candidates"]
    )
    (finalist,) = planner["finalists"]  # settings.finalists: 1
    assert finalist["predicted_ms"] > 0 and finalist["q1_ms"] <= finalist["measured_ms"]
    assert planner["chosen"] in {"dense / onnxruntime", finalist["label"]}
    tables = json.loads((out / "plan" / "layer_tables.json").read_text())
    entries = tables["tables"]["onnxruntime"]["layers"]
    assert len(entries) == 20 and all(e["options"][0]["form"] == "dense" for e in entries)
    assert all(o["ms"] > 0 for e in entries for o in e["options"])
    assert all(o["rank"] % 8 == 0 for e in entries for o in e["options"] if o["rank"])
    split = json.loads((out / "evaluate" / "split.json").read_text())["parts"]
    assert split["val"]["count"] == 200 and split["test"]["count"] == 300
    assert not set(split["val"]["images"]) & set(split["test"]["images"])
    assert split["calib"]["from"].endswith("cifar10/train")
    plan_summary = manifest["stages"]["plan"]["summary"]
    assert plan_summary["coverage"].startswith("20 layers planned")  # 19 convs + the linear
    assert plan_summary["skipped_layers"] == 0
    bench = json.loads((out / "bench" / "bench.json").read_text())
    variants = {"dense", "compressed"} if plan_summary["lowrank_layers"] else {"dense"}
    assert {(r["variant"], r["backend"]) for r in bench["results"]} == {
        (v, b) for v in variants for b in ("torch", "onnxruntime")
    }
    report = (out / "report.md").read_text()
    assert "## Accuracy" in report and "## Speed" in report and "**Shipped:" in report
    assert "| plan validation | 200 |" in report and "| test | 300 |" in report
    assert "Shipped: the dense model" not in report
    assert not list(out.rglob("*.tmp"))


def test_every_file_of_the_run_is_where_the_layout_says(finished_run):
    """One object owns the run folder's paths: every stage's record file is at its RunLayout
    path, and every artifact the manifest lists exists there."""
    from rmt_deploy.layout import RunLayout

    _, _, result = finished_run
    at = RunLayout(result.output)
    for path in (at.manifest, at.config, at.spectrum, at.plan, at.payloads, at.planner,
                 at.compressed, at.finetune, at.accuracy, at.split, at.bench, at.report_md,
                 at.report_json):  # fmt: skip
        assert path.is_file(), path
    assert at.export("dense").onnx.is_file() and at.export("compressed").manifest.is_file()
    listed = json.loads(at.manifest.read_text())["stages"]
    for stage, entry in listed.items():
        for artifact in entry["artifacts"]:
            assert (result.output / artifact).exists(), (stage, artifact)


def test_rerun_skips_and_changes_rerun_only_what_depends(finished_run, monkeypatch, tmp_path):
    _, _, result = finished_run
    shutil.copytree(result.output, tmp_path / "run")  # the other tests keep the original
    quiet = dict(progress=False, log=lambda _: None)
    again = run(_config(tmp_path), **quiet)
    assert again.ran == [] and len(again.skipped) == 7
    changed = _config(tmp_path, benchmark__batches=[2])

    # A crash in the benchmark: earlier stages stay done, nothing half-written is left.
    def crash(ctx):
        (ctx.out / "bench").mkdir(exist_ok=True)
        raise RuntimeError("killed")

    monkeypatch.setitem(stage_module.STAGE_FUNCTIONS, "benchmark", crash)
    monkeypatch.setattr(run_module, "ISOLATED", ())  # the crash is patched into this process
    with pytest.raises(RuntimeError, match="killed"):
        run(changed, **quiet)
    monkeypatch.undo()
    resumed = run(changed, **quiet)
    assert resumed.ran == ["benchmark", "report"]
    assert "analyze" in resumed.skipped and "compress" in resumed.skipped
    bench = json.loads((resumed.output / "bench" / "bench.json").read_text())
    assert {r["batch"] for r in bench["results"]} == {2, 32}  # + the deployment batch
    # Forcing a stage makes everything downstream of it stale.
    forced = run(changed, stages=["export"], force=True, **quiet)
    assert forced.ran == ["export"]
    with pytest.raises(StageDependencyError, match="stage report needs benchmark"):
        run(changed, stages=["report"], **quiet)


def test_budget_no_plan_meets_ships_dense(finished_run, tmp_path, capsys):
    src, _, result = finished_run
    shutil.copytree(result.output, tmp_path / "run")
    # KL ≤ 0: only the dense model itself keeps it.
    config = _config(tmp_path, compress__accuracy_budget=0.0, compress__budget_metric="kl")
    done = run(config, progress=False, log=lambda _: None)
    out = done.output
    assert done.ran == ["plan", "compress", "evaluate", "export", "benchmark", "report"]
    plan = json.loads((out / "plan" / "plan.json").read_text())
    assert plan["summary"]["dense_layers"] == plan["summary"]["layers"] == 20
    assert plan["summary"]["dense_by_reason"] == {"budget": 20}
    planner = json.loads((out / "plan" / "planner.json").read_text())
    assert planner["outcome"].startswith("no plan keeps the held-out kl loss within 0.0 nats")
    assert planner["chosen"] == "dense / onnxruntime" and planner["finalists"] == []
    accuracy = json.loads((out / "evaluate" / "accuracy.json").read_text())
    assert accuracy["shipped"] == "dense" and accuracy["loss_pp"] == 0.0
    assert "dense_finetuned" not in accuracy["top1"]  # nothing compressed: no recovery run
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert {r["variant"] for r in bench["results"]} == {"dense"}
    assert not (out / "export" / "compressed" / "model.onnx").exists()
    report = (out / "report.md").read_text()
    assert "**Shipped: the dense model** on onnxruntime" in report and "loses" in report
    # Scripts that want compression or nothing keep today's error (exit 2 through the CLI).
    strict = _config(
        tmp_path / "strict",
        compress__accuracy_budget=0.0,
        compress__budget_metric="kl",
        compress__require_compression=True,
    )
    with pytest.raises(BudgetNotMetError, match="within 0.0 nats"):
        run(strict, progress=False, log=lambda _: None)
    assert (tmp_path / "strict" / "run" / "plan" / "planner.md").is_file()
    assert not (tmp_path / "strict" / "run" / "plan" / "plan.json").exists()


def test_planner_factorizes_where_it_is_faster(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(48, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 4),
    ).eval()
    with torch.no_grad():  # the middle layer: rank 16 signal plus a little noise
        a, b = torch.randn(512, 16), torch.randn(16, 512)
        model[3].weight.copy_(a @ b / 30 + 0.001 * torch.randn(512, 512))
    data = TensorDataset(torch.randn(256, 3, 4, 4), torch.randint(0, 4, (256,)))
    the_plan, report = latency_plan(
        model, data, backend="torch", batch=64, layer_error=0.01, calib_images=256, progress=False
    )
    middle = the_plan.layer("3")
    assert middle.action == "lowrank" and 16 <= middle.rank < 64
    assert middle.stats["chosen_ms"] < middle.stats["dense_ms"] and "measured" in middle.reason
    assert the_plan.layer("5").action == "dense"  # 512→4: nothing to gain
    assert report.candidates[0].predicted_speedup > 1
    # The plan and its tensors round-trip through files and compress the same.
    the_plan.save(tmp_path / "plan.json")
    the_plan.save_payloads(tmp_path / "payload.safetensors")
    loaded = CompressionPlan.load(tmp_path / "plan.json").load_payloads(
        tmp_path / "payload.safetensors"
    )
    x = torch.randn(5, 3, 4, 4)
    direct = compress_(copy.deepcopy(model), the_plan)(x)
    assert torch.equal(compress_(copy.deepcopy(model), loaded)(x), direct)
    assert torch.allclose(direct, model(x), atol=0.05, rtol=0.05)


def test_planner_bad_input(tmp_path):
    from rmt_deploy.deploy import DeploymentError
    from rmt_deploy.errors import RmtDeployError
    from rmt_deploy.planner import TableMismatchError

    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    data = TensorDataset(torch.randn(8, 3, 4, 4), torch.randint(0, 4, (8,)))
    with pytest.raises(RmtDeployError, match="needs held-out images"):
        latency_plan(model, data, accuracy_budget=1.0, progress=False)
    with pytest.raises(DeploymentError, match="deployment tensorrt cannot run here: no CUDA"):
        latency_plan(model, data, backend="tensorrt", layer_error=0.1, progress=False)
    with pytest.raises(DeploymentError, match="unknown deployment tflite"):
        latency_plan(model, data, targets=["tflite"], layer_error=0.1, progress=False)
    if importlib.util.find_spec("openvino") is not None:  # bf16 on a CPU without it
        from rmt_deploy.deploy import openvino_default_precision

        if openvino_default_precision() != "bf16":
            with pytest.raises(DeploymentError, match="openvino-bf16 cannot run here.*bf16"):
                latency_plan(
                    model, data, targets=["openvino-bf16"], layer_error=0.1, progress=False
                )
    with pytest.raises(RmtDeployError, match="latency_target must be > 0"):
        latency_plan(
            model, data, heldout=data, accuracy_budget=1.0, latency_target=-2, progress=False
        )
    # A table measured for another model is refused, naming both.
    table = tmp_path / "tables.json"
    latency_plan(model, data, backend="onnxruntime", layer_error=0.1, table=table, progress=False)
    other = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    with pytest.raises(TableMismatchError, match="another model .* here"):
        latency_plan(
            other, data, backend="onnxruntime", layer_error=0.1, table=table, progress=False
        )


def test_cli_run_reports_up_to_date(finished_run, tmp_path, capsys):
    _, config, result = finished_run
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert main(["--quiet", "run", str(path), "--output", str(result.output)]) == 0
    out = capsys.readouterr().out
    assert "ran nothing" in out and "report:" in out
    assert main(["--quiet", "run", str(path), "--accuracy-budget", "-1"]) == 2
    assert "--accuracy-budget must be a finite number ≥ 0" in capsys.readouterr().err


def test_fixed_strategy_reuses_the_analysis(finished_run, tmp_path):
    _, _, result = finished_run
    shutil.copytree(result.output, tmp_path / "run")
    config = _config(tmp_path, compress={"strategy": "nm24"})
    again = run(config, progress=False, log=lambda _: None)
    assert again.skipped == ["analyze"] and again.ran[0] == "plan"
    plan = json.loads((again.output / "plan" / "plan.json").read_text())
    assert plan["strategy"] == "nm24" and plan["summary"]["nm24_layers"] > 0
    assert "at sparsity 0.5" in (again.output / "report.md").read_text()


# What the caller's process holds after export and benchmark, printed by a fresh interpreter.
_RUNTIMES_PROBE = """
import json, sys
import rmt_deploy as rd
config = rd.load_config(sys.argv[1])
result = rd.run(config, stages=["export", "benchmark"], force=True, progress=False,
                log=lambda _: None)
loaded = [m for m in ("onnxruntime", "openvino", "onnx", "tensorrt") if m in sys.modules]
print(json.dumps({"ran": result.ran, "loaded": loaded}))
"""


def test_export_and_benchmark_leave_the_runtimes_out_of_the_callers_process(
    finished_run, tmp_path, assets
):
    """A second `rd.run` in one process died after a benchmark had loaded OpenVINO: the
    stages that load runtimes run in a child, and the caller never imports them."""
    import subprocess
    import sys

    _, config, result = finished_run
    shutil.copytree(result.output, tmp_path / "run")
    raw = config.to_dict() | {"output": str(tmp_path / "run"), "assets": str(assets)}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [sys.executable, "-c", _RUNTIMES_PROBE, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"ran": ["export", "benchmark"], "loaded": []}
    bench = json.loads((tmp_path / "run" / "bench" / "bench.json").read_text())
    assert {r["backend"] for r in bench["results"]} == {"torch", "onnxruntime"}


def _flat_unlabelled(folder, cifar_test, n=90):
    """A folder of images without labels (symlinks to CIFAR test images)."""
    folder.mkdir()
    files = sorted(cifar_test.glob("*/*.jpg"))[:: 10000 // n][:n]
    for i, f in enumerate(files):
        (folder / f"{i:04d}.jpg").symlink_to(f)
    return folder


ONE_FOLDER = {
    "train": None,
    "calib": "test",
    "calib_images": 32,
    "val_images": 24,
    "test_images": 30,
}
NO_TRAINING = {"steps": 0, "bn_recal_images": 0}


def test_unlabelled_folder_planned_by_cosine_in_three_disjoint_parts(tmp_path, cifar_test):
    flat = _flat_unlabelled(tmp_path / "flat", cifar_test)
    config = _config(
        tmp_path,
        data={**ONE_FOLDER, "test": str(flat)},
        finetune=NO_TRAINING,
        compress__budget_metric="cosine",
        compress__accuracy_budget=0.05,
        benchmark__backends=["onnxruntime"],
        benchmark__agreement_images=0,
    )
    result = run(config, progress=False, log=lambda _: None)
    out = result.output
    split = json.loads((out / "evaluate" / "split.json").read_text())["parts"]
    assert [split[k]["count"] for k in ("calib", "val", "test")] == [32, 24, 30]
    names = [set(split[k]["images"]) for k in ("calib", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert all(not part["labelled"] for part in split.values())
    accuracy = json.loads((out / "evaluate" / "accuracy.json").read_text())
    assert "top1" not in accuracy and accuracy["labelled"] is False
    assert accuracy["budget_metric"] == "cosine" and accuracy["budget_loss"] >= -1e-9
    planner = json.loads((out / "plan" / "planner.json").read_text())
    assert planner["budget_metric"] == "cosine" and planner["heldout_images"] == 24
    tried = [c["heldout_loss"] for c in planner["candidates"] if c["heldout_loss"] is not None]
    assert tried and all(0 <= loss <= 2 for loss in tried)  # 1 − cosine
    report = (out / "report.md").read_text()
    assert "| calibration | 32 |" in report and "1 − cosine" in report


def test_bad_data_is_refused_before_any_stage(tmp_path, cifar_test, capsys):
    flat = _flat_unlabelled(tmp_path / "flat", cifar_test, n=40)
    quiet = dict(progress=False, log=lambda _: None)
    too_small = _config(
        tmp_path / "a", data={**ONE_FOLDER, "test": str(flat)}, finetune=NO_TRAINING
    )
    with pytest.raises(DataError, match=r"has 40 images, too few to split into calib 32 \+ val 24"):
        run(too_small, **quiet)
    assert not (tmp_path / "a" / "run" / "manifest.json").exists()
    assert not (tmp_path / "a" / "run" / "config.json").exists()
    no_labels = _config(
        tmp_path / "b",
        data={
            **ONE_FOLDER,
            "test": str(flat),
            "calib_images": 8,
            "val_images": 8,
            "test_images": 20,
        },
        finetune=NO_TRAINING,
    )
    with pytest.raises(BudgetError, match="top1 needs labelled images.*agreement, kl, cosine"):
        run(no_labels, **quiet)
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(no_labels.to_dict()))
    assert main(["--quiet", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs labelled images" in err
    assert main(["--quiet", "run", str(path), "--input-size", "0,5"]) == 2
    assert "data.preprocess.input_size[0] must be an integer ≥ 1" in capsys.readouterr().err


LOADERS = """
import torch
from torch.utils.data import DataLoader, TensorDataset

def good():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(80, 3, 32, 32, generator=g), torch.randint(0, 10, (80,)))
    return DataLoader(data, batch_size=16), lambda ref, out, labels: float((ref - out).abs().max())

def channels_last():
    return DataLoader(torch.randn(16, 32, 32, 3), batch_size=8)

def broken():
    raise ValueError("no such bucket")
"""


def test_loader_callable_with_its_metric_and_bad_loaders(tmp_path):
    source = tmp_path / "loaders.py"
    source.write_text(LOADERS)
    quiet = dict(progress=False, log=lambda _: None)
    data = {**ONE_FOLDER, "test": None, "loader": f"{source}:good", "test_images": 20}
    config = _config(
        tmp_path / "ok",
        data=data,
        finetune=NO_TRAINING,
        compress__budget_metric="loader",
        compress__accuracy_budget=1e9,
        benchmark__backends=["torch"],
        benchmark__agreement_images=0,
    )
    result = run(config, stages=["analyze", "plan"], **quiet)
    planner = json.loads((result.output / "plan" / "planner.json").read_text())
    assert planner["budget_metric"] == f"{source}:good metric" and planner["heldout_images"] == 24
    wrong = _config(
        tmp_path / "w", data={**data, "loader": f"{source}:channels_last"}, finetune=NO_TRAINING
    )
    with pytest.raises(DataError, match=r"shape \(8, 32, 32, 3\); the model expects N×3×32×32"):
        run(wrong, **quiet)
    raising = _config(
        tmp_path / "r", data={**data, "loader": f"{source}:broken"}, finetune=NO_TRAINING
    )
    with pytest.raises(
        UserCodeError, match=r"broken raised ValueError: no such bucket \(at .*loaders.py"
    ):
        run(raising, **quiet)


def _bench_row(ms: float):
    """A benchmark result (as the bench stage records it) timed at `ms`."""
    from rmt_deploy.bench import BenchResult
    from rmt_deploy.bench.stats import LatencyStats

    stats = LatencyStats(10, 8, ms, ms, ms, ms, ms, ms, ms, 0.0, 8000.0 / ms)
    return BenchResult("dense", "-", 8, "cpu", 2, stats, 0, None, None, None, None)


def test_speed_headline_takes_the_predictions_own_ratio():
    # The planner predicted 40 ms against a dense 48 ms (×1.20) while the machine was slow; the
    # baselines were timed again later at 30 ms. The headline must say ×1.20, not 30/40.
    from rmt_deploy.pipeline.report import speed_headline

    row = _bench_row

    rows = {
        ("dense", "onnxruntime", 8): row(30.0),
        ("dense", "onnxruntime-int8", 8): row(31.0),
        ("compressed", "onnxruntime-int8", 8): row(25.0),
    }
    planner = {
        "chosen_deployment": "onnxruntime-int8",
        "chosen": "plan 2 / onnxruntime-int8",
        "baselines": [
            {"deployment": "onnxruntime", "measured_ms": 29.0, "within_budget": True},
            {"deployment": "onnxruntime-int8", "measured_ms": 30.0, "within_budget": True},
        ],
        "finalists": [
            {
                "label": "plan 2 / onnxruntime-int8",
                "deployment": "onnxruntime-int8",
                "candidate": 1,
                "predicted_ms": 40.0,
                "measured_ms": 24.0,
            }
        ],
        "candidates": [{"predicted_speedup": 1.05}, {"predicted_speedup": 1.2}],
    }
    head = speed_headline(rows, planner, 8)
    assert head["predicted_speedup"] == 1.2
    assert head["planner_measured_speedup"] == 30.0 / 24.0
    assert head["best_dense"] == "onnxruntime" and head["speedup_vs_best_dense"] == 30.0 / 25.0
    assert head["measured_speedup_same_deployment"] == 31.0 / 25.0


def test_headline_names_the_best_of_the_fields_own_engines():
    """Our mixed INT8 model is the tool's own engine, not a baseline: the headline measures
    it against the fastest field engine within budget (OpenVINO here, NNCF being over it)."""
    from rmt_deploy.exporters.quantize import DEFAULT_RECIPE, Int8Recipe
    from rmt_deploy.pipeline.report import speed_headline

    row = _bench_row

    rows = {
        ("dense", "onnxruntime", 8): row(35.0),
        ("dense", "onnxruntime-int8", 8): row(16.0),
        ("dense", "openvino", 8): row(17.5),
        ("dense", "openvino-int8", 8): row(12.5),
        ("dense", "openvino-nncf-int8", 8): row(14.0),
    }
    within = {"onnxruntime": True, "onnxruntime-int8": True, "openvino": True,
              "openvino-int8": True, "openvino-nncf-int8": False}  # fmt: skip
    planner = {
        "chosen_deployment": "openvino-int8",
        "chosen": "dense / openvino-int8",
        "baselines": [{"deployment": d, "within_budget": w} for d, w in within.items()],
        "int8_recipe": {"recipe": Int8Recipe(method="percentile").to_dict()},
        "int8_float_nodes": ["/conv_stem/Conv"],
    }
    head = speed_headline(rows, planner, 8)
    assert head["shipped"] == "dense / openvino-int8" and head["speedup_vs_best_dense"] == 1.0
    assert head["best_baseline"] == "openvino"
    assert head["speedup_vs_best_baseline"] == 17.5 / 12.5
    # ONNX Runtime's full INT8 by its default recipe is what a user gets: then it counts
    planner.update(int8_recipe={"recipe": DEFAULT_RECIPE.to_dict()}, int8_float_nodes=[])
    head = speed_headline(rows, planner, 8)
    assert head["best_baseline"] == "onnxruntime-int8"
    assert head["speedup_vs_best_baseline"] == 16.0 / 12.5


def test_outputs_are_refused_inside_the_inputs(tmp_path, cifar_test, assets):
    """An output folder inside a data folder or the shared assets, and a new per-layer table
    outside the output folder, are refused before anything is written."""
    from rmt_deploy.errors import OutputError

    quiet = dict(progress=False, log=lambda _: None)
    flat = _flat_unlabelled(tmp_path / "flat", cifar_test, n=40)
    inside_data = _config(tmp_path, data={**ONE_FOLDER, "test": str(flat)}, finetune=NO_TRAINING)
    inside_data.output = str(flat / "results")
    with pytest.raises(OutputError, match=r"inside data.test .*choose an output folder outside"):
        run(inside_data, **quiet)
    assert not (flat / "results").exists()
    in_assets = _config(tmp_path)
    in_assets.output = str(assets / "cifar10" / "new-run")
    with pytest.raises(OutputError, match="inside data.train|inside data.test|shared assets"):
        run(in_assets, **quiet)
    assert not (assets / "cifar10" / "new-run").exists()
    table = _config(tmp_path)
    table.compress.settings["table"] = str(tmp_path / "elsewhere" / "tables.json")
    with pytest.raises(OutputError, match="table: .* written only inside the output folder"):
        run(table, **quiet)
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "run").exists()


def test_a_strategy_that_timed_its_plan_ships_on_that_deployment():
    """Without the latency planner, the engine that ships is the deployment the strategy
    timed its widths on (`channels` records it in the plan), not ONNX Runtime fp32."""
    from rmt_deploy.pipeline.report import speed_headline

    rows = {
        ("dense", "onnxruntime", 8): _bench_row(6.0),
        ("dense", "openvino-int8", 8): _bench_row(1.5),
        ("compressed", "onnxruntime", 8): _bench_row(5.0),
        ("compressed", "openvino-int8", 8): _bench_row(1.2),
    }
    head = speed_headline(rows, None, 8, "openvino-int8")
    assert head["shipped"] == "compressed / openvino-int8"
    assert head["speedup_vs_best_dense"] == 1.5 / 1.2
    assert speed_headline(rows, None, 8)["shipped"] == "compressed / onnxruntime"
