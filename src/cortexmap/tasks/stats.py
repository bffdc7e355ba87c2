"""Seeded bootstrap confidence intervals of a mean (numpy only, no torch).

Percentile bootstrap: resample the values with replacement ``n_boot`` times, take the mean
of each resample, and report the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
those means. The same ``seed`` gives the same interval; an empty input gives ``(nan, nan)``
and a single value gives ``(value, value)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cortexmap.errors import CortexmapError


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise CortexmapError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise CortexmapError(f"level must lie strictly between 0 and 1, got {level}")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``.

    Args:
        values: the sample (any shape; flattened). NaNs are not allowed.
        n_boot: number of bootstrap resamples.
        seed: seed of the resampling.
        level: coverage of the interval, e.g. 0.95.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for an empty sample.

    Raises:
        CortexmapError: ``n_boot < 1``, ``level`` outside (0, 1), or NaN values.
    """
    x = np.asarray(values, dtype=float).ravel()
    low, high = bootstrap_cis(x[:, None], n_boot=n_boot, seed=seed, level=level)
    return float(low[0]), float(high[0])


def bootstrap_cis(
    values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap intervals of the column means of ``values``, resampling whole rows.

    Every column uses the same resampled rows, so intervals of, e.g., all heads measured on
    the same prompts are drawn consistently (rows = prompts, columns = heads).

    Args:
        values: ``[n_samples, n_columns]``.
        n_boot: number of bootstrap resamples.
        seed: seed of the resampling.
        level: coverage of the interval.

    Returns:
        ``(low, high)``, each ``[n_columns]``; NaN columns for an empty sample.

    Raises:
        CortexmapError: bad ``n_boot`` / ``level``, a non-2-D input, or NaN values.
    """
    _check(n_boot, level)
    x = np.asarray(values, dtype=float)
    if x.ndim != 2:
        raise CortexmapError(f"values must be 2-D [n_samples, n_columns], got shape {x.shape}")
    if np.isnan(x).any():
        raise CortexmapError("values contain NaN; drop missing samples before bootstrapping")
    n, k = x.shape
    if n == 0:
        return np.full(k, np.nan), np.full(k, np.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    # Accumulate the resample means in chunks so n_boot x n x k never sits in memory at once.
    means = np.empty((n_boot, k))
    step = max(1, 2_000_000 // max(1, n * k))
    for start in range(0, n_boot, step):
        means[start : start + step] = x[idx[start : start + step]].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return low, high
