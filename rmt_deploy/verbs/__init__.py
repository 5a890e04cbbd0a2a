"""The verbs, each written once: analyze, plan, compress, recover, export, benchmark, evaluate.

The CLI (`rmt_deploy/cli/`) and the pipeline's stages (`rmt_deploy/pipeline/stages.py`) only
turn flags and config sections into calls of these, so the two cannot drift apart: the same
recovery recipe, the same labels, the same backend options from either caller. Arguments that
may cost something to make (a training folder, a spectrum) can be given as a zero-argument
callable; it is called only when the verb needs it.
"""

from .analyze import analyze_to
from .benchmark import BenchSettings, auto_backends, backend_options, benchmark_variants
from .compress import compress_and_recover, save_compressed
from .evaluate import labelled_images
from .export import export_int8, export_onnx, int8_calibration, variant_files
from .plan import PlanRequest, plan_model
from .recover import RecoveryOptions, recover_, recovery_recipe

__all__ = [
    "BenchSettings",
    "PlanRequest",
    "RecoveryOptions",
    "analyze_to",
    "auto_backends",
    "backend_options",
    "benchmark_variants",
    "compress_and_recover",
    "export_onnx",
    "int8_calibration",
    "labelled_images",
    "plan_model",
    "export_int8",
    "recover_",
    "recovery_recipe",
    "save_compressed",
    "variant_files",
]
