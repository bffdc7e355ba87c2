"""Where a sweep's numbers are computed: in this process, or on Ray workers.

A backend answers three questions for the runner: the model's facts (for the manifest), the
probe scores, and a unit's per-prompt metric matrix (see :mod:`cortexmap.sweep.compute`). Both
backends run the same per-layer computations, so they give the same numbers.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pandas as pd

from cortexmap.sweep.compute import Tick, attribution_matrix, clean_metrics, exact_matrix, prepare
from cortexmap.sweep.config import SweepConfig
from cortexmap.sweep.plan import auto_rows


def _alpha(spec: Any) -> float:
    return 0.0 if math.isnan(spec.alpha) else spec.alpha


class LocalBackend:
    """Computes in this process on one loaded model; caches one task's clean passes at a time."""

    def __init__(self, config: SweepConfig, handle: Any = None, note: Callable[[str], None] | None = None) -> None:
        if handle is None:
            from cortexmap.models import load_model

            handle = load_model(config.model, device=config.resolved_device, dtype=config.dtype, progress=note)
        self.config = config
        self.handle = handle
        self._cached: tuple[Any, bool, list[Any], int] | None = None

    @property
    def tokenizer(self) -> Any:
        return self.handle.tokenizer

    def describe(self) -> dict[str, Any]:
        return self.handle.describe()

    def probes(self) -> pd.DataFrame:
        from cortexmap.tasks.probes import run_probes

        return run_probes(self.handle, n=self.config.probe_prompts, seed=self.config.seed)

    def _batches(self, task: Any, need_corrupt: bool) -> tuple[list[Any], int]:
        cached = self._cached
        key = (task.name, tuple(p.prompt for p in task.pairs))
        if cached is None or cached[0] != key or (need_corrupt and not cached[1]):
            from cortexmap.tasks import encode_task

            batches = prepare(self.handle, encode_task(task, self.handle.tokenizer, max_batch=64), need_corrupt)
            seq = max(b.input_ids.shape[1] for b in batches)
            self._cached = (key, need_corrupt, batches, self.config.rows_per_pass(auto_rows(self.handle, seq)))
        return self._cached[2], self._cached[3]

    def matrix(self, task: Any, spec: Any, method: str, heads: list[tuple[int, int]] | None = None,
               tick: Tick | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(per-prompt metric matrix, clean metric per prompt)`` of one unit."""
        batches, rows = self._batches(task, spec.kind == "patch")
        if method == "attribution":
            matrix = attribution_matrix(self.handle, batches, spec.kind, _alpha(spec), seed=self.config.seed)
            if tick:
                tick(self.handle.n_layers * self.handle.n_heads * 0.05)
        else:
            matrix = exact_matrix(self.handle, batches, spec.kind, _alpha(spec), rows_per_pass=rows, heads=heads,
                                  seed=self.config.seed, tick=tick)
        return matrix, clean_metrics(batches)

    def close(self) -> None:
        self._cached = None
