"""Whole models on deployments, for the search: ONNX files (and their INT8 models, made by the
recipe chosen on the dense model, with the layers chosen to stay in float) in a work folder,
runners, held-out outputs, and interleaved whole-model timing reused from a saved table."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..exporters.quantize import RecipeChoice
from ..layout import VariantFiles
from ..progress import tqdm
from ..runtimes import RUNTIMES, Deployment, Variant
from . import timing
from .results import Engine


def stack_images(data: Dataset) -> torch.Tensor:
    """A dataset's images as one tensor (the held-out set, the sensitivity probe)."""
    return torch.cat([x for x, _ in DataLoader(data, batch_size=100, num_workers=0)])


def exact(deployment: Deployment) -> bool:
    """Deployments that compute what PyTorch fp32 computes (validated in PyTorch)."""
    from ..deploy import openvino_default_precision

    if deployment.precision in ("fp32", "f32"):
        return deployment.device == "cpu"
    return deployment.precision == "default" and openvino_default_precision() == "f32"


class Engines:
    """Builds and runs whole models on deployments, in `folder` (a temporary work folder)."""

    def __init__(self, folder: Path, input_shape, calib: Dataset, threads: int):
        from ..exporters.quantize import int8_images, to_batches

        self.folder, self.input_shape, self.threads = folder, tuple(input_shape), threads
        ranges, check = int8_images(calib)
        self.calib = to_batches(stack_images(Subset(calib, ranges)))
        self.check = to_batches(stack_images(Subset(calib, check))) if check else self.calib[:4]
        self.recipe: RecipeChoice | None = None
        self.float_nodes: list[str] = []

    def files(self, model: nn.Module, tag: str, deployments=()) -> Variant:
        folder = self.folder / tag
        folder.mkdir(parents=True, exist_ok=True)
        path = VariantFiles(folder).onnx
        if not path.is_file():
            from ..exporters import export

            export(copy.deepcopy(model), folder, self.input_shape, n_verify=4, name=tag)
        files = Variant(model, path)
        artifacts = {d.artifact for d in deployments}
        if "onnx_int8" in artifacts:
            files.onnx_int8 = self._qdq(path, folder)
        if "openvino_int8" in artifacts:
            files.openvino_int8 = self.nncf(path, folder)
        return files

    def _qdq(self, path: Path, folder: Path) -> Path:
        """model.int8.onnx: the full QDQ model (the recipe picked on the first model asked
        for), with the float layers put back (model.int8.full.onnx keeps the full one)."""
        from ..exporters.quantize import choose_recipe, preprocess, quantize_int8

        at = VariantFiles(folder)
        target, full = at.onnx_int8, at.int8_full
        if target.is_file():
            return target
        if self.recipe is None:
            self.recipe = choose_recipe(path, folder, self.calib, self.check)
            shutil.copyfile(self.recipe.path, full)
        else:
            quantize_int8(path, full, self.calib, recipe=self.recipe.recipe)
        preprocess(path, at.prepared)
        self.apply_float(folder)
        return target

    def apply_float(self, folder: Path) -> None:
        """Rewrite folder/model.int8.onnx with `float_nodes` (those it has) in float."""
        from ..exporters.qdq import keep_float_present

        at = VariantFiles(folder)
        keep_float_present(at.int8_full, at.prepared, self.float_nodes, at.onnx_int8)

    def nncf(self, path: Path, folder: Path) -> Path:
        from ..exporters.nncf_int8 import nncf_int8

        xml = VariantFiles(folder).openvino_int8
        if not xml.is_file():
            nncf_int8(path, xml, self.calib)
        return xml

    def runner(self, deployment: Deployment, files: Variant):
        """The variant run as `deployment`, prepared as the benchmark prepares it."""
        options = {"threads": self.threads}
        return RUNTIMES[deployment.runtime].prepare(deployment.name, files, options).run

    @staticmethod
    def outputs(run, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
        return torch.cat(
            [
                torch.from_numpy(np.asarray(run(images[i : i + batch].numpy())).copy()).float()
                for i in range(0, len(images), batch)
            ]
        )


def time_engines(
    engines: list[Engine], runners, inputs, rounds, runs, cache, progress, keys=None
) -> None:
    """Whole-model latency of every engine, interleaved over rounds; reused from `cache` (a
    saved table) when every engine is there, so a replan on the same table decides alike."""
    keys = keys or {e.label: f"dense|{e.deployment}" for e in engines}
    if all(keys[e.label] in cache for e in engines):
        measured = {e.label: cache[keys[e.label]] for e in engines}
    else:
        wanted = {e.label: runners[e.label] for e in engines}
        samples = {}
        for _ in tqdm(range(1), desc="time engines", disable=not progress):
            samples = timing.time_interleaved(wanted, inputs, rounds, runs)
        measured = {label: timing.spread(values) for label, values in samples.items()}
        for e in engines:
            cache[keys[e.label]] = measured[e.label]
    for e in engines:
        m = measured[e.label]
        e.measured_ms, e.q1_ms, e.q3_ms = m["median_ms"], m["q1_ms"], m["q3_ms"]
