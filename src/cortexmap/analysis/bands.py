"""Layer bands: do levels of language live at different depths? A test, not an assumption.

The "attention cortex" hypothesis says lexical work happens early, syntactic / semantic /
pragmatic work in the middle and reasoning late. This module measures and tests it:

* :func:`level_depths`: per level, the mean relative depth of its importance mass (layer
  distributions from :mod:`cortexmap.analysis.depth`), with a bootstrap interval.
* :func:`layer_bands`: the best contiguous split of the layers into bands. Each layer holds
  pseudo-counts of important (head, task) cells per level; each band is a multinomial over levels
  (its level composition); dynamic programming finds the maximum-likelihood split for each k and
  k minimizes ``BIC = -2 log L + k (D - 1) log N`` (D levels, N important cells), k <=
  ``max_bands``. Bands are named by the level most enriched in them.
* :func:`band_hypothesis`: the statistic is the Spearman rank correlation between a level's
  ordinal (default ``DEFAULT_LEVEL_ORDER``: lexical 0; syntactic, semantic, pragmatic 1;
  reasoning 2; ``custom`` and unknown levels are left out) and layer, over the joint distribution
  that gives each level weight 1/D spread by its layer distribution (ties get mid-ranks). The null
  shuffles layer labels (one permutation of layers applied to every level, ``n_perm`` = 2000,
  seeded); the one-sided p-value is ``(1 + #{rho_perm >= rho}) / (1 + n_perm)``. Verdict
  "supported" when ``p < alpha`` and ``rho > 0``, "not supported" otherwise, "not evaluated" when
  fewer than two ordinal values have important heads. The interval on rho is a bootstrap over
  prompts and over each task's important heads (see :mod:`cortexmap.analysis.depth`). Because one
  step alone can carry a trend, the depth differences between consecutive ordinals (``steps``)
  are reported with their intervals too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from cortexmap.analysis.depth import group_mean, head_resample_counts, layer_mass, mean_depth, normalize_mass
from cortexmap.analysis.resampling import bootstrap_effects, percentile_interval
from cortexmap.analysis.selection import (
    IMPORTANT_Z,
    EffectArrays,
    effect_arrays,
    importance_of,
    important_mask,
    important_weights,
    select_effects,
)
from cortexmap.errors import ResultsError

DEFAULT_LEVEL_ORDER: dict[str, int] = {"lexical": 0, "syntactic": 1, "semantic": 1, "pragmatic": 1, "reasoning": 2}
HYPOTHESIS = "lexical early < syntactic/semantic/pragmatic middle < reasoning late"


@dataclass(frozen=True)
class _LevelDistributions:
    """Observed and bootstrap level x layer distributions of one selection."""

    arrays: EffectArrays
    levels: list[str]
    observed: np.ndarray  # [levels, layers]
    boot: np.ndarray  # [n_boot, levels, layers]
    n_important: np.ndarray  # [levels] important (head, task) cells
    pseudo_counts: np.ndarray  # [levels, layers] cells spread by each task's layer distribution
    rel_depth: np.ndarray  # [layers]


def _level_distributions(effects: pd.DataFrame, n_layers: int, n_heads: int, *, intervention: str | None,
                         method: str | None, prompt_effects: pd.DataFrame | None, z_crit: float,
                         min_importance: float, n_boot: int, seed: int) -> _LevelDistributions:
    selected = select_effects(effects, intervention=intervention, method=method)
    arrays = effect_arrays(selected, n_layers, n_heads)
    draws = bootstrap_effects(arrays, prompt_effects=prompt_effects, intervention=selected.attrs["selection"]["intervention"],
                              n_boot=n_boot, seed=seed)
    layers = arrays.grid["layer"].to_numpy()
    mask = important_mask(arrays.effect, arrays.se, z_crit=z_crit, min_importance=min_importance)
    # The set of important cells is fixed from the data: re-thresholding noisy replicates would add
    # noise heads and bias every replicate towards "no structure".
    task_dist = normalize_mass(layer_mass(importance_of(arrays.effect) * mask, layers, n_layers))  # [tasks, layers]
    counts = head_resample_counts(mask, n_boot, np.random.default_rng(seed + 2))
    boot_dist = normalize_mass(layer_mass(importance_of(draws) * counts, layers, n_layers))
    levels = sorted(set(arrays.levels))
    cells = mask.sum(axis=0)
    members = [[i for i, lev in enumerate(arrays.levels) if lev == level] for level in levels]
    pseudo = np.stack([np.nansum(task_dist[idx] * cells[idx, None], axis=0) for idx in members])
    rel = arrays.grid.groupby("layer")["rel_depth"].first().to_numpy()
    return _LevelDistributions(arrays, levels, group_mean(task_dist, arrays.levels, levels),
                               group_mean(boot_dist, arrays.levels, levels),
                               np.array([cells[idx].sum() for idx in members]), pseudo, rel)


def level_depths(
    effects: pd.DataFrame,
    n_layers: int,
    n_heads: int,
    *,
    intervention: str | None = None,
    method: str | None = None,
    prompt_effects: pd.DataFrame | None = None,
    z_crit: float = IMPORTANT_Z,
    min_importance: float = 0.0,
    n_boot: int = 500,
    seed: int = 0,
) -> pd.DataFrame:
    """Importance-weighted mean relative depth of each level, with a bootstrap interval.

    Args:
        effects: effects table of one model.
        n_layers: layers of the model.
        n_heads: heads per layer.
        intervention: see :func:`~cortexmap.analysis.selection.select_effects`.
        method: see :func:`~cortexmap.analysis.selection.select_effects`.
        prompt_effects: optional per-prompt effects for the bootstrap.
        z_crit: significance rule for "important".
        min_importance: smallest importance that counts.
        n_boot: bootstrap replicates.
        seed: random seed.

    Returns:
        One row per level: level, n_tasks, n_tasks_evaluated, n_important, mean_depth, ci_low,
        ci_high, sd_depth (spread of the level's mass over depth).
    """
    dist = _level_distributions(effects, n_layers, n_heads, intervention=intervention, method=method,
                                prompt_effects=prompt_effects, z_crit=z_crit, min_importance=min_importance,
                                n_boot=n_boot, seed=seed)
    depth = mean_depth(dist.observed, dist.rel_depth)
    low, high = percentile_interval(mean_depth(dist.boot, dist.rel_depth))
    spread = np.sqrt(np.clip(dist.observed @ dist.rel_depth**2 - depth**2, 0, None))
    weights = important_weights(dist.arrays.effect, dist.arrays.se, z_crit=z_crit, min_importance=min_importance)
    evaluated = weights.sum(axis=0) > 0
    rows = []
    for i, level in enumerate(dist.levels):
        idx = [j for j, lev in enumerate(dist.arrays.levels) if lev == level]
        rows.append({"level": level, "n_tasks": len(idx), "n_tasks_evaluated": int(evaluated[idx].sum()),
                     "n_important": int(dist.n_important[i]), "mean_depth": float(depth[i]),
                     "ci_low": float(low[i]), "ci_high": float(high[i]), "sd_depth": float(spread[i])})
    return pd.DataFrame(rows)


def _segment(counts: np.ndarray, max_bands: int) -> list[tuple[float, list[int]]]:
    """Best contiguous split of ``counts`` [L, D] for k = 1..max_bands: (-log-likelihood, band starts).

    Each band is a multinomial over levels with its own composition; the cost of a band is its
    negative log-likelihood ``-sum_d c_d log(c_d / n)`` (0 for an empty band).
    """
    n_layers, _ = counts.shape
    csum = np.vstack([np.zeros(counts.shape[1]), np.cumsum(counts, axis=0)])

    def cost(i: int, j: int) -> float:  # layers i..j-1
        c = csum[j] - csum[i]
        total = c.sum()
        c = c[c > 0]
        return float(-(c * np.log(c / total)).sum()) if total > 0 else 0.0

    best = np.full((max_bands + 1, n_layers + 1), np.inf)
    back = np.zeros((max_bands + 1, n_layers + 1), dtype=int)
    best[0, 0] = 0.0
    for k in range(1, max_bands + 1):
        for j in range(k, n_layers + 1):
            options = [best[k - 1, i] + cost(i, j) for i in range(k - 1, j)]
            back[k, j] = int(np.argmin(options)) + k - 1
            best[k, j] = options[back[k, j] - (k - 1)]
    out = []
    for k in range(1, max_bands + 1):
        starts, j = [], n_layers
        for kk in range(k, 0, -1):
            j = back[kk, j]
            starts.append(j)
        out.append((float(best[k, n_layers]), sorted(starts)))
    return out


def layer_bands(
    effects: pd.DataFrame,
    n_layers: int,
    n_heads: int,
    *,
    max_bands: int = 6,
    intervention: str | None = None,
    method: str | None = None,
    prompt_effects: pd.DataFrame | None = None,
    z_crit: float = IMPORTANT_Z,
    min_importance: float = 0.0,
    n_boot: int = 500,
    seed: int = 0,
) -> pd.DataFrame:
    """Contiguous layer bands by dynamic programming, the number of bands chosen by BIC.

    Each layer holds pseudo-counts per level: every important (head, task) cell counts once,
    spread over layers by the task's layer distribution. A band is a multinomial over levels;
    dynamic programming finds the most likely split into k bands and k minimizes
    ``BIC = -2 log L + k (D - 1) log N`` (D levels, N cells). The interval on each band's
    enrichment is a bootstrap over prompts and important heads (as for :func:`level_depths`)
    with the band boundaries held fixed: it says how well the band's composition is measured,
    not how certain its boundaries are.

    Args:
        effects: effects table of one model.
        n_layers: layers of the model.
        n_heads: heads per layer.
        max_bands: largest number of bands tried (capped at ``n_layers``).
        intervention: see :func:`~cortexmap.analysis.selection.select_effects`.
        method: see :func:`~cortexmap.analysis.selection.select_effects`.
        prompt_effects: optional per-prompt effects for the bootstrap.
        z_crit: significance rule for "important".
        min_importance: smallest importance that counts.
        n_boot: bootstrap replicates for the enrichment intervals.
        seed: random seed.

    Returns:
        One row per band: band, layer_start, layer_end (inclusive), depth_start, depth_end,
        dominant_level (largest enrichment), enrichment (that level's share of its mass in the
        band divided by the band's share of layers; 1 = no concentration), enrichment_ci_low,
        enrichment_ci_high (95% bootstrap interval of that enrichment), n_important (pseudo-
        counts in the band), n_bands, bic and ``enrichment:<level>`` per level. Levels without
        important heads are left out; with fewer than two levels there is one band.
    """
    dist = _level_distributions(effects, n_layers, n_heads, intervention=intervention, method=method,
                                prompt_effects=prompt_effects, z_crit=z_crit, min_importance=min_importance,
                                n_boot=n_boot, seed=seed)
    keep = np.isfinite(dist.observed).all(axis=1)
    levels = [lev for lev, k in zip(dist.levels, keep) if k]
    counts = dist.pseudo_counts[keep].T  # [layers, levels]
    n_total = float(counts.sum())
    max_k = max(1, min(max_bands, n_layers))
    if len(levels) < 2:
        fits, bics = [(0.0, [0])], [0.0]
    else:
        fits = _segment(counts, max_k)
        bics = [2 * nll + (k + 1) * (len(levels) - 1) * np.log(n_total) for k, (nll, _) in enumerate(fits)]
    k_best = int(np.argmin(bics))
    starts = fits[k_best][1] + [n_layers]
    points = dist.observed[keep].T  # [layers, levels] level distributions
    boot = dist.boot[:, keep]  # [n_boot, levels, layers]
    rows = []
    for b in range(len(starts) - 1):
        lo, hi = starts[b], starts[b + 1]
        share_layers = (hi - lo) / n_layers
        enrich = {lev: float(points[lo:hi, i].sum() / share_layers) for i, lev in enumerate(levels)}
        dominant = max(enrich, key=enrich.get) if enrich else None
        if dominant:
            ci = percentile_interval(boot[:, levels.index(dominant), lo:hi].sum(axis=-1) / share_layers)
        else:
            ci = (float("nan"), float("nan"))
        band_counts = counts[lo:hi].sum(axis=0)
        row = {"band": b, "layer_start": lo, "layer_end": hi - 1, "depth_start": float(dist.rel_depth[lo]),
               "depth_end": float(dist.rel_depth[hi - 1]), "dominant_level": dominant,
               "enrichment": enrich[dominant] if dominant else float("nan"),
               "enrichment_ci_low": float(ci[0]), "enrichment_ci_high": float(ci[1]),
               "n_important": float(band_counts.sum()), "n_bands": len(starts) - 1, "bic": float(bics[k_best])}
        row.update({f"enrichment:{lev}": v for lev, v in enrich.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def ordinal_depth_rho(dist: np.ndarray, ordinals: np.ndarray) -> np.ndarray:
    """Spearman correlation of level ordinal and layer over the levels' joint distribution.

    Args:
        dist: level distributions [..., D, L], each row summing to 1 (NaN rows give NaN).
        ordinals: ordinal of each level [D].

    Returns:
        rho [...]: each level weighs 1/D; mid-ranks for ties on both variables.
    """
    n_levels = dist.shape[-2]
    joint = dist / n_levels
    values = np.unique(ordinals)
    mass_v = np.array([(ordinals == v).sum() / n_levels for v in values])
    rank_v = np.cumsum(mass_v) - mass_v / 2
    rx = rank_v[np.searchsorted(values, ordinals)]  # [D]
    my = joint.sum(axis=-2)  # [..., L] marginal over layers
    ry = np.cumsum(my, axis=-1) - my / 2
    mx = rx.mean()
    mean_y = (my * ry).sum(axis=-1, keepdims=True)
    cov = np.einsum("...dl,d,...l->...", joint, rx - mx, ry - mean_y)
    var_x = ((rx - mx) ** 2).mean()
    var_y = (my * (ry - mean_y) ** 2).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.sqrt(var_x * var_y)


def band_hypothesis(
    effects: pd.DataFrame,
    n_layers: int,
    n_heads: int,
    *,
    level_order: Mapping[str, int] | None = None,
    intervention: str | None = None,
    method: str | None = None,
    prompt_effects: pd.DataFrame | None = None,
    z_crit: float = IMPORTANT_Z,
    min_importance: float = 0.0,
    n_perm: int = 2000,
    n_boot: int = 500,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Permutation test of "lexical early < middle levels < reasoning late".

    Args:
        effects: effects table of one model.
        n_layers: layers of the model.
        n_heads: heads per layer.
        level_order: level -> ordinal; None uses ``DEFAULT_LEVEL_ORDER``.
        intervention: see :func:`~cortexmap.analysis.selection.select_effects`.
        method: see :func:`~cortexmap.analysis.selection.select_effects`.
        prompt_effects: optional per-prompt effects for the bootstrap.
        z_crit: significance rule for "important".
        min_importance: smallest importance that counts.
        n_perm: layer-label permutations of the null.
        n_boot: bootstrap replicates for the interval on rho.
        alpha: significance level of the verdict.
        seed: random seed (bootstrap uses ``seed``, permutations ``seed + 1``).

    Returns:
        Dict: hypothesis, level_order, levels_used, verdict, statistic ("spearman_rho"), rho,
        ci_low, ci_high, p_value, n_perm, null_mean, null_p95, alpha, level_depths (records of
        level, ordinal, mean_depth, ci_low, ci_high), steps (depth difference between consecutive
        ordinals, with interval) and note.

    Raises:
        ResultsError: ``n_perm`` < 1.
    """
    if n_perm < 1:
        raise ResultsError(f"n_perm={n_perm} gives no null: pass a positive number of permutations")
    order = dict(DEFAULT_LEVEL_ORDER if level_order is None else level_order)
    dist = _level_distributions(effects, n_layers, n_heads, intervention=intervention, method=method,
                                prompt_effects=prompt_effects, z_crit=z_crit, min_importance=min_importance,
                                n_boot=n_boot, seed=seed)
    use = [i for i, lev in enumerate(dist.levels) if lev in order and np.isfinite(dist.observed[i]).all()]
    ordinals = np.array([order[dist.levels[i]] for i in use])
    result: dict = {"hypothesis": HYPOTHESIS if level_order is None else "depth increases with the given level ordinal",
                    "level_order": order, "levels_used": [dist.levels[i] for i in use], "statistic": "spearman_rho",
                    "n_perm": int(n_perm), "alpha": float(alpha)}
    depths = mean_depth(dist.observed, dist.rel_depth)
    low, high = percentile_interval(mean_depth(dist.boot, dist.rel_depth))
    result["level_depths"] = [{"level": dist.levels[i], "ordinal": order[dist.levels[i]], "mean_depth": float(depths[i]),
                               "ci_low": float(low[i]), "ci_high": float(high[i]), "n_important": int(dist.n_important[i])}
                              for i in use]
    if len(np.unique(ordinals)) < 2:
        result.update({"verdict": "not evaluated", "rho": None, "ci_low": None, "ci_high": None, "p_value": None,
                       "null_mean": None, "null_p95": None, "steps": [],
                       "note": "fewer than two level ordinals have important heads, so depth order cannot be tested"})
        return result
    observed = dist.observed[use]
    rho = float(ordinal_depth_rho(observed, ordinals))
    rng = np.random.default_rng(seed + 1)
    perms = np.argsort(rng.random((n_perm, n_layers)), axis=1)
    null = ordinal_depth_rho(np.moveaxis(observed[:, perms], 0, 1), ordinals)  # [n_perm]
    p_value = (1 + int(np.sum(null >= rho - 1e-12))) / (1 + n_perm)
    boot_rho = ordinal_depth_rho(dist.boot[:, use], ordinals)
    ci_low, ci_high = percentile_interval(boot_rho)
    supported = p_value < alpha and rho > 0
    result.update({"verdict": "supported" if supported else "not supported", "rho": rho, "ci_low": float(ci_low),
                   "ci_high": float(ci_high), "p_value": float(p_value), "null_mean": float(np.mean(null)),
                   "null_p95": float(np.percentile(null, 95)),
                   "steps": _steps(depths[use], mean_depth(dist.boot[:, use], dist.rel_depth), ordinals),
                   "note": f"bootstrap interval from {int(np.isfinite(boot_rho).sum())} of {n_boot} replicates"})
    return result


def _steps(depths: np.ndarray, boot: np.ndarray, ordinals: np.ndarray) -> list[dict]:
    """Depth difference between consecutive ordinal groups (mean of their levels' depths), with CI.

    A significant trend can come from one step alone (say lexical early, everything else level);
    the steps show which parts of the ordering the data carry.
    """
    values = np.unique(ordinals)
    means = np.stack([depths[ordinals == v].mean() for v in values])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # replicates where a level lost its mass
        boot_means = np.stack([np.nanmean(boot[:, ordinals == v], axis=1) for v in values], axis=1)
    steps = []
    for i in range(len(values) - 1):
        low, high = percentile_interval(boot_means[:, i + 1] - boot_means[:, i])
        steps.append({"from": int(values[i]), "to": int(values[i + 1]), "diff": float(means[i + 1] - means[i]),
                      "ci_low": float(low), "ci_high": float(high)})
    return steps
