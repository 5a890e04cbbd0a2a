"""One implementation per verb: the CLI and the pipeline's stages call the same functions
(`rmt_deploy.verbs`) and so do the same work. Each test runs both callers on the same model
and compares what reached the layer below them; each guards a drift the two copies once had."""

import dataclasses
import json
import shutil
from argparse import Namespace

import pytest
import torch

from rmt_deploy import recovery
from rmt_deploy.analysis import analyze
from rmt_deploy.cli import main
from rmt_deploy.models import load_model
from rmt_deploy.pipeline import RunConfig
from rmt_deploy.pipeline import stages as stage_module
from rmt_deploy.verbs import (
    PlanRequest,
    RecoveryOptions,
    analyze_to,
    backend_options,
    compress_and_recover,
    plan_model,
    save_compressed,
)

MODEL = "cifar_resnet20"


@pytest.fixture(scope="module")
def dense(assets):
    return load_model(MODEL, assets=assets)


@pytest.fixture(scope="module")
def made(tmp_path_factory, dense):
    """A magnitude plan of the pretrained ResNet-20, saved as `rmt-deploy compress` saves it
    (cli/) and as the pipeline's plan and compress stages do (run/), with the analysis."""
    root = tmp_path_factory.mktemp("verbs")
    the_plan = plan_model(dense, PlanRequest("magnitude", 0.3, name=MODEL))
    model, recovered = compress_and_recover(dense, the_plan, RecoveryOptions())
    assert recovered == {} and the_plan.compressed
    (root / "cli").mkdir()
    the_plan.save(root / "cli" / "plan.json")
    save_compressed(model, the_plan, MODEL, root / "cli" / "model.safetensors")
    for folder in ("plan", "compress"):
        (root / "run" / folder).mkdir(parents=True)
    the_plan.save(root / "run" / "plan" / "plan.json")
    the_plan.save_payloads(root / "run" / "plan" / "payload.safetensors")
    save_compressed(model, the_plan, MODEL, root / "run" / "compress" / "model.safetensors")
    analyze_to(dense, root / "run" / "analyze", name=MODEL, plots=False)
    return root, the_plan


def _context(made, tmp_path, assets, **sections):
    """A RunContext on a copy of the made run folder, the config's sections given."""
    run = tmp_path / "run"
    shutil.copytree(made[0] / "run", run)
    raw = {"model": MODEL, "output": str(run), **sections}
    raw["compress"] = {"strategy": "magnitude", "accuracy_budget": None, **sections["compress"]}
    return stage_module.RunContext(RunConfig.from_dict(raw), run, assets, progress=False)


class _Spies:
    """bn_recalibrate and finetune recorded, not run: what each caller asked of recovery."""

    def __init__(self, monkeypatch):
        self.bn: list[tuple[int, str]] = []
        self.finetune: list[dict] = []
        monkeypatch.setattr(recovery, "bn_recalibrate", self._bn)
        monkeypatch.setattr(recovery, "finetune", self._finetune)

    def _bn(self, model, data, n_images=2000, progress=False, device=None, **_):
        self.bn.append((n_images, device))
        return n_images

    def _finetune(self, model, data, cfg, *, teacher=None, lasso_scale=None, device=None, **_):
        self.finetune.append(
            {"recipe": cfg, "device": device, "teacher": teacher, "scales": lasso_scale}
        )
        return recovery.FinetuneResult(cfg.max_steps, 0, 0.0, 0.0, 0.0)

    def clear(self):
        self.bn.clear()
        self.finetune.clear()


def _pretend_one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_compress_recovers_alike_from_the_cli_and_the_pipeline(
    made, dense, tmp_path, assets, monkeypatch
):
    """Drifts fixed: the CLI refused to recover off the CPU (the pipeline recovers on
    compress.device), and took the seed's group-lasso scales from an analysis of the
    *compressed* model (the pipeline: of the dense model, its analyze stage)."""
    spies = _Spies(monkeypatch)
    _pretend_one_gpu(monkeypatch)  # recorded, never run: no GPU is touched
    argv = ["--quiet", "--assets", str(assets), "compress", MODEL, "--strategy", "magnitude"]
    argv += ["--sparsity", "0.3", "--data", str(assets / "cifar10" / "train")]
    argv += ["--bn-recal-images", "100", "--finetune-steps", "3", "--seed-regularizers"]
    assert main([*argv, "--device", "cuda", "--out", str(tmp_path / "cli")]) == 0
    cli_bn, cli_finetune = list(spies.bn), list(spies.finetune)
    spies.clear()
    ctx = _context(
        made,
        tmp_path,
        assets,
        compress={"sparsity": 0.3, "device": "cuda"},
        finetune={"steps": 3, "bn_recal_images": 100, "seed_regularizers": True},
    )
    score = {"metric": "top1", "images": 0, "before": 0.0, "after": 0.0}  # no GPU to score on
    monkeypatch.setattr("rmt_deploy.verbs.compress._score", lambda *args, **kw: score)
    stage_module.stage_compress(ctx)
    # The pipeline recovers the dense reference (the teacher), then the compressed model, alike.
    assert spies.bn == [(100, "cuda"), (100, "cuda")] and cli_bn == [(100, "cuda")]
    dense_scales = recovery.lasso_scales(analyze(dense))
    assert len(dense_scales) == 19 and all(0 < s < 1 for s in dense_scales.values())
    for call in (cli_finetune[0], spies.finetune[0]):
        assert call["device"] == "cuda" and call["teacher"] is None
        assert call["recipe"] == recovery.recipe_for(dense, 3, seed_regularizers=True)
        assert (call["recipe"].optimizer, call["recipe"].lr) == ("adamw", 1e-4)
        assert call["scales"] == dense_scales


def test_a_plan_that_compresses_nothing_is_not_recovered_by_either(
    made, dense, tmp_path, assets, monkeypatch
):
    """Drift fixed: the CLI re-estimated BatchNorm and fine-tuned the dense model when the
    plan kept every layer dense; the pipeline ships it as it is, and now so does the CLI."""
    from rmt_deploy import verbs

    spies = _Spies(monkeypatch)
    kept = dataclasses.replace(
        made[1],
        layers=[
            dataclasses.replace(
                layer, action="dense", density=None, params_after=layer.params_before
            )
            for layer in made[1].layers
        ],
    )
    assert not kept.compressed
    monkeypatch.setattr(verbs, "plan_model", lambda *a, **k: kept)
    argv = ["--quiet", "--assets", str(assets), "compress", MODEL, "--strategy", "magnitude"]
    argv += ["--data", str(assets / "cifar10" / "train"), "--finetune-steps", "2"]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 0
    ctx = _context(made, tmp_path, assets, compress={}, finetune={"steps": 2})
    kept.save(ctx.out / "plan" / "plan.json")
    kept.save_payloads(ctx.out / "plan" / "payload.safetensors")
    stage_module.stage_compress(ctx)
    assert spies.bn == [] and spies.finetune == []
    assert json.loads((ctx.out / "compress" / "finetune.json").read_text()) == {"compressed": {}}
    for checkpoint in (tmp_path / "cli", ctx.out / "compress"):
        shipped = load_model(MODEL, checkpoint / "model.safetensors")
        for name, tensor in dense.state_dict().items():
            assert torch.equal(shipped.state_dict()[name], tensor), (checkpoint, name)


class _Stop(Exception):
    """Raised by the benchmark spy: the arguments are what is compared, not the timings."""


def test_bench_runs_and_exports_alike_from_the_cli_and_the_pipeline(
    made, tmp_path, assets, monkeypatch
):
    """Drifts fixed: on CUDA the CLI benchmarked the torch backends in fp32 without the 2:4
    kernels (the pipeline: fp16, sparse kernels), and its ONNX files had no preprocessing,
    source or plan in their manifest (the pipeline's export stage writes them)."""
    from rmt_deploy import bench

    asked = []

    def spy(variants, backends, batches, input_shape, **options):
        asked.append(
            {
                "variants": list(variants),
                "backends": backends,
                "batches": batches,
                "input_shape": input_shape,
                **options,
            }
        )
        raise _Stop

    monkeypatch.setattr(bench, "benchmark", spy)
    argv = ["--quiet", "--assets", str(assets), "bench", str(made[0] / "cli")]
    argv += ["--backends", "torch,onnxruntime", "--batches", "1,8", "--device", "cuda"]
    with pytest.raises(_Stop):
        main([*argv, "--runs", "7", "--warmup", "0.5", "--out", str(tmp_path / "cli")])
    ctx = _context(
        made,
        tmp_path,
        assets,
        compress={"device": "cuda", "batch": 8},
        data={"calib_images": 32, "val_images": 20, "test_images": 20},
        export={"verify_images": 8},
        benchmark={
            "backends": ["torch", "onnxruntime"],
            "batches": [1],
            "runs": 7,
            "warmup_s": 0.5,
            "agreement_images": 0,
        },
    )
    stage_module.stage_export(ctx)
    with pytest.raises(_Stop):
        stage_module.stage_benchmark(ctx)
    cli, pipeline = asked
    assert cli["backend_options"] == pipeline["backend_options"] == backend_options("cuda")
    assert backend_options("cuda") == {"device": "cuda", "precision": "fp16", "sparse24": True}
    for key in ("variants", "backends", "batches", "input_shape", "reference", "runs"):
        assert cli[key] == pipeline[key], key
    assert cli["variants"] == ["dense", "compressed"] and cli["reference"] == "dense"
    for variant in ("dense", "compressed"):
        mine = json.loads((tmp_path / "cli" / "onnx" / variant / "manifest.json").read_text())
        theirs = json.loads((ctx.out / "export" / variant / "manifest.json").read_text())
        assert mine["preprocessing"] == theirs["preprocessing"]
        assert mine["preprocessing"]["input_size"] == [3, 32, 32]
        assert mine["source"]["variant"] == theirs["source"]["variant"] == variant
        assert mine.get("plan") == theirs.get("plan")
    assert mine["plan"]["strategy"] == "magnitude"


def test_folders_are_labelled_by_class_name_by_both(tmp_path, assets, cifar_test, dense):
    """Drift fixed: the pipeline labelled class sub-folders by sorted position, the CLI by the
    model's class names; a folder of two of CIFAR-10's classes was cat 0, dog 1 in one and
    cat 3, dog 5 in the other. Both now ask `verbs.labelled_images`."""
    from rmt_deploy.cli.inputs import labelled_folder
    from rmt_deploy.data import eval_transform
    from rmt_deploy.models import DataConfig

    two = tmp_path / "two"
    for name in ("cat", "dog"):
        (two / name).mkdir(parents=True)
        for image in sorted((cifar_test / name).iterdir())[:3]:
            shutil.copy(image, two / name / image.name)
    raw = {"model": MODEL, "output": str(tmp_path / "run"), "data": {"train": str(two)}}
    ctx = stage_module.RunContext(RunConfig.from_dict(raw), tmp_path / "run", assets)
    pipeline = {path.parent.name: label for path, label in ctx.train.samples}
    args = Namespace(
        data=two, **dict.fromkeys(("input_size", "mean", "std", "interpolation", "crop_pct"))
    )
    transform = eval_transform(DataConfig.from_model(dense))
    cli = {
        path.parent.name: label for path, label in labelled_folder(args, dense, transform).samples
    }
    assert pipeline == cli == {"cat": 3, "dog": 5}
