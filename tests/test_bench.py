"""Benchmark harness: statistics, tegrastats parsing, backends, reports, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rmt_deploy.bench import BackendUnavailable, benchmark, render_saved, summarize, write_report
from rmt_deploy.bench.tegrastats import energy_per_inference_mj, input_rail, parse_line
from rmt_deploy.cli import main
from rmt_deploy.exporters import export

ORIN_NANO = (
    "11-24-2026 10:15:32 RAM 2442/7620MB (lfb 1055x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [1%@729,0%@729,0%@729,0%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 37%@[305] "
    "NVDEC off NVJPG off VIC off OFA off APE 200 cpu@46.781C soc2@45.968C gpu@46.062C "
    "tj@46.781C VDD_IN 4812mW/4512mW VDD_CPU_GPU_CV 481mW/470mW VDD_SOC 1403mW/1398mW"
)
AGX_ORIN = (
    "RAM 5127/30536MB (lfb 5914x4MB) SWAP 0/15268MB (cached 0MB) CPU [2%@2201,0%@2201,"
    "0%@2201,0%@2201,0%@2201,0%@2201,0%@2201,0%@2201] EMC_FREQ 0%@3199 GR3D_FREQ 99%@[1300,1300] "
    "VIC_FREQ 729 APE 174 CV0@-256C CPU@48.343C Tboard@37C SOC2@45.468C VDD_GPU_SOC 13182mW/9182mW "
    "VDD_CPU_CV 794mW/794mW VIN_SYS_5V0 3927mW/3927mW VDDQ_VDD2_1V8AO 503mW/503mW"
)
XAVIER_NX = (
    "RAM 2917/7772MB (lfb 3x4MB) SWAP 0/3886MB (cached 0MB) CPU [3%@1190,1%@1190] "
    "EMC_FREQ 0%@1600 GR3D_FREQ 0%@114 APE 150 MTS fg 0% bg 0% AO@34C GPU@33.5C "
    "VDD_IN 3927/3927 VDD_CPU_GPU_CV 450/450 VDD_SOC 1105/1105"
)


def test_summary_matches_numpy():
    samples = list(np.random.default_rng(0).gamma(4, 1.5, 501))
    stats = summarize(samples, batch=8)
    for name, q in (("median_ms", 50), ("p90_ms", 90), ("p95_ms", 95), ("p99_ms", 99)):
        assert getattr(stats, name) == pytest.approx(np.percentile(samples, q))
    assert stats.throughput == pytest.approx(8e3 / np.mean(samples))
    assert stats.min_ms == min(samples) and stats.runs == 501


def test_tegrastats_lines_of_each_module():
    nano = parse_line(ORIN_NANO)
    assert (nano.ram_used_mb, nano.ram_total_mb) == (2442, 7620)
    assert (nano.gpu_load_pct, nano.gpu_freq_mhz) == (37, 305)
    assert nano.rails_mw == {"VDD_IN": 4812, "VDD_CPU_GPU_CV": 481, "VDD_SOC": 1403}
    agx = parse_line(AGX_ORIN)
    assert agx.gpu_load_pct == 99 and agx.gpu_freq_mhz == 1300
    assert agx.rails_mw == {
        "VDD_GPU_SOC": 13182,
        "VDD_CPU_CV": 794,
        "VIN_SYS_5V0": 3927,
        "VDDQ_VDD2_1V8AO": 503,
    }
    assert input_rail(agx) == "VIN_SYS_5V0" and input_rail(nano) == "VDD_IN"
    nx = parse_line(XAVIER_NX)
    assert nx.rails_mw["VDD_IN"] == 3927 and nx.gpu_freq_mhz == 114
    # 4812 mW at 100 inferences/s = 48.12 mJ per inference
    assert energy_per_inference_mj([nano], 100.0) == pytest.approx(48.12)


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    ).eval()


def test_benchmark_two_variants_two_backends(tmp_path):
    dense = tiny()
    other = tiny()
    with torch.no_grad():
        other[4].weight[:, ::2] = 0
    variants = {}
    for name, model in (("dense", dense), ("pruned", other)):
        art = export(model, tmp_path / name, (3, 8, 8), n_verify=4, name=name)
        variants[name] = {"model": model, "onnx": art.onnx_path}
    data = TensorDataset(torch.randn(40, 3, 8, 8), torch.randint(0, 4, (40,)))
    suite = benchmark(
        variants,
        ["torch", "onnxruntime"],
        [1, 4],
        (3, 8, 8),
        data=data,
        reference="dense",
        warmup_s=0.05,
        runs=9,
    )
    assert len(suite.results) == 2 * 2 * 2 and not suite.skipped
    for r in suite.results:
        assert r.latency.runs == 9 and r.latency.median_ms > 0 and r.threads >= 1
        assert r.flops_per_image == 2 * (8 * 3 * 9 * 36) + 2 * (8 * 4)  # conv + linear MACs × 2
        assert 0 <= r.top1 <= 100 and r.peak_rss_mb > 0
    # Memory is each variant alone in a process of its own: not one peak for every row.
    memory = {(r.variant, r.backend): r.peak_rss_mb for r in suite.results}
    assert len(set(memory.values())) > 1
    dense_rows = [r for r in suite.results if r.variant == "dense"]
    assert all(r.agreement_with_reference == 100.0 for r in dense_rows)
    assert all(r.extra["speedup_vs_reference"] == 1.0 for r in dense_rows)
    written = write_report(suite, tmp_path / "report", "tiny")
    assert {p.name for p in written} >= {
        "bench.json",
        "bench.csv",
        "bench.md",
        "pareto.png",
        "latency_by_batch.png",
    }
    (tmp_path / "report" / "bench.md").unlink()
    render_saved(tmp_path / "report")
    assert "| pruned | onnxruntime | 4 |" in (tmp_path / "report" / "bench.md").read_text()


def test_backends_that_cannot_run(tmp_path):
    with pytest.raises(BackendUnavailable, match="no backend can run"):
        benchmark({"m": {"model": tiny()}}, ["onnxruntime"], [1], (3, 8, 8), runs=2)
    suite = benchmark(
        {"m": {"model": tiny()}}, ["torch", "onnxruntime"], [1], (3, 8, 8), warmup_s=0.01, runs=2
    )
    assert suite.skipped[0]["backend"] == "onnxruntime"
    assert "needs an exported model.onnx" in suite.skipped[0]["reason"]


def test_bench_cli_bad_input(capsys, tmp_path, assets):
    out = str(tmp_path / "o")
    assert (
        main(["--quiet", "bench", "cifar_resnet20", "--backends", "tensorflow", "--out", out]) == 2
    )
    assert "unknown backend(s) tensorflow" in capsys.readouterr().err
    assert main(["--quiet", "bench", "cifar_resnet20", "--batches", "1,x", "--out", out]) == 2
    assert "comma list of integers" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    assert (
        main(
            [
                "--quiet",
                "bench",
                "cifar_resnet20",
                "--backends",
                "torch",
                "--data",
                str(empty),
                "--out",
                out,
            ]
        )
        == 2
    )
    assert "not an image folder" in capsys.readouterr().err
    assert main(["--quiet", "report", str(tmp_path)]) == 2
    assert "cannot read benchmark results" in capsys.readouterr().err
    fresh = str(tmp_path / "int8")
    int8 = ["--quiet", "bench", "cifar_resnet20", "--backends", "onnxruntime-int8", "--out", fresh]
    assert main(int8) == 2
    assert "onnxruntime-int8 needs calibration images: add --calib" in capsys.readouterr().err
    assert main([*int8, "--calib", str(tmp_path / "nowhere")]) == 2
    assert "--calib folder not found" in capsys.readouterr().err
    assert not Path(fresh).exists()  # refused before anything was written


def test_bench_cli_real_model(capsys, tmp_path, assets, cifar_test):
    code = main(
        [
            "--quiet",
            "--assets",
            str(assets),
            "bench",
            "cifar_resnet20",
            "--backends",
            "torch,onnxruntime",
            "--batches",
            "1,2",
            "--data",
            str(cifar_test),
            "--limit",
            "100",
            "--runs",
            "6",
            "--warmup",
            "0.1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "bench.json").read_text())
    assert len(data["results"]) == 4 and all(r["top1"] > 60 for r in data["results"])


def _fake_engine(tmp_path, profile):
    """An engine file with its build record, as `rmt-deploy build` leaves them."""
    from rmt_deploy.exporters.tensorrt_build import BatchProfile, BuildReport, write_engine_info

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not a real engine")
    report = BuildReport(engine, "10.3.0", "fp16", "enable", False, BatchProfile(*profile))
    write_engine_info(report, tmp_path / "m.onnx")
    return engine


def test_batch_outside_engine_profile_fails_before_timing(tmp_path):
    from rmt_deploy.errors import OutputError, RmtDeployError
    from rmt_deploy.exporters.tensorrt_build import BatchProfile, read_engine_profile
    from rmt_deploy.runtimes.tensorrt import EngineProfileError

    engine = _fake_engine(tmp_path, (1, 8, 32))
    assert read_engine_profile(engine) == BatchProfile(1, 8, 32)
    model = tiny()
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    variants = {"m": {"model": model, "engine": engine}}
    # 64 > 32: the rebuild keeps MIN 1 and widens OPT and MAX to 64
    with pytest.raises(EngineProfileError, match=r"batch 64 is outside .* --batch 1:64:64`"):
        benchmark(variants, ["torch", "tensorrt"], [1, 64], (3, 8, 8), runs=2)
    assert calls == []  # refused before the model ran once (timing, FLOPs, warm-up)
    low = tmp_path / "low"
    low.mkdir()
    variants = {"m": {"model": model, "engine": _fake_engine(low, (4, 8, 32))}}
    with pytest.raises(EngineProfileError, match=r"\(batch 4 to 32\).* --batch 2:2:32`"):
        benchmark(variants, ["torch", "tensorrt"], [2], (3, 8, 8), runs=2)
    assert calls == []
    assert read_engine_profile(tmp_path / "other.engine") is None
    (tmp_path / "m.engine.json").write_text("{broken")
    with pytest.raises(OutputError, match="cannot read engine build record"):
        read_engine_profile(engine)
    (tmp_path / "m.engine.json").write_text(json.dumps({"profile": [1, 8]}))
    with pytest.raises(RmtDeployError, match=r"no valid 'profile' \[MIN, OPT, MAX\]"):
        read_engine_profile(engine)


def test_gpu_backends_say_why_they_cannot_run_here(tmp_path):
    """What runs and why the rest cannot, from what this machine has (onnxruntime's providers,
    whether tensorrt is installed, a visible GPU); the fake engine file never loads. The tiny
    model by hand: conv 8·3·3·3 + 8 and linear 8·4 + 4 = 260 parameters; 2·(6·6·8·27 + 8·4) =
    15,616 FLOPs per image (the 3×3 conv has 6×6 outputs on an 8×8 image; pooling not counted)."""
    import importlib.util

    import onnxruntime as ort

    onnx_path = export(tiny(), tmp_path / "x", (3, 8, 8), n_verify=2, name="x").onnx_path
    engine = _fake_engine(tmp_path, (1, 1, 4))
    suite = benchmark(
        {"m": {"model": tiny(), "onnx": onnx_path, "engine": engine}},
        ["torch", "onnxruntime-cuda", "tensorrt"],
        [1],
        (3, 8, 8),
        warmup_s=0.01,
        runs=2,
        memory=False,
    )
    reasons = {s["backend"]: s["reason"] for s in suite.skipped}
    providers = ort.get_available_providers()
    expected_runs = ["torch"]
    if "CUDAExecutionProvider" in providers:
        expected_runs.append("onnxruntime-cuda")
    else:
        listed = ", ".join(providers)
        assert reasons["onnxruntime-cuda"] == (
            f"CUDAExecutionProvider is not available in this onnxruntime ({listed})"
        )
    if importlib.util.find_spec("tensorrt") is None:
        assert reasons["tensorrt"].startswith("TensorRT is not installed")
    elif not torch.cuda.is_available():
        assert reasons["tensorrt"] == "TensorRT needs a CUDA device and none is visible"
    else:
        assert "cannot load" in reasons["tensorrt"]  # b"not a real engine"
    assert set(reasons) == {"onnxruntime-cuda", "tensorrt"} - set(expected_runs)
    assert [r.backend for r in suite.results] == expected_runs
    for result in suite.results:
        assert (result.batch, result.latency.runs) == (1, 2)
        assert (result.params, result.flops_per_image) == (260, 15616)
        assert 0 < result.latency.min_ms <= result.latency.median_ms <= result.latency.max_ms


def test_jtop_stats_and_power_summary():
    from rmt_deploy.bench.runner import power_summary
    from rmt_deploy.bench.stats import summarize
    from rmt_deploy.bench.tegrastats import sample_from_jtop

    stats = {"time": 0, "GPU": 87.5, "Power VDD_CPU_GPU_CV": 2100, "Power VDD_IN": 6000}
    sample = sample_from_jtop(stats)
    assert sample.gpu_load_pct == 87 and sample.rails_mw["VDD_IN"] == 6000
    inside = [parse_line(ORIN_NANO) for _ in range(3)]  # 4812 mW each
    outside = parse_line(ORIN_NANO.replace("VDD_IN 4812", "VDD_IN 9999"))
    for i, s in enumerate(inside):
        s.time = 10.0 + i
    outside.time = 50.0
    result = type("R", (), {"latency": summarize([10.0] * 5, batch=1)})()  # 100 images/s
    summary = power_summary([*inside, outside], [(9.5, 12.5)], result)
    assert summary["power_samples"] == 3 and summary["power_rail"] == "VDD_IN"
    assert summary["energy_per_image_mj"] == pytest.approx(48.12)


def test_power_needs_a_jetson():
    import shutil

    from rmt_deploy.errors import RmtDeployError

    if shutil.which("tegrastats"):
        pytest.skip("this machine is a Jetson")
    with pytest.raises(RmtDeployError, match="neither tegrastats nor jtop"):
        benchmark({"m": {"model": tiny()}}, ["torch"], [1], (3, 8, 8), runs=2, power=True)


def test_variant_memory_is_not_the_parents_peak():
    # Linux carries ru_maxrss over fork+exec; a spawned child must report its own peak.
    from rmt_deploy.bench.memory import peak_memory_mb

    ballast = np.ones(200 * 2**20)  # 1.6 GB touched in this process
    parent_mb = ballast.nbytes / 2**20
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    rss, cuda, why = peak_memory_mb({"model": model}, "torch", {}, (2, 3, 2, 2))
    del ballast
    assert why is None and cuda is None
    assert 0 < rss < parent_mb


def cpu_deployments_here() -> tuple[set[str], set[str]]:
    """(float, float + INT8) CPU deployments this machine runs, from what is installed and the
    CPU's flags, not from rmt_deploy: ONNX Runtime fp32 and INT8; OpenVINO's CPU plugin runs
    bf16 by default where the CPU has AVX512_BF16 (or AMX), f32 elsewhere (OpenVINO's CPU
    device docs), so `openvino` is that default and only the *other* precision is a second
    deployment (bf16 without those flags is not one); INT8 on any x86-64 CPU; NNCF's IR
    needs nncf."""
    import importlib.util
    import platform

    def have(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    float_only, int8 = set(), set()
    if have("onnxruntime"):
        float_only.add("onnxruntime")
        int8.add("onnxruntime-int8")
    if have("openvino"):
        float_only.add("openvino")
        if flags & {"avx512_bf16", "amx_bf16"}:
            float_only.add("openvino-f32")  # the default is bf16: f32 is the other one
        if platform.machine() in ("x86_64", "AMD64"):
            int8.add("openvino-int8")
        if have("nncf"):
            int8.add("openvino-nncf-int8")
    return float_only, float_only | int8


def test_bench_cli_auto_runs_every_deployment_here(tmp_path, assets, cifar_test):
    """`--backends auto` is every deployment this CPU runs, INT8 included when --calib is given
    (calibrated on those images, not on the --data images top-1 is read on). Run as a user
    runs it, one process per command: OpenVINO loaded into a process that has already run
    other tests' runtimes can crash it (the pipeline isolates these stages the same way)."""

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "rmt_deploy", "--quiet", "--assets", str(assets)]
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=600)

    float_only, expected = cpu_deployments_here()
    assert expected - float_only >= {"onnxruntime-int8", "openvino-int8", "openvino-nncf-int8"}
    common = ["bench", "cifar_resnet20", "--backends", "auto", "--batches", "2", "--runs", "3"]
    common += ["--warmup", "0.05"]
    calib = str(assets / "cifar10" / "train")
    done = cli(
        *common,
        "--data",
        str(cifar_test),
        "--limit",
        "64",
        "--calib",
        calib,
        "--out",
        str(tmp_path / "a"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "a" / "bench.json").read_text())["results"]
    assert {r["backend"] for r in results} == expected
    assert (tmp_path / "a" / "onnx" / "dense" / "model.int8.onnx").is_file()
    assert (tmp_path / "a" / "onnx" / "dense" / "model.nncf.xml").is_file()
    by = {r["backend"]: r for r in results}
    assert by["onnxruntime-int8"]["top1"] > 60 and by["onnxruntime"]["top1"] > 60
    # without --calib, auto leaves INT8 out and says why
    done = cli(*common, "--out", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not run: onnxruntime-int8: INT8 needs --calib images" in done.stdout
    results = json.loads((tmp_path / "b" / "bench.json").read_text())["results"]
    assert {r["backend"] for r in results} == float_only
