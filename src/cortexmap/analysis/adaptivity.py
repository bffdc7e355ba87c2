"""Task adaptivity: does the model recruit heads at a task-specific depth?

For each task, the importance-weighted mean relative depth of its important heads
(:mod:`cortexmap.analysis.depth`), with a bootstrap interval over prompts and over the task's
important heads. A task *leans* early or late when its depth differs from the battery median (the
median of the evaluated tasks' mean depths, recomputed in every replicate):

* ``diff = mean_depth - battery_median`` with a percentile bootstrap interval;
* a two-sided bootstrap p-value ``min(1, 2 * min(P*(diff <= 0), P*(diff >= 0)))`` (counts + 1 over
  replicates + 1), Benjamini-Hochberg q-values over tasks;
* ``lean`` = "early" / "late" when ``q < alpha``, "neither" otherwise, "not evaluated" when the task
  has fewer than ``min_heads`` important heads (one or two heads pin the depth to their layers and
  make any interval meaninglessly narrow).

This is a bootstrap test, so its p-values are approximate; the set of important heads is held at
its observed value.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from cortexmap.analysis.depth import head_resample_counts, layer_mass, mean_depth, normalize_mass
from cortexmap.analysis.resampling import bootstrap_effects, percentile_interval
from cortexmap.analysis.selection import IMPORTANT_Z, effect_arrays, importance_of, important_mask, select_effects

ADAPTIVITY_COLUMNS = ("task", "level", "n_important", "mean_depth", "ci_low", "ci_high", "battery_median", "diff",
                      "diff_ci_low", "diff_ci_high", "p_value", "q_value", "lean")


def task_depths(
    effects: pd.DataFrame,
    n_layers: int,
    n_heads: int,
    *,
    intervention: str | None = None,
    method: str | None = None,
    prompt_effects: pd.DataFrame | None = None,
    z_crit: float = IMPORTANT_Z,
    min_importance: float = 0.0,
    min_heads: int = 3,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Per task, where its important heads sit and whether it leans early or late.

    Args:
        effects: effects table of one model.
        n_layers: layers of the model.
        n_heads: heads per layer.
        intervention: see :func:`~cortexmap.analysis.selection.select_effects`.
        method: see :func:`~cortexmap.analysis.selection.select_effects`.
        prompt_effects: optional per-prompt effects for the bootstrap.
        z_crit: significance rule for "important".
        min_importance: smallest importance that counts.
        min_heads: fewest important heads for a task to be compared.
        n_boot: bootstrap replicates.
        alpha: level of the q-value rule.
        seed: random seed.

    Returns:
        One row per task with ``ADAPTIVITY_COLUMNS``; depth columns are NaN for tasks without
        important heads.
    """
    selected = select_effects(effects, intervention=intervention, method=method)
    arrays = effect_arrays(selected, n_layers, n_heads)
    draws = bootstrap_effects(arrays, prompt_effects=prompt_effects, n_boot=n_boot, seed=seed,
                              intervention=selected.attrs["selection"]["intervention"])
    mask = important_mask(arrays.effect, arrays.se, z_crit=z_crit, min_importance=min_importance)
    layers = arrays.grid["layer"].to_numpy()
    rel = arrays.grid.groupby("layer")["rel_depth"].first().to_numpy()
    observed = mean_depth(normalize_mass(layer_mass(importance_of(arrays.effect) * mask, layers, n_layers)), rel)
    counts = head_resample_counts(mask, n_boot, np.random.default_rng(seed + 1))
    boot = mean_depth(normalize_mass(layer_mass(importance_of(draws) * counts, layers, n_layers)), rel)  # [B, T]
    n_important = mask.sum(axis=0)
    compared = n_important >= min_heads
    low, high = percentile_interval(boot)
    out = pd.DataFrame({"task": arrays.tasks, "level": arrays.levels, "n_important": n_important,
                        "mean_depth": observed, "ci_low": low, "ci_high": high})
    for column in ADAPTIVITY_COLUMNS[6:-1]:
        out[column] = np.nan
    out["lean"] = "not evaluated"
    if compared.sum() < 2:
        return out.loc[:, list(ADAPTIVITY_COLUMNS)]
    median = float(np.median(observed[compared]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # replicates where a task lost all mass
        boot_median = np.nanmedian(boot[:, compared], axis=1, keepdims=True)
    diff_boot = boot[:, compared] - boot_median
    d_low, d_high = percentile_interval(diff_boot)
    valid = np.isfinite(diff_boot).sum(axis=0)
    below = (1 + (diff_boot <= 0).sum(axis=0)) / (1 + valid)
    above = (1 + (diff_boot >= 0).sum(axis=0)) / (1 + valid)
    p_value = np.minimum(1.0, 2 * np.minimum(below, above))
    q_value = false_discovery_control(p_value)
    diff = observed[compared] - median
    out.loc[compared, "battery_median"] = median
    out.loc[compared, "diff"] = diff
    out.loc[compared, "diff_ci_low"], out.loc[compared, "diff_ci_high"] = d_low, d_high
    out.loc[compared, "p_value"], out.loc[compared, "q_value"] = p_value, q_value
    out.loc[compared, "lean"] = np.where(q_value < alpha, np.where(diff < 0, "early", "late"), "neither")
    return out.loc[:, list(ADAPTIVITY_COLUMNS)]
