"""Export compressed models: ONNX (verified in ONNX Runtime) with a manifest."""

from .onnx_export import ExportArtifact, ExportMismatchError, ParityReport, export, verify_onnx

__all__ = ["ExportArtifact", "ExportMismatchError", "ParityReport", "export", "verify_onnx"]
