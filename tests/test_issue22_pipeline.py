"""Issue 22 on real runs: a bad image is found before any stage, a damaged artifact is not up
to date, and a run writes nothing outside its output folder and the temp directory."""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from rmt_deploy.errors import DataError
from rmt_deploy.pipeline import RunConfig, StageDependencyError, run

PER_CLASS = 10


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, cifar_test) -> Path:
    """A labelled test folder (10 CIFAR-10 test images per class, copied) and a training
    folder (the next 10 of each class)."""
    root = tmp_path_factory.mktemp("data")
    for label in sorted(d.name for d in cifar_test.iterdir() if d.is_dir()):
        files = sorted((cifar_test / label).glob("*.jpg"))
        for split, chosen in (("test", files[:PER_CLASS]), ("train", files[PER_CLASS:20])):
            (root / split / label).mkdir(parents=True)
            for f in chosen:
                shutil.copyfile(f, root / split / label / f.name)
    return root


def _config(out: Path, folder: Path, assets: Path, **sections) -> RunConfig:
    """The smallest run: CIFAR ResNet-20, a few images, magnitude pruning, no fine-tuning."""
    raw = {
        "model": "cifar_resnet20",
        "assets": str(assets),
        "output": str(out),
        "analyze": {"plots": False},
        "data": {
            "test": str(folder / "test"),
            "train": None,
            "calib": "test",
            "calib_images": 16,
            "val_images": 16,
            "test_images": None,  # the rest: every test image is read
        },
        "compress": {"strategy": "magnitude", "sparsity": 0.3, "accuracy_budget": None},
        "finetune": {"steps": 0, "bn_recal_images": 0},
        "export": {"verify_images": 8},
        "benchmark": {
            "backends": ["torch", "onnxruntime"],
            "batches": [1],
            "runs": 2,
            "warmup_s": 0.0,
            "agreement_images": 8,
        },
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value}
    return RunConfig.from_dict(raw)


def _folder_with(tmp_path: Path, small_data: Path, name: str, content: bytes) -> Path:
    """A copy of the small data with one more file in test/cat."""
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    (data / "test" / "cat" / name).write_bytes(content)
    return data


@pytest.mark.parametrize("kind", ["empty", "truncated", "not an image"])
def test_a_bad_image_is_named_before_any_stage(kind, tmp_path, small_data, assets):
    good = sorted((small_data / "test" / "cat").glob("*.jpg"))[0].read_bytes()
    content = {"empty": b"", "truncated": good[: len(good) - 60], "not an image": b"hello"}
    data = _folder_with(tmp_path, small_data, "zz_bad.jpg", content[kind])
    config = _config(tmp_path / "run", data, assets)
    with pytest.raises(DataError) as caught:
        run(config, progress=False, log=lambda _: None)
    message = str(caught.value)
    assert message.startswith("data.test: ") and "\n" not in message
    assert str(data / "test" / "cat" / "zz_bad.jpg") in message
    assert "is not a readable image" in message and "replace or remove the file" in message
    assert not (tmp_path / "run" / "manifest.json").exists()  # no stage ran


def test_a_bad_training_image_is_named_before_any_stage(tmp_path, small_data, assets):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    (data / "train" / "dog" / "empty.jpg").write_bytes(b"")
    config = _config(
        tmp_path / "run",
        data,
        assets,
        data={"train": str(data / "train")},
        finetune={"steps": 1, "batch_size": 8},
    )
    with pytest.raises(DataError, match=r"^data\.train: .*empty\.jpg is not a readable image"):
        run(config, progress=False, log=lambda _: None)
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_a_damaged_artifact_is_not_up_to_date(tmp_path, small_data, assets):
    """A truncated plan.json counted as up to date; now the stage runs again, saying why."""
    config = _config(tmp_path / "run", small_data, assets)
    first = run(config, stages=["analyze", "plan"], progress=False, log=lambda _: None)
    assert first.ran == ["analyze", "plan"]
    plan = tmp_path / "run" / "plan" / "plan.json"
    whole = plan.read_bytes()
    plan.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(StageDependencyError, match=r"needs plan, which is damaged \(plan/plan"):
        run(config, stages=["compress"], progress=False, log=lambda _: None)
    lines: list[str] = []
    again = run(config, stages=["analyze", "plan"], progress=False, log=lines.append)
    assert again.skipped == ["analyze"] and again.ran == ["plan"]
    said = [line for line in lines if line.startswith("[plan] plan/plan.json has")]
    assert said and "not the" in said[0] and "running it again" in said[0]
    assert json.loads(plan.read_text())["strategy"] == "magnitude"
    # A manifest from before sizes were recorded: JSON that does not parse still counts.
    manifest = tmp_path / "run" / "manifest.json"
    entries = json.loads(manifest.read_text())
    for entry in entries["stages"].values():
        entry.pop("sizes")
    manifest.write_text(json.dumps(entries))
    plan.write_text(plan.read_text()[:-2])
    lines.clear()
    third = run(config, stages=["analyze", "plan"], progress=False, log=lines.append)
    assert third.ran == ["plan"] and "[plan] plan/plan.json is not valid JSON" in lines[1]


def _listing(folder: Path) -> dict[str, tuple]:
    """Every path under `folder` with its kind, size and modification time."""
    found = {}
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        found[str(path.relative_to(folder))] = (
            stat.S_IFMT(info.st_mode),
            info.st_size,
            info.st_mtime_ns,
        )
    return found


def _set_writable(folders: list[Path], writable: bool) -> None:
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755 if writable else 0o555)


@pytest.mark.slow
def test_a_run_writes_only_into_its_output_and_the_temp_dir(
    tmp_path, small_data, assets, monkeypatch
):
    """HOME, the working directory and the data folders read-only (and a fresh HOME, so a
    cache anywhere under it shows): the whole pipeline runs and leaves them as they were.
    As root chmod does not bind, so the listings before and after are what is checked."""
    home, cwd, data = tmp_path / "home", tmp_path / "cwd", tmp_path / "data"
    home.mkdir()
    cwd.mkdir()
    shutil.copytree(small_data, data)
    for key in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "ORT_DISABLE_TELEMETRY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    config = _config(
        tmp_path / "out",
        data,
        assets,
        data={"train": str(data / "train"), "calib": "train"},
        finetune={"steps": 2, "batch_size": 8, "bn_recal_images": 16},
        analyze={"plots": True},
    )
    watched = [home, cwd, data]
    before = [_listing(folder) for folder in watched]
    _set_writable(watched, False)
    try:
        result = run(config, progress=False, log=lambda _: None)
    finally:
        _set_writable(watched, True)
    assert result.report is not None and result.report.is_file()
    for folder, listing in zip(watched, before, strict=True):
        after = _listing(folder)
        assert after == listing, (folder, sorted(set(after) ^ set(listing)))
    assert os.getcwd() == str(cwd)
    assert "MPLCONFIGDIR" not in os.environ and "ORT_DISABLE_TELEMETRY" not in os.environ
