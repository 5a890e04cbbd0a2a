"""`rmt-deploy run`: config validation, the stages end to end on a real model, resuming,
dependencies, and the latency-aware planner on a model where low rank must win."""

import copy
import json
import shutil

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from rmt_deploy.cli import main
from rmt_deploy.compress import compress_
from rmt_deploy.pipeline import ConfigError, RunConfig, StageDependencyError, load_config, run
from rmt_deploy.pipeline import stages as stage_module
from rmt_deploy.plan import CompressionPlan
from rmt_deploy.planner import BudgetNotMetError, latency_plan

TINY = {
    "model": "cifar_resnet20",
    "analyze": {"plots": False},
    "data": {"calib_images": 128, "val_images": 200, "test_images": 300},
    "compress": {
        "strategy": "latency",
        "accuracy_budget": 100,  # the search itself, not its outcome, is under test here
        "batch": 32,
        "error_grid": [0.1, 0.3],
    },
    "finetune": {"steps": 2, "batch_size": 32, "bn_recal_images": 200},
    "export": {"verify_images": 16},
    "benchmark": {"batches": [1], "runs": 4, "warmup_s": 0.05, "agreement_images": 40},
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
    with pytest.raises(Exception, match=message):
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
    with pytest.raises(Exception, match="unknown stage"):
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
    assert [c["layer_error"] for c in planner["candidates"]] == [0.1, 0.3]
    assert planner["dense_model_ms"] > 0 and all(
        layer["dense_ms"] > 0 for layer in planner["layers"]
    )
    chosen = [c for c in planner["candidates"] if c["layer_error"] == planner["chosen_layer_error"]]
    assert chosen and chosen[0]["drop_pp"] <= 100 and chosen[0]["lowrank_layers"] > 0
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert {(r["variant"], r["backend"]) for r in bench["results"]} == {
        (v, b) for v in ("dense", "compressed") for b in ("torch", "onnxruntime")
    }
    report = (out / "report.md").read_text()
    assert "## Accuracy" in report and "| onnxruntime | 1 |" in report
    assert not list(out.rglob("*.tmp"))


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
    with pytest.raises(RuntimeError, match="killed"):
        run(changed, **quiet)
    monkeypatch.undo()
    resumed = run(changed, **quiet)
    assert resumed.ran == ["benchmark", "report"]
    assert "analyze" in resumed.skipped and "compress" in resumed.skipped
    bench = json.loads((resumed.output / "bench" / "bench.json").read_text())
    assert {r["batch"] for r in bench["results"]} == {2}
    # Forcing a stage makes everything downstream of it stale.
    forced = run(changed, stages=["export"], force=True, **quiet)
    assert forced.ran == ["export"]
    with pytest.raises(StageDependencyError, match="stage report needs benchmark"):
        run(changed, stages=["report"], **quiet)


def test_budget_no_plan_meets(finished_run, tmp_path):
    src, _, result = finished_run
    shutil.copytree(result.output, tmp_path / "run")
    config = _config(tmp_path, compress__accuracy_budget=0.0, compress__error_grid=[0.6])
    with pytest.raises(BudgetNotMetError) as info:
        run(config, progress=False, log=lambda _: None)
    assert "pp" in str(info.value) or "nothing to trade" in str(info.value)
    assert (tmp_path / "run" / "plan" / "planner.md").is_file()


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


def test_planner_bad_input():
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    data = TensorDataset(torch.randn(8, 3, 4, 4), torch.randint(0, 4, (8,)))
    with pytest.raises(Exception, match="needs held-out images"):
        latency_plan(model, data, accuracy_budget=1.0, progress=False)
    with pytest.raises(Exception, match="measures on torch or onnxruntime"):
        latency_plan(model, data, backend="tensorrt", layer_error=0.1, progress=False)


def test_cli_run_reports_up_to_date(finished_run, tmp_path, capsys):
    _, config, result = finished_run
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert main(["--quiet", "run", str(path), "--output", str(result.output)]) == 0
    out = capsys.readouterr().out
    assert "ran nothing" in out and "report:" in out
    assert main(["--quiet", "run", str(path), "--accuracy-budget", "-1"]) == 2
    assert "--accuracy-budget must be ≥ 0" in capsys.readouterr().err


def test_fixed_strategy_reuses_the_analysis(finished_run, tmp_path):
    _, _, result = finished_run
    shutil.copytree(result.output, tmp_path / "run")
    config = _config(tmp_path, compress={"strategy": "nm24"})
    again = run(config, progress=False, log=lambda _: None)
    assert again.skipped == ["analyze"] and again.ran[0] == "plan"
    plan = json.loads((again.output / "plan" / "plan.json").read_text())
    assert plan["strategy"] == "nm24" and plan["summary"]["nm24_layers"] > 0
    assert "at sparsity 0.5" in (again.output / "report.md").read_text()
