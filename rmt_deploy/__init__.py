"""rmt-deploy: random-matrix-theory guided compression of vision models for deployment.

The public API reads like the pipeline: `analyze(model)` fits the Marchenko–Pastur law to
every Linear/Conv weight and says how much of each spectrum is noise; `plan(model, strategy)`
decides per layer what to do; `compress_(model, plan)` does it; `bn_recalibrate` and
`finetune` recover the accuracy; `latency_plan` picks per layer the form that is fastest on
the target; `run(load_config(path))` is the whole pipeline through export and benchmark.
"""

from .analysis import LayerSpectrum, ModelSpectrum, analyze
from .compress import compress_
from .errors import RmtDeployError
from .evaluate import EvalResult, evaluate
from .models import DataConfig, load_model
from .pipeline import RunConfig, load_config, run
from .plan import CompressionPlan, LayerPlan
from .planner import LatencySearch, SearchConfig, latency_plan
from .recovery import FinetuneConfig, bn_recalibrate, finetune
from .spectral import MarchenkoPastur, MPFit, fit_mp
from .strategies import STRATEGIES, plan

__version__ = "0.1.0"

__all__ = [
    "STRATEGIES",
    "CompressionPlan",
    "FinetuneConfig",
    "LatencySearch",
    "SearchConfig",
    "LayerPlan",
    "bn_recalibrate",
    "compress_",
    "finetune",
    "plan",
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
    "latency_plan",
    "RunConfig",
    "load_config",
    "run",
]
