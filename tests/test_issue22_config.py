"""Issue 22, checked too late: what the config asks of this machine, the strategies' own
settings and the export opset are refused when the run starts (before the first stage),
naming the key and what is allowed."""

import pytest
import torch

from rmt_deploy.pipeline import ConfigError, RunConfig, run
from rmt_deploy.pipeline.config import check_machine
from rmt_deploy.strategies import STRATEGIES

QUIET = dict(progress=False, log=lambda _: None)


def _raw(**sections) -> dict:
    return {"model": "cifar_resnet20", **sections}


@pytest.mark.parametrize(
    "compress, message",
    [
        (
            {"strategy": "classic_rmt", "settings": {"cycles": 0}},
            r"compress\.settings\.cycles must lie in \[1, 1000\], got 0 \(strategy classic_rmt\)",
        ),
        (
            {"strategy": "hybrid", "settings": {"variant": "bogus"}},
            r"compress\.settings\.variant must be one of threshold, fixed, got 'bogus'",
        ),
        (
            {"strategy": "hybrid", "settings": {"step": 1.5}},
            r"compress\.settings\.step must lie in \[0\.001, 1\)",
        ),
        (
            {"strategy": "nm24", "settings": {"order": "random"}},
            r"compress\.settings\.order must be one of seb, size",
        ),
        (
            {"strategy": "nm24", "settings": {"fraction": 0}},
            r"compress\.settings\.fraction must lie in \(0, 1\]",
        ),
        (
            {"strategy": "svd", "settings": {"rank_multiple": 0}},
            r"compress\.settings\.rank_multiple must be an integer ≥ 1",
        ),
        (
            {"strategy": "lowrank", "settings": {"batch_size": 0}},
            r"compress\.settings\.batch_size must be an integer ≥ 1",
        ),
        (
            {"strategy": "latency", "settings": {"sensitivity_images": 0}},
            r"compress\.settings\.sensitivity_images: .*sensitivity_images must be ≥ 1, got 0",
        ),
        (
            {"strategy": "classic_rmt", "settings": {"cyclez": 3}},
            r"compress\.settings\.cyclez: strategy 'classic_rmt' has no setting cyclez",
        ),
    ],
)
def test_strategy_settings_are_refused_at_load_naming_the_full_key(compress, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(_raw(compress=compress))


def test_every_strategy_rule_names_a_setting_of_its_strategy():
    """The ranges each strategy registers must name its own settings (a rule for a renamed
    setting would never apply)."""
    ruled = {name: spec.rules for name, spec in STRATEGIES.items() if spec.rules}
    assert {"classic_rmt", "hybrid", "ser", "lowrank", "nm24", "svd"} <= set(ruled)
    for name, rules in ruled.items():
        assert set(rules) <= set(STRATEGIES[name].defaults), name


def test_plan_refuses_a_setting_out_of_its_registered_range_before_any_work():
    from rmt_deploy.strategies import StrategyError, plan

    class Boom(torch.nn.Module):  # a model whose forward would fail: nothing may run
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            raise AssertionError("the strategy ran")

    calib = r"^lowrank calib_images must be an integer ≥ 1, got 0$"
    with pytest.raises(StrategyError, match=calib):
        plan(Boom(), "lowrank", data=[(torch.zeros(4), 0)], calib_images=0)
    with pytest.raises(StrategyError, match=r"^hybrid handoff must lie in \(0, 1\), got 1\.0$"):
        plan(Boom(), "hybrid", data=[(torch.zeros(4), 0)], handoff=1.0)


def test_strategy_defaults_pass_their_rules():
    for name in ("classic_rmt", "hybrid", "ser", "lowrank", "nm24", "svd"):
        RunConfig.from_dict(_raw(compress={"strategy": name}))


@pytest.mark.parametrize("opset", [6, 21, 99])
def test_export_opset_outside_the_exporters_range(opset):
    with pytest.raises(ConfigError, match=rf"export\.opset must lie in \[7, 20\], got {opset}"):
        RunConfig.from_dict(_raw(export={"opset": opset}))
    RunConfig.from_dict(_raw(export={"opset": 17}))


def _no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"compress": {"device": "cuda"}},
            r"compress\.device: cuda, but no CUDA device is visible.*set compress\.device: cpu",
        ),
        (
            {"compress": {"targets": ["tensorrt"]}},
            r"compress\.targets: tensorrt cannot run on this machine \(no CUDA device is "
            r"visible\): TensorRT needs an NVIDIA GPU and the tensorrt package",
        ),
        (
            {"compress": {"targets": ["onnxruntime", "torch-cuda-fp16"]}},
            r"compress\.targets: torch-cuda-fp16 cannot run on this machine .*CUDA build of torch",
        ),
        (
            {"benchmark": {"power": True}},
            r"benchmark\.power: true needs a Jetson .*set benchmark\.power: false",
        ),
    ],
)
def test_what_this_machine_lacks_is_refused_before_the_first_stage(
    raw, message, monkeypatch, tmp_path, assets
):
    _no_gpu(monkeypatch)
    monkeypatch.setattr("shutil.which", lambda name: None)  # no tegrastats
    config = RunConfig.from_dict(_raw(**raw, output=str(tmp_path / "run"), assets=str(assets)))
    with pytest.raises(ConfigError, match=message):
        check_machine(config)
    with pytest.raises(ConfigError, match=message):
        run(config, **QUIET)
    assert not (tmp_path / "run").exists()  # nothing written, no stage ran


def test_gpu_targets_need_tensorrt_installed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else real(name)
    )
    config = RunConfig.from_dict(_raw(compress={"targets": ["tensorrt"], "device": "cuda"}))
    with pytest.raises(ConfigError, match=r"tensorrt cannot run .*TensorRT is not installed"):
        check_machine(config)
    bad_index = RunConfig.from_dict(_raw(compress={"device": "cuda:3"}))
    with pytest.raises(ConfigError, match=r"compress\.device: cuda:3, .*1 CUDA device.*cuda:0"):
        check_machine(bad_index)


def test_a_gpu_config_still_loads_on_a_cpu_machine(monkeypatch):
    """Loading stays machine-free: the examples for GPUs and Jetsons are read anywhere."""
    _no_gpu(monkeypatch)
    RunConfig.from_dict(_raw(compress={"device": "cuda", "targets": ["tensorrt"]}))
