"""Sweeps: every head x task x intervention, exact (prefix reuse, heads on the batch axis) or attributed."""

from cortexmap.sweep.config import SweepConfig
from cortexmap.sweep.runner import SweepResult, run_sweep
from cortexmap.sweep.store import Results, load_results

__all__ = ["Results", "SweepConfig", "SweepResult", "load_results", "run_sweep"]
