"""The target-side kit in export/: standalone (no torch, no rmt_deploy), run through ORT."""

import ast
import importlib.util
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


def test_run_random_input_latency(exported, tmp_path):
    """20 timed runs at batch 4 of random input: statistics of 20 samples (ordered, the mean
    inside them, std within Popoviciu's bound), throughput = 4 images / mean, printed as
    written, the 20 runs inside the process's wall time, and each within 10× of what ONNX
    Runtime takes for the same model and batch, timed here without the kit."""
    import time

    import numpy as np
    import onnxruntime as ort

    result = tmp_path / "latency.json"
    began = time.perf_counter()
    done = run_kit(
        exported, "--batch", "4", "--iterations", "20", "--threads", "2", "--json", str(result)
    )
    wall_ms = (time.perf_counter() - began) * 1e3
    data = json.loads(result.read_text())
    stats = data["latency_ms"]
    assert (data["batch"], data["runs"]) == (4, 20) and "top1" not in data
    order = ("min", "median", "p90", "p95", "p99", "max")
    assert all(stats[a] <= stats[b] for a, b in zip(order, order[1:], strict=False))
    assert stats["min"] <= stats["mean"] <= stats["max"]
    assert 0 <= stats["std"] <= (stats["max"] - stats["min"]) / 2 + 1e-9
    assert data["throughput_images_per_s"] == pytest.approx(4e3 / stats["mean"], rel=1e-9)
    assert 20 * stats["mean"] < wall_ms
    for key in order:
        assert f"{key} {stats[key]:.3f} ms" in done.stdout
    assert "batch 4, 20 runs" in done.stdout

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        str(exported / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    manifest = json.loads((exported / "manifest.json").read_text())
    shape = (4, *manifest["preprocessing"]["input_size"])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    name = session.get_inputs()[0].name
    times = []
    for i in range(25):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        if i >= 5:  # five warm-up runs
            times.append((time.perf_counter() - t0) * 1e3)
    reference = float(np.median(times))
    assert reference / 10 < stats["median"] < reference * 10, (stats["median"], reference)


def test_kit_statistics_by_hand():
    """The kit's statistics of 1, 2, …, 10 ms worked out by hand: percentile q lies at rank
    (n − 1)·q/100 = 9q/100 between the sorted samples (numpy's linear rule, which
    rmt_deploy.bench reports too); the population variance of 1…10 is (10² − 1)/12 = 8.25."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kit_run", KIT / "run.py")
    kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kit)
    stats = kit.percentiles([float(v) for v in (7, 1, 10, 4, 2, 9, 3, 8, 6, 5)])
    expected = {"min": 1.0, "mean": 5.5, "median": 5.5, "p90": 9.1, "p95": 9.55, "p99": 9.91}
    expected.update({"max": 10.0, "std": 8.25**0.5})
    assert stats == pytest.approx(expected, abs=1e-12)


KIT_RUN = {
    "model": "cifar_resnet20",
    "analyze": {"plots": False},
    "data": {"calib_images": 128, "val_images": 200, "test_images": 300},
    "compress": {
        "strategy": "latency",
        "accuracy_budget": 100,  # every engine within: the kit, not the search, is under test
        "batch": 8,
        "targets": ["onnxruntime", "onnxruntime-int8", "openvino", "openvino-nncf-int8"],
        "settings": {"rounds": 2, "runs": 3, "finalists": 1, "sensitivity_images": 8},
    },
    "finetune": {"steps": 0, "bn_recal_images": 0},
    "export": {"verify_images": 8},
    "benchmark": {"backends": ["onnxruntime", "onnxruntime-int8", "openvino",
                               "openvino-nncf-int8"], "batches": [8], "runs": 3,
                  "warmup_s": 0.05},  # fmt: skip
}
KIT_FILES = {  # backend → (the export file it runs, the kit's extra flags)
    "onnxruntime": ("model.onnx", []),
    "onnxruntime-int8": ("model.int8.onnx", []),
    "openvino": ("model.onnx", ["--openvino"]),
    "openvino-nncf-int8": ("model.nncf.xml", []),  # NNCF's OpenVINO IR
}


@pytest.mark.slow
def test_kit_reproduces_the_reports_top1_on_a_real_run(tmp_path, assets, cifar_test):
    """`rmt-deploy run`, then the kit on its export folder and its test part: every engine's
    top-1 within one image of what the report measured in that runtime."""
    import yaml

    config = {**KIT_RUN, "output": str(tmp_path / "run")}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "rmt_deploy", "--quiet", "--assets", str(assets), "run"]
    done = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "run"
    split = out / "evaluate" / "split.json"
    test_count = json.loads(split.read_text())["parts"]["test"]["count"]
    rows = json.loads((out / "bench" / "bench.json").read_text())["results"]
    report = json.loads((out / "report.json").read_text())
    variant, _, shipped_backend = report["headline"]["shipped"].partition(" / ")
    measured = {(r["variant"], r["backend"]): r["top1"] for r in rows if r["batch"] == 8}
    assert report["headline"]["shipped_top1"] == measured[variant, shipped_backend]
    # the report's own command for the shipped engine, as a user would paste it
    command = report["headline"]["kit_command"].split()
    assert command[:2] == ["python", "export/run.py"]
    kit = [sys.executable, str(KIT / "run.py"), *command[2:], "--warmup-seconds", "0",
           "--json", str(tmp_path / "shipped.json")]  # fmt: skip
    assert subprocess.run(kit, capture_output=True, text=True, timeout=600).returncode == 0
    shipped = json.loads((tmp_path / "shipped.json").read_text())
    assert shipped["images"] == test_count
    assert abs(shipped["top1"] - report["headline"]["shipped_top1"]) <= 100.0 / test_count + 1e-9
    checked = {("dense", b) for b in KIT_FILES} | {(variant, shipped_backend)}
    for name, backend in sorted(checked):
        folder = out / "export" / name
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["preprocessing"]["input_size"] == [3, 32, 32]
        assert manifest["classes"][0] == "airplane" and manifest["num_outputs"] == 10
        file, flags = KIT_FILES[backend]
        kit = [sys.executable, str(KIT / "run.py"), "--model", str(folder / file), *flags,
               "--images", str(cifar_test), "--split", str(split), "--batch", "50",
               "--warmup-seconds", "0", "--json", str(tmp_path / "kit.json")]  # fmt: skip
        ran = subprocess.run(kit, capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, ran.stderr[-2000:]
        result = json.loads((tmp_path / "kit.json").read_text())
        assert result["images"] == test_count
        one_image = 100.0 / test_count
        assert abs(result["top1"] - measured[name, backend]) <= one_image + 1e-9, (name, backend)


def _kit_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kit_run", KIT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _folder(tmp_path, cifar_test, classes, per_class=2):
    import shutil

    root = tmp_path / "images"
    for name in classes:
        (root / name).mkdir(parents=True)
        for src in sorted((cifar_test / name).iterdir())[:per_class]:
            shutil.copyfile(src, root / name / src.name)
    return root


@pytest.mark.parametrize("classes", [["truck"], ["cat", "truck"], CIFAR])
def test_kit_labels_class_folders_as_eval_does(tmp_path, cifar_test, classes):
    from rmt_deploy.data import load_image_dataset

    root = _folder(tmp_path, cifar_test, classes)
    kit = _kit_module().labelled_images(root, CIFAR, 10)
    ours = load_image_dataset(root, classes=CIFAR).samples
    assert [(Path(p), y) for p, y in kit] == [(Path(p), y) for p, y in ours]
    assert kit[-1][1] == 9  # truck is class 9 even alone


def test_kit_labels_csv_folders_as_eval_does(tmp_path, cifar_test):
    from rmt_deploy.data import load_image_dataset

    root = _folder(tmp_path, cifar_test, ["cat", "dog"])
    rows = ["file,label", "cat/0000.jpg,3", "dog/0000.jpg,5", "dog/0001.jpg,5"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    kit = _kit_module().labelled_images(root, None, 10)
    ours = load_image_dataset(root, num_outputs=10).samples
    assert [(Path(p), y) for p, y in kit] == [(Path(p), y) for p, y in ours]
    assert [y for _, y in kit] == [3, 5, 5]


def test_kit_refuses_what_eval_refuses(tmp_path, cifar_test):
    from rmt_deploy.data import load_image_dataset
    from rmt_deploy.errors import DataError

    root = _folder(tmp_path, cifar_test, ["cat", "dog"])
    with pytest.raises(DataError, match="2 class sub-folders but the model has 10 outputs"):
        load_image_dataset(root, num_outputs=10)
    with pytest.raises(SystemExit, match="2 class folders for 10 outputs"):
        _kit_module().labelled_images(root, None, 10)
    (root / "zebra").mkdir()
    (root / "zebra" / "a.jpg").write_bytes((root / "cat" / "0000.jpg").read_bytes())
    with pytest.raises(DataError, match="zebra is not among the model's 10 classes"):
        load_image_dataset(root, classes=CIFAR)
    with pytest.raises(SystemExit, match="zebra are not among the model's classes"):
        _kit_module().labelled_images(root, CIFAR, 10)


def test_kit_bad_files_are_one_line_errors(exported, tmp_path, cifar_test):
    """A file that is not a model, an image that is not one, a --json folder that does not
    exist, an engine without TensorRT: one `error:` line and exit 1, never a traceback."""
    manifest = exported / "manifest.json"
    (tmp_path / "m.onnx").write_text("not onnx")
    (tmp_path / "m.engine").write_bytes(b"not an engine")
    images = tmp_path / "imgs"
    (images / "cat").mkdir(parents=True)
    (images / "cat" / "0.jpg").write_bytes((cifar_test / "cat").iterdir().__next__().read_bytes())
    (images / "cat" / "1.jpg").write_text("not a jpeg")
    cases = [
        (["--model", str(tmp_path / "m.onnx")], "ONNX Runtime cannot load"),
        (["--model", str(exported / "model.onnx"), "--images", str(images)],
         "cannot read the image"),
        (["--model", str(exported / "model.onnx"), "--json", str(tmp_path / "no" / "r.json")],
         "--json: the folder"),
        (["--model", str(tmp_path / "m.engine")], "TensorRT is not installed here"),
    ]  # fmt: skip
    for argv, said in cases:
        done = subprocess.run(
            [sys.executable, str(KIT / "run.py"), *argv, "--manifest", str(manifest),
             "--warmup-seconds", "0"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if said.startswith("TensorRT") and importlib.util.find_spec("tensorrt") is not None:
            continue  # with TensorRT the engine is opened, and refused by TensorRT itself
        assert done.returncode == 1, (argv, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and said in last, done.stderr
