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

from cortexmap.sweep.compute import Tick, attribution_matrix, clean_metrics, exact_matrix, prepare, task_means
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
        self._means: tuple[Any, Any] | None = None

    @property
    def tokenizer(self) -> Any:
        return self.handle.tokenizer

    def describe(self) -> dict[str, Any]:
        return self.handle.describe()

    def probes(self) -> pd.DataFrame:
        from cortexmap.tasks.probes import run_probes

        return run_probes(self.handle, n=self.config.probe_prompts, seed=self.config.seed)

    def evidence(self, tasks: list[Any], probes: bool = True) -> pd.DataFrame:
        """Attention, OV and direct-logit evidence of every head on ``tasks`` (and the probes, unless
        ``probes`` is False): :func:`~cortexmap.sweep.evidence.measure_evidence`."""
        from cortexmap.sweep.evidence import PROBE_STATS, measure_evidence

        return measure_evidence(self.handle, tasks, probe_prompts=self.config.probe_prompts, seed=self.config.seed,
                                probes=tuple(PROBE_STATS) if probes else ())

    def _batches(self, task: Any, need_corrupt: bool) -> tuple[list[Any], int]:
        cached = self._cached
        key = (task.name, tuple(p.prompt for p in task.pairs))
        if cached is None or cached[0] != key or (need_corrupt and not cached[1]):
            from cortexmap.tasks import encode_task

            batches = prepare(self.handle, encode_task(task, self.handle.tokenizer, max_batch=64), need_corrupt)
            seq = max(b.input_ids.shape[1] for b in batches)
            self._cached = (key, need_corrupt, batches, self.config.rows_per_pass(auto_rows(self.handle, seq)))
        return self._cached[2], self._cached[3]

    def task_means(self, task: Any) -> dict[int, Any]:
        """Mean head output over every token of every prompt of ``task`` (mean ablation's replacement), cached."""
        key = (task.name, tuple(p.prompt for p in task.pairs))
        if self._means is None or self._means[0] != key:
            from cortexmap.tasks import encode_task

            batches = prepare(self.handle, encode_task(task, self.handle.tokenizer, max_batch=64), False)
            self._means = (key, task_means(batches))
        return self._means[1]

    def matrix(self, task: Any, spec: Any, method: str, heads: list[tuple[int, int]] | None = None,
               tick: Tick | None = None, means_of: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``(per-prompt metric matrix, clean metric per prompt)`` of one unit.

        ``means_of``: for mean ablation, the task whose prompts define each head's mean (e.g. the
        whole task when ``task`` is a subsample of it); ``task`` itself when None.
        """
        means = self.task_means(means_of) if spec.kind == "mean" and means_of is not None else None
        batches, rows = self._batches(task, spec.kind == "patch")
        if method == "attribution":
            matrix = attribution_matrix(self.handle, batches, spec.kind, _alpha(spec), seed=self.config.seed)
            if tick:
                tick(self.handle.n_layers * self.handle.n_heads * 0.05)
        else:
            matrix = exact_matrix(self.handle, batches, spec.kind, _alpha(spec), rows_per_pass=rows, heads=heads,
                                  seed=self.config.seed, tick=tick, means=means)
        return matrix, clean_metrics(batches)

    def close(self) -> None:
        self._cached = None
        self._means = None
