"""cortexmap: map the function of every attention head of a causal LM by intervening on it.

Importing the package is cheap: the public names below load their modules on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "cortexmap.models",
    "wrap_model": "cortexmap.models",
    "ModelHandle": "cortexmap.models",
    "intervene": "cortexmap.interventions",
    "head_outputs": "cortexmap.interventions",
    "HeadId": "cortexmap.heads",
    "CortexmapError": "cortexmap.errors",
    "build_task": "cortexmap.tasks",
    "SweepConfig": "cortexmap.sweep",
    "run_sweep": "cortexmap.sweep",
    "measure_run": "cortexmap.sweep",
    "Results": "cortexmap.results",
    "load_results": "cortexmap.results",
    "build_atlas": "cortexmap.analysis",
    "analyze_run": "cortexmap.analysis.run",
    "compare_runs": "cortexmap.analysis.run",
    "render_report": "cortexmap.report",
    "monitor": "cortexmap.apply",
    "check": "cortexmap.checks",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cortexmap' has no attribute {name!r}")
