"""One config-driven pipeline: analyze → plan → compress → evaluate → export → benchmark →
report, resumable stage by stage."""

from .config import ConfigError, RunConfig, load_config
from .run import STAGES, RunResult, StageDependencyError, run

__all__ = [
    "STAGES",
    "ConfigError",
    "RunConfig",
    "RunResult",
    "StageDependencyError",
    "load_config",
    "run",
]
