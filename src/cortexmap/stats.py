"""The statistics every layer of cortexmap uses, once: numpy and scipy only (no torch).

* **Bootstrap intervals** of a mean (:func:`bootstrap_ci`, :func:`bootstrap_cis`): percentile
  bootstrap, resampling whole rows (prompts) with replacement ``n_boot`` times; the interval is the
  ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means. The same ``seed``
  gives the same interval; an empty input gives ``(nan, nan)`` and a single value ``(value, value)``.
  :func:`percentile_interval` takes replicates drawn elsewhere.
* **Hierarchical resampling** (:func:`resample_within`): resample units *within* strata (tasks
  within levels, prompts within templates), so each stratum keeps its size. A claim about levels
  resamples tasks; a claim about a head resamples prompts.
* **Permutation p-values** (:func:`permutation_p`): ``(1 + #{null >= observed}) / (1 + n)`` (the
  observed statistic counts as one draw of the null, so p is never 0 and its smallest value is
  ``1 / (1 + n)``: :func:`smallest_p`); two-sided on absolute values.
* **Benjamini-Hochberg** q-values (:func:`bh_q`) over the family a summary reports; NaN p-values
  stay NaN and do not count in the family.
* **Clopper-Pearson** intervals of a proportion (:func:`clopper_pearson`).
* **Power** (:func:`detectable_shift`): the smallest planted shift a test rejects with a given
  probability, found by simulation, so a "no" can say what it could have seen.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np
from scipy.stats import binomtest, false_discovery_control

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


def percentile_interval(draws: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap replicates along ``axis``, ignoring NaN replicates.

    Args:
        draws: bootstrap replicates.
        level: coverage, e.g. 0.95.
        axis: the replicate axis.

    Returns:
        ``(low, high)`` arrays (NaN where every replicate is NaN).
    """
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN bounds
        low = np.nanpercentile(draws, tail, axis=axis)
        high = np.nanpercentile(draws, 100 - tail, axis=axis)
    return np.asarray(low, dtype=float), np.asarray(high, dtype=float)


def resample_within(strata: Sequence[Any] | np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap indices that resample units with replacement within each stratum.

    Args:
        strata: the stratum of each unit (e.g. the level of each task).
        n_boot: replicates.
        rng: the generator.

    Returns:
        ``[n_boot, n_units]`` integer indices; column ``i`` of a replicate holds a unit of the
        same stratum as unit ``i``, so every stratum keeps its size.
    """
    labels = np.asarray(strata)
    out = np.empty((n_boot, len(labels)), dtype=int)
    for value in dict.fromkeys(labels.tolist()):
        members = np.flatnonzero(labels == value)
        out[:, members] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
    return out


def permutation_p(observed: float | np.ndarray, null: np.ndarray, *, alternative: str = "greater",
                  axis: int = 0) -> np.ndarray:
    """Monte Carlo permutation p-value ``(1 + #{null >= observed}) / (1 + n)``.

    Args:
        observed: the statistic (scalar or array broadcasting against ``null`` without ``axis``).
        null: statistics of the permuted data; NaN draws are left out of the count and of ``n``.
        alternative: ``"greater"`` (large statistics are evidence), ``"less"`` or ``"two-sided"``
            (absolute values).
        axis: the permutation axis of ``null``.

    Returns:
        The p-values (NaN where ``observed`` is NaN).

    Raises:
        CortexmapError: an unknown ``alternative``.
    """
    obs = np.expand_dims(np.asarray(observed, dtype=float), axis)
    draws = np.asarray(null, dtype=float)
    if alternative == "greater":
        hits = draws >= obs - 1e-12
    elif alternative == "less":
        hits = draws <= obs + 1e-12
    elif alternative == "two-sided":
        hits = np.abs(draws) >= np.abs(obs) - 1e-12
    else:
        raise CortexmapError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    valid = np.isfinite(draws)
    p = (1 + (hits & valid).sum(axis=axis)) / (1 + valid.sum(axis=axis))
    return np.where(np.isfinite(np.squeeze(obs, axis)), p, np.nan)


def smallest_p(n_perm: int) -> float:
    """The smallest p-value ``n_perm`` permutations can give: ``1 / (1 + n_perm)``."""
    return 1.0 / (1 + n_perm)


def bh_q(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values over one family; NaN p-values stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = false_discovery_control(np.clip(p[finite], 0.0, 1.0))
    return q


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion; ``(nan, nan)`` without trials."""
    if trials <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def detectable_shift(rejects: Callable[[float, np.random.Generator], bool], shifts: Sequence[float], *,
                     power: float = 0.8, n_sim: int = 200, seed: int = 0) -> tuple[float | None, list[float]]:
    """The smallest planted shift a test rejects with probability at least ``power``, by simulation.

    Args:
        rejects: ``rejects(shift, rng)`` simulates one data set with the effect ``shift`` planted
            and says whether the test rejects.
        shifts: candidate shifts, increasing.
        power: the rejection rate asked for.
        n_sim: simulated data sets per shift.
        seed: seed of the simulations.

    Returns:
        ``(shift, rates)``: the first shift whose rejection rate reaches ``power`` (None when none
        does) and the rejection rate of every shift tried (the search stops at the first success).
    """
    rng = np.random.default_rng(seed)
    rates: list[float] = []
    for shift in shifts:
        rate = float(np.mean([rejects(float(shift), rng) for _ in range(n_sim)]))
        rates.append(rate)
        if rate >= power:
            return float(shift), rates
    return None, rates
