"""rmt-deploy: random-matrix-theory guided compression of vision models for deployment.

The public API reads like the pipeline: `analyze(model)` fits the Marchenko–Pastur law to
every Linear/Conv weight and says how much of each spectrum is noise.
"""

from .analysis import LayerSpectrum, ModelSpectrum, analyze
from .errors import RmtDeployError
from .evaluate import EvalResult, evaluate
from .models import DataConfig, load_model
from .spectral import MarchenkoPastur, MPFit, fit_mp

__version__ = "0.1.0"

__all__ = [
    "DataConfig",
    "EvalResult",
    "LayerSpectrum",
    "MPFit",
    "MarchenkoPastur",
    "ModelSpectrum",
    "RmtDeployError",
    "analyze",
    "evaluate",
    "fit_mp",
    "load_model",
]
