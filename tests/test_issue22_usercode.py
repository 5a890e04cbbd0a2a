"""User code of the wrong shape (issue 22): a model returning a tuple or a dict, a loader
yielding labels that are not class indices, a budget metric returning NaN or a non-number —
each refused where the user code is loaded or first checked, in one line naming the fix."""

import json
import re

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from rmt_deploy.budget import BudgetError, Reference, check_metric, measure, resolve_metric
from rmt_deploy.cli import main
from rmt_deploy.data import images_from_loader
from rmt_deploy.errors import DataError
from rmt_deploy.evaluate import evaluate
from rmt_deploy.models import load_model
from rmt_deploy.usercode import UserCodeError

USER = """
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset


class Net(nn.Module):
    def __init__(self, mode="tensor"):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)
        self.mode = mode
        self.pretrained_cfg = {"input_size": (3, 16, 16), "crop_pct": 1.0}

    def forward(self, x):
        y = self.fc(self.conv(x).mean((2, 3)))
        if self.mode == "tuple":
            return y, y.detach()
        if self.mode == "dict":
            return {"logits": y, "features": y}
        return y


def tuple_model(**kwargs):
    return Net("tuple")


def dict_model(**kwargs):
    return Net("dict")


def good_model(**kwargs):
    return Net()


class Named(Dataset):
    def __init__(self, label):
        self.label = label

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return torch.randn(3, 16, 16), self.label


def string_labels():
    return DataLoader(Named("cat"), batch_size=8)


def list_labels():
    return DataLoader(Named([1, 2]), batch_size=8)


def good_loader():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(80, 3, 16, 16, generator=g)
    labels = torch.randint(0, 10, (80,), generator=g)
    return DataLoader(TensorDataset(images, labels), batch_size=16)


def nan_metric(ref, out, labels):
    return float("nan")


def inf_per_input(ref, out, labels):
    return torch.full((len(out),), float("inf"))


def word_metric(ref, out, labels):
    return "fine"
"""


@pytest.fixture
def user(tmp_path):
    source = tmp_path / "user_code.py"
    source.write_text(USER)
    return source


@pytest.mark.parametrize(
    "factory, problem, fix",
    [
        (
            "tuple_model",
            r"returns a tuple of 2 \(Tensor 1×10, Tensor 1×10\)",
            r"self.model\(x\)\[i\]",
        ),
        (
            "dict_model",
            r"returns a dict with keys 'logits', 'features'",
            r"self.model\(x\)\['logits'\]",
        ),
    ],
)
def test_model_not_returning_a_tensor_is_refused_when_loaded(user, factory, problem, fix):
    spec = f"{user}:{factory}"
    with pytest.raises(UserCodeError, match=rf"model {spec} {problem}, not the logits tensor") as e:
        load_model(spec)
    assert "wrap it in an nn.Module" in str(e.value) and len(str(e.value).splitlines()) == 1
    assert re.search(fix, str(e.value))


def test_model_output_checked_by_the_verbs_python_api(user, tmp_path):
    from rmt_deploy.exporters import export

    model = load_model(f"{user}:good_model")
    model.mode = "tuple"  # a module given to the API directly, not through a factory
    data = TensorDataset(torch.randn(6, 3, 16, 16), torch.zeros(6, dtype=torch.long))
    with pytest.raises(UserCodeError, match=r"the model returns a tuple of 2 .*wrap it"):
        evaluate(model, data, progress=False, workers=0)
    with pytest.raises(UserCodeError, match=r"model net returns a tuple of 2 .*wrap it"):
        export(model, tmp_path / "onnx", (3, 16, 16), name="net", n_verify=4)
    assert not (tmp_path / "onnx").exists()  # refused before any file was written


def test_tuple_model_through_the_cli_is_one_line(user, tmp_path, capsys, cifar_test):
    code = main(
        ["--quiet", "eval", f"{user}:tuple_model", "--data", str(cifar_test), "--limit", "8"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "returns a tuple of 2" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "loader, what",
    [
        ("string_labels", r"yields labels as a tuple of 8 \(str, str, str, …\) \(first: 'cat'\)"),
        ("list_labels", r"yields labels as a list of 2 \(Tensor 8, Tensor 8\)"),
    ],
)
def test_loader_labels_that_are_not_class_indices(user, loader, what):
    spec = f"{user}:{loader}"
    with pytest.raises(DataError, match=rf"data.loader {spec} {what}, not class indices") as e:
        images_from_loader(spec, (3, 16, 16), None)
    assert "one integer class index" in str(e.value) and "classes.index(name)" in str(e.value)


def test_dataset_labels_that_are_not_class_indices_in_evaluate(user):
    class Named(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.randn(3, 16, 16), "dog"

    model = load_model(f"{user}:good_model")
    with pytest.raises(DataError, match=r"the dataset yields labels as a tuple of 4 .*'dog'"):
        evaluate(model, Named(), progress=False, workers=0)


@pytest.mark.parametrize(
    "metric, message",
    [
        ("nan_metric", r"returned nan: it must return a finite number"),
        ("inf_per_input", r"returned 4 non-finite losses \(NaN or ±inf\) of 4"),
        ("word_metric", r"returned str, not a number: return one float"),
    ],
)
def test_user_metric_of_the_wrong_kind_is_refused_on_one_batch(user, metric, message):
    budget_metric = resolve_metric(f"{user}:{metric}")
    sample = torch.randn(4, 10)
    with pytest.raises(BudgetError, match=rf"budget metric {user}:{metric} {message}"):
        check_metric(budget_metric, True, tuple(sample.shape), sample)
    with pytest.raises(BudgetError, match=message):  # and at every later use
        measure(budget_metric, Reference(sample, None), sample + 0.1)


def test_nan_metric_stops_the_pipeline_before_any_stage(user, tmp_path):
    from rmt_deploy.pipeline import RunConfig, run

    config = RunConfig.from_dict(
        {
            "model": f"{user}:good_model",
            "output": str(tmp_path / "run"),
            "analyze": {"plots": False},
            "data": {
                "train": None,
                "loader": f"{user}:good_loader",
                "calib": "test",
                "calib_images": 8,
                "val_images": 24,
                "test_images": 20,
            },
            "compress": {
                "strategy": "latency",
                "accuracy_budget": 1.0,
                "budget_metric": f"{user}:nan_metric",
                "targets": ["onnxruntime"],
            },
            "finetune": {"steps": 0, "bn_recal_images": 0},
            "benchmark": {"backends": ["torch"]},
        }
    )
    with pytest.raises(BudgetError, match=r"nan_metric returned nan: it must return a finite"):
        run(config, progress=False, log=lambda _: None)
    manifest = tmp_path / "run" / "manifest.json"
    assert not manifest.exists() or not json.loads(manifest.read_text()).get("stages")
