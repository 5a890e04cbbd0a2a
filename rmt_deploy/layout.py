"""Where files live, said once: the files of one exported model variant (`VariantFiles`) and
the folders of a run (`RunLayout`). Every reader and writer asks these objects, so a file name
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
