"""Where files live, said once: the files of one exported model variant (`VariantFiles`) and
every path of a run folder (`RunLayout`). Every reader and writer asks these objects, so a file name
is spelled in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The file of each INT8 artifact, by the deployment artifact it serves.
INT8_NAMES = {"onnx_int8": "model.int8.onnx", "openvino_int8": "model.nncf.xml"}


@dataclass(frozen=True)
class VariantFiles:
    """The files of one exported model variant in `folder`."""

    folder: Path

    @property
    def onnx(self) -> Path:
        return self.folder / "model.onnx"

    @property
    def onnx_data(self) -> Path:  # external weights of a large model
        return self.folder / "model.onnx.data"

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    @property
    def onnx_int8(self) -> Path:  # QDQ INT8, with the layers chosen to stay float
        return self.folder / INT8_NAMES["onnx_int8"]

    @property
    def int8_full(self) -> Path:  # QDQ INT8 with every layer quantized
        return self.folder / "model.int8.full.onnx"

    @property
    def prepared(self) -> Path:  # ONNX Runtime's pre-processed fp32 graph (shapes inferred)
        return self.folder / "model.prepared.onnx"

    @property
    def openvino_int8(self) -> Path:  # NNCF's INT8 model, OpenVINO IR
        return self.folder / INT8_NAMES["openvino_int8"]

    def engine(self, precision: str) -> Path:
        """The TensorRT engine built at `precision`."""
        return self.folder / f"model_{precision}.engine"

    def artifact(self, name: str) -> Path:
        """The file of a deployment artifact (onnx, onnx_int8, openvino_int8)."""
        return getattr(self, name)


@dataclass(frozen=True)
class RunLayout:
    """Every path of a run folder `out`: what each stage writes and the next one reads."""

    out: Path

    @property
    def manifest(self) -> Path:  # which stages are done, with their keys and artifacts
        return self.out / "manifest.json"

    @property
    def config(self) -> Path:
        return self.out / "config.json"

    @property
    def spectrum(self) -> Path:
        return self.out / "analyze" / "spectrum.json"

    @property
    def plan(self) -> Path:
        return self.out / "plan" / "plan.json"

    @property
    def payloads(self) -> Path:  # the plan's factors and masks
        return self.out / "plan" / "payload.safetensors"

    @property
    def planner(self) -> Path:  # the latency search's record (planner.md beside it)
        return self.out / "plan" / "planner.json"

    @property
    def compressed(self) -> Path:
        return self.out / "compress" / "model.safetensors"

    @property
    def dense_finetuned(self) -> Path:  # the dense model given the same recovery
        return self.out / "compress" / "dense_finetuned.safetensors"

    @property
    def finetune(self) -> Path:
        return self.out / "compress" / "finetune.json"

    @property
    def accuracy(self) -> Path:
        return self.out / "evaluate" / "accuracy.json"

    @property
    def split(self) -> Path:
        return self.out / "evaluate" / "split.json"

    def export(self, variant: str) -> VariantFiles:
        """The exported files of a variant (dense, compressed)."""
        return VariantFiles(self.out / "export" / variant)

    @property
    def bench(self) -> Path:
        return self.out / "bench" / "bench.json"

    @property
    def report_md(self) -> Path:
        return self.out / "report.md"

    @property
    def report_json(self) -> Path:
        return self.out / "report.json"
