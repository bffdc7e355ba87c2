"""Sweeps: every head x task x intervention, exact (prefix reuse, heads on the batch axis) or screened.

Names load on first use; the run directory a sweep writes is :mod:`cortexmap.results`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"SweepConfig": "config", "run_sweep": "runner", "measure_run": "measures"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"cortexmap.sweep.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cortexmap.sweep' has no attribute {name!r}")
