"""Bad and unusual input: one line naming the problem and the fix, a non-zero exit, nothing
half-written, found before any expensive stage — never a traceback or a silently wrong result."""

import gc
import importlib
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from rmt_deploy.cli import build_parser, main, one_line
from rmt_deploy.data import load_image_dataset
from rmt_deploy.distributed import ddp_backend
from rmt_deploy.errors import CheckpointError, DataError, OutputError
from rmt_deploy.exporters import export
from rmt_deploy.exporters.onnx_export import ExportError, remove_stale_exports
from rmt_deploy.models import CifarResNet, load_model
from rmt_deploy.models.cifar_resnet import CIFAR10_CLASSES
from rmt_deploy.paths import LOCK_NAME, OutputInUseError, write_text_atomic
from rmt_deploy.pipeline import STAGES, ConfigError, RunConfig, load_config, run
from rmt_deploy.pipeline.run import StageNameError

run_module = importlib.import_module("rmt_deploy.pipeline.run")  # `pipeline.run` is the function
stage_module = importlib.import_module("rmt_deploy.pipeline.stages")
QUIET = dict(progress=False, log=lambda _: None)
LONG = "a" * 300


def cli(capsys, *argv):
    code = main(["--quiet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, *fragments, status=2):
    """The CLI's contract for bad input: status 2, one line on stderr, no traceback."""
    assert code == status, err
    assert err.startswith("rmt-deploy: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def _config(tmp_path, **sections) -> RunConfig:
    raw = {
        "model": "cifar_resnet20",
        "output": str(tmp_path / "run"),
        "analyze": {"plots": False},
        "data": {"calib_images": 16, "val_images": 16, "test_images": 16},
        "finetune": {"steps": 0, "bn_recal_images": 0},
        "benchmark": {"backends": ["torch"], "batches": [1], "runs": 2, "warmup_s": 0.0},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return RunConfig.from_dict(raw)


def _class_subset(root, cifar_test, classes=("cat", "dog", "ship"), per_class=10):
    """A test folder holding only some CIFAR-10 classes (symlinks to the real images)."""
    for name in classes:
        (root / name).mkdir(parents=True)
        for f in sorted((cifar_test / name).glob("*.jpg"))[:per_class]:
            (root / name / f.name).symlink_to(f)
    return root


# 1a. Two runs into one output folder -----------------------------------------------------


@pytest.fixture
def fake_stages(monkeypatch):
    """Stages that only write a file: the lock and the run loop under test, in milliseconds."""
    seen = []

    def stage(name):
        def fn(ctx):
            lock = json.loads((ctx.out / LOCK_NAME).read_text())
            seen.append((name, lock["pid"]))
            path = ctx.folder(name) / "done.txt"
            path.write_text(name)
            return [path], {}

        return fn

    for name in STAGES:
        monkeypatch.setitem(stage_module.STAGE_FUNCTIONS, name, stage(name))
    monkeypatch.setattr(
        run_module,
        "run_isolated",
        lambda s, config, out, *a: stage_module.STAGE_FUNCTIONS[s](
            stage_module.RunContext(config, out, *a)
        ),
    )
    monkeypatch.setattr(stage_module.RunContext, "validate", lambda self: None)
    monkeypatch.setattr(run_module, "check_data", lambda ctx: None)
    return seen


def _write_lock(folder, pid):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}
    (folder / LOCK_NAME).write_text(json.dumps(record))
    return record


def test_second_run_into_a_locked_folder_is_refused(tmp_path, fake_stages, capsys):
    config = _config(tmp_path)
    out = tmp_path / "run"
    first = run(config, **QUIET)  # the first run's files
    assert first.ran == list(STAGES) and not (out / LOCK_NAME).exists()  # released at the end
    assert {pid for _, pid in fake_stages} == {os.getpid()}  # held while the stages ran
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = _write_lock(out, holder.pid)
        with pytest.raises(OutputInUseError, match=rf"PID {holder.pid} .*wait for it to finish"):
            run(config, force=True, **QUIET)
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config.to_dict()))
        code, _, err = cli(capsys, "run", str(path), "--force")
        assert_one_line(code, err, f"PID {holder.pid}", "or give another --output")
        after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME}
        assert after == before  # the first run's files are intact
        assert json.loads((out / LOCK_NAME).read_text()) == record  # and its lock too
    finally:
        holder.kill()
        holder.wait()
    # The holder is dead now (a killed run): its lock is taken over, then released.
    again = run(config, force=True, **QUIET)
    assert again.ran == list(STAGES) and not (out / LOCK_NAME).exists()


def test_lock_is_released_on_errors_and_ctrl_c(tmp_path, fake_stages, monkeypatch):
    config = _config(tmp_path)
    for exc in (RuntimeError("killed"), KeyboardInterrupt()):

        def boom(ctx, exc=exc):
            raise exc

        monkeypatch.setitem(stage_module.STAGE_FUNCTIONS, "compress", boom)
        with pytest.raises(type(exc)):
            run(config, **QUIET)
        assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert not list((tmp_path / "run").glob(f"{LOCK_NAME}*"))  # nor a stale copy


# 1b. Class sub-folders labelled by name -------------------------------------------------


def test_partial_test_folder_is_labelled_by_name(tmp_path, capsys, cifar_test):
    part = _class_subset(tmp_path / "part", cifar_test)
    dataset = load_image_dataset(part, classes=CIFAR10_CLASSES)
    assert {label for _, label in dataset.samples} == {3, 5, 8}  # cat, dog, ship
    code, out, err = cli(capsys, "eval", "cifar_resnet20", "--data", str(part), "--json")
    assert code == 0, err
    assert json.loads(out)["top1"] > 50  # by position (0, 1, 2) it scored 0 %
    # Without a class list, positions would be wrong: refused, with the fix.
    with pytest.raises(DataError, match="3 class sub-folders but the model has 10 outputs"):
        load_image_dataset(part, num_outputs=10)
    (part / "zebra").mkdir()
    (part / "zebra" / "0.jpg").symlink_to(next((part / "cat").iterdir()).resolve())
    code, _, err = cli(capsys, "eval", "cifar_resnet20", "--data", str(part))
    assert_one_line(code, err, "class folder zebra is not among the model's 10 classes")


def test_partial_test_folder_refused_by_the_pipeline(tmp_path, cifar_test):
    part = _class_subset(tmp_path / "part", cifar_test, per_class=20)
    config = _config(tmp_path, data={"test": str(part)})
    with pytest.raises(DataError, match=r"holds 3 class folders, not the 10 classes of data.train"):
        run(config, **QUIET)
    assert not (tmp_path / "run").exists()  # nothing written, not even the folder
    missing = _config(tmp_path, data={"test": str(tmp_path / "nope")})
    with pytest.raises(DataError, match=r"data.test: folder .*nope not found"):
        run(missing, **QUIET)
    assert not (tmp_path / "run").exists()


# 1c. labels.csv with labels that are no class index --------------------------------------


def test_labels_csv_negative_or_too_large(tmp_path, capsys, cifar_test):
    images = sorted((cifar_test / "cat").glob("*.jpg"))[:3]
    for f in images:
        (tmp_path / f.name).symlink_to(f)
    rows = [f"{f.name},3" for f in images]
    rows[1] = f"{images[1].name},-1"
    (tmp_path / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"labels.csv line 3: label -1 is not a class index"):
        load_image_dataset(tmp_path)
    rows[1] = f"{images[1].name},10"
    (tmp_path / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    assert len(load_image_dataset(tmp_path)) == 3  # no class count known: 10 may be right
    code, _, err = cli(capsys, "eval", "cifar_resnet20", "--data", str(tmp_path))
    assert_one_line(code, err, "labels.csv line 3: label 10 is not a class index (0 … 9)")


# 1d. Float weights stored as integers -------------------------------------------------


def test_checkpoint_with_integer_weights_is_refused(tmp_path):
    state = CifarResNet(20).state_dict()
    as_int = {k: (v * 100).round().long() for k, v in state.items()}
    save_file(as_int, str(tmp_path / "int.safetensors"))
    with pytest.raises(CheckpointError, match=r"conv1.weight: checkpoint int64 vs model float32"):
        load_model("cifar_resnet20", tmp_path / "int.safetensors")
    torch.save(as_int, tmp_path / "int.pth")
    with pytest.raises(CheckpointError, match="wrong dtype"):
        load_model("cifar_resnet20", tmp_path / "int.pth")
    # Half precision into float32 is a plain cast: allowed.
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(half, str(tmp_path / "half.safetensors"))
    model = load_model("cifar_resnet20", tmp_path / "half.safetensors")
    assert model.conv1.weight.dtype == torch.float32
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].half().float())


# 2a. A corrupt image read in a DataLoader worker ---------------------------------------


def test_corrupt_image_in_a_worker_is_one_line(tmp_path, capsys, monkeypatch, cifar_test):
    # torch joins a failed loader's worker with this timeout when the iterator is collected
    # (5 s by default): shortened, and collected here, so the wait does not land elsewhere.
    monkeypatch.setattr("torch.utils.data._utils.MP_STATUS_CHECK_INTERVAL", 0.2)
    folder = _class_subset(tmp_path / "data", cifar_test, classes=("cat",), per_class=3)
    good = next((folder / "cat").iterdir()).read_bytes()
    (folder / "cat" / "zz_broken.jpg").write_bytes(good[:200])
    code, _, err = cli(capsys, "eval", "cifar_resnet20", "--data", str(folder), "--workers", "1")
    gc.collect()
    assert_one_line(code, err, "zz_broken.jpg is not a readable image", "replace or remove")
    assert "DataLoader worker" not in err and "Original Traceback" not in err


def test_one_line_keeps_the_workers_own_message():
    wrapped = (
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 3, in f\n    raise DataError(m)\n'
        "rmt_deploy.errors.DataError: /d/a.jpg is not a readable image (truncated)\n"
    )
    assert one_line(wrapped) == "/d/a.jpg is not a readable image (truncated)"
    assert one_line("first\n  second") == "first second"


# 2b. Ctrl-C ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "verb, argv, said",
    [
        ("run", ["run", "x.yaml"], "finished stages are kept"),
        ("eval", ["eval", "cifar_resnet20", "--data", "d"], "nothing"),
    ],
)
def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch, verb, argv, said):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"rmt_deploy.cli.{verb}.command", interrupted)
    code, _, err = cli(capsys, *argv)
    assert_one_line(code, err, "rmt-deploy: interrupted; rerun the same command", status=130)
    if said != "nothing":
        assert said in err


def test_sigterm_is_like_ctrl_c(capsys, monkeypatch, tmp_path):
    """SIGTERM (a job runner stopping the run) unwinds as Ctrl-C does: one line, exit 143, the
    output lock released (a rerun may take the folder), the previous handler restored."""
    import os
    import signal
    import time

    from rmt_deploy.paths import output_lock

    def command(args):
        with output_lock(tmp_path):
            assert (tmp_path / ".rmt-deploy.lock").is_file()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the signal lands here
        return 0

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr("rmt_deploy.cli.run.command", command)
    began = time.perf_counter()
    code, _, err = cli(capsys, "run", "x.yaml")
    assert time.perf_counter() - began < 4
    assert_one_line(code, err, "rmt-deploy: terminated (SIGTERM); rerun the same", status=143)
    assert "finished stages are kept" in err
    assert not (tmp_path / ".rmt-deploy.lock").exists()
    assert signal.getsignal(signal.SIGTERM) is before


# 2c / 2f / 3e. Config values: finite, in range, known ------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"finetune": {"lr": float("nan")}}, "finetune.lr must be a finite number ≥ 0, got nan"),
        ({"finetune": {"lr": -0.1}}, "finetune.lr must be a finite number ≥ 0, got -0.1"),
        ({"compress": {"sparsity": float("inf")}}, r"compress.sparsity must be a finite"),
        ({"compress": {"accuracy_budget": float("-inf")}}, "accuracy_budget must be a finite"),
        ({"compress": {"settings": {"theta": float("nan")}}}, "compress.settings.theta must"),
        ({"benchmark": {"warmup_s": float("nan")}}, "benchmark.warmup_s must be a finite"),
        ({"benchmark": {"warmup_s": -1}}, "benchmark.warmup_s must be a finite number ≥ 0"),
        ({"benchmark": {"agreement_images": -5}}, "agreement_images must be an integer ≥ 0"),
        ({"benchmark": {"runs": 0}}, "benchmark.runs must be an integer ≥ 1"),
        ({"benchmark": {"batches": [1, -8]}}, r"benchmark.batches\[1\] must be an integer ≥ 1"),
        ({"export": {"verify_images": 0}}, "export.verify_images must be an integer ≥ 1"),
        ({"export": {"opset": 3}}, r"export.opset must lie in \[7, 20\], got 3"),
        ({"data": {"test_images": 0}}, "data.test_images must be an integer ≥ 1"),
        ({"data": {"preprocess": {"crop_pct": 1.5}}}, r"crop_pct must lie in \(0, 1\]"),
        ({"data": {"preprocess": {"interpolation": "cubic"}}}, "interpolation: one of"),
        ({"finetune": {"distill_alpha": 2}}, r"distill_alpha must lie in \[0, 1\]"),
        ({"finetune": {"optimizer": "adam"}}, "finetune.optimizer: sgd or adamw"),
        ({"seed": -1}, r"seed must lie in \[0, "),
        ({"compress": {"device": "tpu"}}, "compress.device: cpu, cuda or cuda:N"),
        ({"compress": {"device": "cuda:x"}}, "compress.device: cpu, cuda or cuda:N"),
        ({"compress": {"targets": ["tflite"]}}, "compress.targets: auto or deployments"),
        ({"compress": {"budget_metric": "f1"}}, "compress.budget_metric: one of"),
        ({"benchmark": {"backends": ["auto", "torch"]}}, "benchmark.backends: auto, or"),
        ({"benchmark": {"backends": ["torch", "torch"]}}, "torch given twice"),
        ({"export": {"tensorrt": {"precision": "int4"}}}, "export.tensorrt.precision"),
        ({"export": {"tensorrt": {"sparsity": "maybe"}}}, "export.tensorrt.sparsity"),
        ({"export": {"tensorrt": {"batch": "8:1:1"}}}, "export.tensorrt.batch: takes MIN:OPT"),
    ],
)
def test_config_values_are_checked_at_load(raw, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({"model": "x", **raw})


def test_nan_in_a_yaml_file_names_the_key(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model: cifar_resnet20\nfinetune:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match="finetune.lr must be a finite number ≥ 0, got nan"):
        load_config(path)
    code, _, err = cli(capsys, "run", str(path))
    assert_one_line(code, err, "finetune.lr must be a finite number ≥ 0, got nan")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compress", "m", "--strategy", "seb", "--out", "o", "--lr", "nan"], "--lr must be"),
        (["compress", "m", "--strategy", "seb", "--out", "o", "--lr", "-1"], "finite number ≥ 0"),
        (["compress", "m", "--strategy", "seb", "--out", "o", "--device", "tpu"], "--device"),
        (["compress", "m", "--strategy", "seb", "--out", "o", "--distill-alpha", "2"], "[0, 1]"),
        (["compress", "m", "--strategy", "seb", "--out", "o", "--l2", "inf"], "--l2 must be"),
        (["run", "c.yaml", "--accuracy-budget", "nan"], "--accuracy-budget must be a finite"),
        (["run", "c.yaml", "--accuracy-budget", "-1"], "--accuracy-budget must be a finite"),
        (["eval", "m", "--data", "d", "--workers", "-1"], "--workers must be an integer ≥ 0"),
        (["eval", "m", "--data", "d", "--batch-size", "0"], "--batch-size must be an integer ≥ 1"),
        (["eval", "m", "--data", "d", "--crop-pct", "0"], "--crop-pct must lie in (0, 1]"),
        (["eval", "m", "--data", "d", "--mean", "nan,0,0"], "expected finite numbers"),
        (["export", "m", "--out", "o", "--atol", "-0.0001"], "--atol must be a finite number ≥ 0"),
        (["export", "m", "--out", "o", "--rtol", "nan"], "--rtol must be a finite number ≥ 0"),
        (["export", "m", "--out", "o", "--verify-images", "-3"], "--verify-images must be"),
        (["bench", "m", "--out", "o", "--warmup", "-1"], "--warmup must be a finite number ≥ 0"),
        (["bench", "m", "--out", "o", "--runs", "0"], "--runs must be an integer ≥ 1"),
        (["bench", "m", "--out", "o", "--limit", "-1"], "--limit must be an integer ≥ 1"),
        (["bench", "m", "--out", "o", "--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    ],
)
def test_cli_numbers_and_devices_are_checked_by_the_parser(
    tmp_path, capsys, monkeypatch, argv, message
):
    monkeypatch.chdir(tmp_path)  # nothing may be written: the folder stays empty
    code, _, err = cli(capsys, *argv)
    assert_one_line(code, err, message, "--help")
    assert list(tmp_path.iterdir()) == []


# 2e. Names over the OS limit ---------------------------------------------------------------


def test_names_over_the_os_limit(tmp_path, capsys, cifar_test):
    long_dir = tmp_path / LONG / "out"
    cases = [
        (["analyze", "cifar_resnet20", "--out", str(long_dir)], "cannot write to output"),
        (["export", "cifar_resnet20", "--out", str(long_dir)], "300 bytes long"),
        (["eval", "cifar_resnet20", "--data", str(tmp_path / LONG)], "data folder"),
        (
            ["eval", "cifar_resnet20", "--checkpoint", str(tmp_path / LONG), "--data", "."],
            "checkpoint",
        ),
        (["run", str(tmp_path / f"{LONG}.yaml")], "config file"),
    ]
    for argv, message in cases:
        code, _, err = cli(capsys, *argv)
        assert_one_line(code, err, message, "allows 255")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "cifar_resnet20"}))
    code, _, err = cli(capsys, "run", str(path), "--output", str(long_dir))
    assert_one_line(code, err, "cannot write to output directory", "choose a shorter name")
    # Atomic writes: a 250-character name fits (its temporary name is shortened), 300 does not.
    assert write_text_atomic(tmp_path / ("b" * 250), "x").read_text() == "x"
    with pytest.raises(OutputError, match="300 bytes long"):
        write_text_atomic(tmp_path / LONG, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b" * 250, "c.yaml"]


# 3a. --stages ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stages, message",
    [
        (",", "no stage named"),
        ("", "no stage named"),
        ("plan,deploy", "unknown stage(s) deploy"),
        ("plan,plan", "stage(s) plan named twice"),
    ],
)
def test_stages_option(tmp_path, capsys, stages, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "cifar_resnet20", "output": str(tmp_path / "r")}))
    code, _, err = cli(capsys, "run", str(path), "--stages", stages)
    assert_one_line(code, err, message, "stages: analyze, plan, compress")
    assert not (tmp_path / "r").exists()


def test_stages_api_refuses_an_empty_list(tmp_path):
    with pytest.raises(StageNameError, match="no stage named"):
        run(_config(tmp_path), stages=[], **QUIET)


# 3b. Duplicate YAML keys -----------------------------------------------------------------


def test_duplicate_yaml_key(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model: cifar_resnet20\nfinetune:\n  lr: 0.01\n  steps: 5\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'lr' at line 5 \(first at line 3\)"):
        load_config(path)
    code, _, err = cli(capsys, "run", str(path))
    assert_one_line(code, err, "duplicate key 'lr'", "remove one of them")
    # Overriding what a merge brought in is YAML's own feature, not a duplicate.
    path.write_text(
        "defaults: &d {steps: 5, lr: 0.01}\nmodel: cifar_resnet20\nfinetune:\n  <<: *d\n  lr: 0.1\n"
    )
    loader = importlib.import_module("rmt_deploy.pipeline.config")._UniqueKeyLoader
    raw = yaml.load(path.read_text(), Loader=loader)
    assert raw["finetune"] == {"steps": 5, "lr": 0.1}


# 3c / 3d. Export failures in one line, and no temporary folders left ---------------------


class _Unexportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x):
        h = self.linear(x.mean((2, 3)))[:, :2, None].expand(-1, 2, 2)
        return torch.linalg.eigvals(h).real.repeat(1, 2)


def test_export_failure_is_one_line_without_the_torch_ir(tmp_path, capfd):
    out = tmp_path / "onnx"
    out.mkdir()
    killed = out / ".export-99999999-abc"  # a killed export's leftovers (PID gone)
    (killed / "raw.onnx").parent.mkdir()
    (killed / "raw.onnx").write_bytes(b"half")
    old_style = out / ".export-x1y2z3"
    old_style.mkdir()
    with pytest.raises(ExportError) as info:
        export(_Unexportable(), out, (3, 4, 4), name="odd")
    message = str(info.value)
    assert "\n" not in message and "aten::linalg_eigvals" in message, message
    assert message.startswith("ONNX export of odd failed (torchscript): Exporting the operator")
    captured = capfd.readouterr()
    assert "Torch IR graph" not in captured.out + captured.err
    assert list(out.iterdir()) == []  # stale folders removed, nothing half-written


def test_stale_export_folders_of_live_processes_are_kept(tmp_path):
    live = tmp_path / f".export-{os.getpid()}-q"
    dead = tmp_path / ".export-99999999-r"
    for folder in (live, dead):
        folder.mkdir()
    assert remove_stale_exports(tmp_path) == [dead]
    assert live.is_dir()


# 4. Model arguments, the parser, DDP backend --------------------------------------------


def test_every_verb_has_its_own_module():
    parser = build_parser()
    argvs = {
        "analyze": ["m", "--out", "o"],
        "compress": ["m", "--strategy", "seb", "--out", "o"],
        "export": ["m", "--out", "o"],
        "build": ["m.onnx"],
        "bench": ["m", "--out", "o"],
        "run": ["c.yaml"],
        "report": ["d"],
        "eval": ["m", "--data", "d"],
    }
    for verb, argv in argvs.items():
        module = importlib.import_module(f"rmt_deploy.cli.{verb}")
        assert parser.parse_args([verb, *argv]).func is module.command
    args = parser.parse_args(["compress", "m", "--strategy", "seb", "--out", "o"])
    assert args.device == "cpu" and args.lr is None and args.sparsity == 0.5  # lr: by optimizer
    args = parser.parse_args(["export", "m", "--out", "o", "--atol", "0", "--opset", "18"])
    assert (args.atol, args.rtol, args.opset) == (0.0, 1e-3, 18)


def test_ddp_backend_follows_the_device(monkeypatch):
    from rmt_deploy import distributed

    assert ddp_backend("cpu") == "gloo"
    assert ddp_backend("cuda") == ddp_backend("cuda:1") == "nccl"
    import torch.distributed as dist

    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: chosen.append(backend))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # GPUs there, CPU asked for
    distributed.init_distributed("cpu")
    assert chosen == ["gloo"]
    # The NCCL branch: CUDA work joins over nccl, each rank on its own GPU (LOCAL_RANK).
    devices = []
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    distributed.init_distributed("cuda")
    assert chosen == ["gloo", "nccl"] and devices == [1]
    monkeypatch.setenv("WORLD_SIZE", "1")  # not under torchrun: no group at all
    distributed.init_distributed("cuda")
    assert chosen == ["gloo", "nccl"]


def test_compress_device_cuda_without_a_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    out = tmp_path / "o"
    code, _, err = cli(
        capsys,
        "compress",
        "cifar_resnet20",
        "--strategy",
        "magnitude",
        "--device",
        "cuda",
        "--out",
        str(out),
    )
    assert_one_line(code, err, "--device cuda: no CUDA device is visible here")
    assert not out.exists()


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    out = tmp_path_factory.mktemp("c20")
    code = main(
        [
            "--quiet",
            "compress",
            "cifar_resnet20",
            "--strategy",
            "magnitude",
            "--sparsity",
            "0.3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_compress_output_as_the_model_argument(compressed, tmp_path, capsys, cifar_test):
    part = _class_subset(tmp_path / "part", cifar_test, per_class=4)
    for model in (str(compressed), str(compressed / "model.safetensors")):
        code, out, err = cli(capsys, "eval", model, "--data", str(part), "--json")
        assert code == 0, err
        assert json.loads(out)["n_images"] == 12
    code, out, err = cli(
        capsys, "export", str(compressed), "--out", str(tmp_path / "onnx"), "--verify-images", "4"
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["source"]["model"] == "cifar_resnet20"
    assert manifest["source"]["checkpoint"].endswith("model.safetensors")
    assert manifest["plan"]["strategy"] == "magnitude"
    code, out, err = cli(
        capsys,
        "analyze",
        str(compressed),
        "--out",
        str(tmp_path / "a"),
        "--no-plots",
        "--min-dim",
        "64",
    )
    assert code == 0, err
    assert out.startswith("cifar_resnet20:")


def test_bad_model_arguments(compressed, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pth")
    other = tmp_path / "other.safetensors"
    other.write_bytes((compressed / "model.safetensors").read_bytes())
    cases = [
        ([str(tmp_path / "empty")], "is a folder without model.safetensors"),
        ([str(tmp_path / "plain.safetensors")], "does not name its model"),
        ([str(tmp_path / "w.pth")], "pass the model name and --checkpoint"),
        ([str(compressed), "--checkpoint", str(other)], "pass one of them"),
    ]
    for model_args, message in cases:
        code, _, err = cli(capsys, "eval", *model_args, "--data", str(tmp_path))
        assert_one_line(code, err, message)


# 5. The user's model factory ---------------------------------------------------------------

FACTORIES = """
from torch import nn


def raises():
    raise ValueError("no weights at /models/missing.pt")


def needs(depth):
    return nn.Linear(depth, 2)


def text():
    return "resnet"
"""


def test_user_model_factory_errors_are_theirs(tmp_path, capsys):
    source = tmp_path / "factory.py"
    source.write_text(FACTORIES)
    cases = [
        ("raises", [f"{source}:raises raised ValueError: no weights", f"{source}:6 in raises"]),
        ("needs", [f"{source}:needs cannot be called this way", "depth"]),
        ("text", [f"{source}:text' returned a str, not an nn.Module"]),
    ]
    for fn, fragments in cases:
        out = tmp_path / fn
        code, _, err = cli(capsys, "analyze", f"{source}:{fn}", "--out", str(out))
        assert_one_line(code, err, *fragments)


# INT8: too few calibration images, a runtime without INT8 or NNCF ------------------------


def test_int8_with_too_few_calibration_images_is_refused_before_any_stage(tmp_path):
    from rmt_deploy.errors import RmtDeployError

    config = _config(tmp_path, compress={"strategy": "latency", "targets": ["onnxruntime-int8"],
                                         "accuracy_budget": 1.0})  # fmt: skip
    with pytest.raises(RmtDeployError, match=r"INT8 \(onnxruntime-int8\) needs at least 32 "
                       r"calibration images and data.calib_images gives 16: raise it"):  # fmt: skip
        run(config, **QUIET)
    assert not (tmp_path / "run").exists()
    # the benchmark's auto list holds INT8 too: the same refusal, naming every int8 deployment
    config = _config(tmp_path, benchmark={"backends": ["auto"]})
    with pytest.raises(RmtDeployError, match=r"INT8 \(onnxruntime-int8, openvino-int8"):
        run(config, **QUIET)


def test_int8_deployments_this_machine_cannot_run_are_named(monkeypatch):
    import importlib.util

    from rmt_deploy.deploy import DeploymentError, resolve
    from rmt_deploy.runtimes import openvino

    real = importlib.util.find_spec
    monkeypatch.setattr(
        openvino.importlib.util, "find_spec", lambda n: None if n == "nncf" else real(n)
    )
    with pytest.raises(DeploymentError, match="openvino-nncf-int8 cannot run here: NNCF is not "
                       r"installed \(pip install nncf\)"):  # fmt: skip
        resolve(["openvino-nncf-int8"])
    chosen, skipped = resolve("auto")  # auto drops it and says why
    assert "openvino-nncf-int8" not in {d.name for d in chosen}
    assert skipped["openvino-nncf-int8"] == "NNCF is not installed (pip install nncf)"
    monkeypatch.setattr(openvino, "openvino_capabilities", lambda: ["FP32"])
    with pytest.raises(DeploymentError, match="openvino-int8 cannot run here: OpenVINO reports "
                       "no INT8 kernels on this CPU"):  # fmt: skip
        resolve(["openvino-int8"])
