"""Sweeps: every head x task x intervention, exact (prefix reuse, heads on the batch axis) or attributed.

Names load on first use, so ``cortexmap.sweep.store`` (pandas only) can be imported without torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"SweepConfig": "config", "SweepResult": "runner", "run_sweep": "runner", "Results": "store",
            "load_results": "store"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"cortexmap.sweep.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cortexmap.sweep' has no attribute {name!r}")
