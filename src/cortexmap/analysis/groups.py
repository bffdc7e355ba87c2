"""Functional groups: cluster heads by what their intervention does across the task battery.

Procedure (every choice is stated so it can be challenged):

1. **Inert heads first.** A head is *active* when at least one task has ``|effect_normalized| >=
   inert_threshold`` (default 0.05: 5% of the clean logit difference) and ``|z| >= inert_z``
   (default 3, stricter than 1.96 because each head is checked on every task). Others form group
   0, "inert", and are not clustered: most heads of a model do little, and clustering their noise
   would only split it arbitrarily.
2. **Features.** Active heads' signed ``effect_normalized`` per task, z-scored per task over the
   active heads (NaN -> 0); probe scores are appended (also z-scored) when ``include_probes``.
3. **k by silhouette.** Ward agglomerative clustering (or k-means) for k = 2..``k_max``; k maximizes
   the silhouette. Baseline: the best silhouette of ``n_null`` data sets with every feature
   permuted independently across heads (same marginals, no joint structure); p-value
   ``(1 + #{null >= observed}) / (1 + n_null)``. A high p says the groups are a partition of a
   continuum, not evidence of discrete types.
4. **Names.** Each group is named by its dominant level (largest mean ``|effect_normalized|`` over
   its heads and the level's tasks, each task weighing the same) and its top two tasks.
5. **Stability.** ``n_boot`` bootstrap replicates of the effect table
   (:mod:`cortexmap.analysis.resampling`) are clustered again with the same k; the set of active
   heads is held fixed (re-thresholding noisy replicates would let noise heads in and measure the
   threshold, not the groups). The adjusted Rand index (ARI) against the original grouping, over
   the active heads, is reported as a mean with a percentile interval. Baseline: ARI 0 is the
   expected value for unrelated partitions.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

from cortexmap.analysis.profiles import probe_matrix, standardize
from cortexmap.analysis.resampling import bootstrap_effects, percentile_interval
from cortexmap.analysis.selection import ACTIVE_THRESHOLD, ACTIVE_Z, active_heads, effect_arrays, select_effects
from cortexmap.errors import ResultsError

Algorithm = Literal["ward", "kmeans"]


def _cluster(features: np.ndarray, k: int, algorithm: Algorithm, seed: int) -> np.ndarray:
    if algorithm == "kmeans":
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)
    return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(features)


def _best_k(features: np.ndarray, k_max: int, algorithm: Algorithm, seed: int) -> tuple[int, dict[int, float], np.ndarray]:
    """k with the largest silhouette, all silhouettes, and the labels at that k."""
    scores, labels_at = {}, {}
    for k in range(2, min(k_max, len(features) - 1) + 1):
        labels = _cluster(features, k, algorithm, seed)
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = float(silhouette_score(features, labels))
        labels_at[k] = labels
    if not scores:
        return 1, {}, np.zeros(len(features), dtype=int)
    k_best = max(scores, key=scores.get)
    return k_best, scores, labels_at[k_best]


def _grouping(effect: np.ndarray, active: np.ndarray, probes: np.ndarray | None, *, k: int | None, k_max: int,
              algorithm: Algorithm, seed: int) -> tuple[np.ndarray, int, dict[int, float], np.ndarray]:
    """Labels over all heads (0 = inert, 1.. by size), k used, silhouettes, features of active heads."""
    values = effect[active]
    if probes is not None and probes.shape[1]:
        values = np.hstack([values, probes[active]])
    features = standardize(values)
    labels = np.zeros(len(effect), dtype=int)
    if active.sum() == 0:
        return labels, 0, {}, features
    if k is None:
        k, scores, raw = _best_k(features, k_max, algorithm, seed)
    else:
        scores = {}
        raw = _cluster(features, k, algorithm, seed) if 1 < k < active.sum() else np.zeros(int(active.sum()), dtype=int)
    order = {lab: rank + 1 for rank, (lab, _) in enumerate(sorted(zip(*np.unique(raw, return_counts=True)), key=lambda x: -x[1]))}
    labels[active] = [order[lab] for lab in raw]
    return labels, k, scores, features


def functional_groups(
    effects: pd.DataFrame,
    n_layers: int,
    n_heads: int,
    *,
    patterns: pd.DataFrame | None = None,
    include_probes: bool = False,
    intervention: str | None = None,
    method: str | None = None,
    prompt_effects: pd.DataFrame | None = None,
    k_max: int = 8,
    algorithm: Algorithm = "ward",
    inert_threshold: float = ACTIVE_THRESHOLD,
    inert_z: float = ACTIVE_Z,
    n_boot: int = 50,
    n_null: int = 50,
    seed: int = 0,
) -> dict:
    """Cluster heads into functional groups, name them, and measure how stable they are.

    Args:
        effects: effects table of one model.
        n_layers: layers of the model.
        n_heads: heads per layer.
        patterns: probe table, used when ``include_probes``.
        include_probes: append probe scores to the clustering features.
        intervention: see :func:`~cortexmap.analysis.selection.select_effects`.
        method: see :func:`~cortexmap.analysis.selection.select_effects`.
        prompt_effects: optional per-prompt effects for the stability bootstrap.
        k_max: largest number of active groups tried.
        algorithm: ``"ward"`` (agglomerative) or ``"kmeans"``.
        inert_threshold: smallest ``|effect_normalized|`` that makes a head active.
        inert_z: smallest ``|z|`` that makes a head active.
        n_boot: bootstrap replicates for stability (0 skips it).
        n_null: permuted data sets for the silhouette baseline (0 skips it).
        seed: random seed.

    Returns:
        Dict with ``assignments`` (DataFrame: head_id, layer, head, rel_depth, group,
        group_name), ``groups`` (DataFrame: group, group_name, size, dominant_level, top_tasks,
        mean_abs_effect, mean_depth), ``k`` (active groups), ``criterion``, ``silhouette``
        (k -> score), ``silhouette_best``, ``null_silhouette_mean``, ``null_silhouette_p95``,
        ``silhouette_p_value``, ``stability`` (ari_mean, ci_low, ci_high, n_boot, baseline) and
        ``n_inert``.

    Raises:
        ResultsError: ``k_max`` < 2 or unknown ``algorithm``.
    """
    if k_max < 2:
        raise ResultsError(f"k_max={k_max} leaves nothing to choose: pass k_max >= 2")
    if algorithm not in ("ward", "kmeans"):
        raise ResultsError(f"algorithm {algorithm!r} is unknown: use 'ward' or 'kmeans'")
    selected = select_effects(effects, intervention=intervention, method=method)
    arrays = effect_arrays(selected, n_layers, n_heads)
    probes = probe_matrix(patterns, n_layers, n_heads).to_numpy(dtype=float) if include_probes else None
    rules = {"k_max": k_max, "algorithm": algorithm, "seed": seed}
    active = active_heads(arrays.effect, arrays.se, threshold=inert_threshold, z_min=inert_z)
    labels, k, scores, features = _grouping(arrays.effect, active, probes, k=None, **rules)
    rng = np.random.default_rng(seed)
    result: dict = {"k": int(k), "silhouette": scores, "silhouette_best": max(scores.values()) if scores else None,
                    "criterion": f"k in 2..{k_max} maximizing the silhouette of {algorithm} clusters of z-scored active-head profiles",
                    "n_inert": int((labels == 0).sum())}
    null = []
    if scores and n_null > 0:
        for _ in range(n_null):
            shuffled = np.column_stack([rng.permutation(col) for col in features.T])
            _, null_scores, _ = _best_k(shuffled, k_max, algorithm, seed)
            null.append(max(null_scores.values()) if null_scores else np.nan)
    null_arr = np.array(null, dtype=float)
    has_null = bool(null) and np.isfinite(null_arr).any()
    result["null_silhouette_mean"] = float(np.nanmean(null_arr)) if has_null else None
    result["null_silhouette_p95"] = float(np.nanpercentile(null_arr, 95)) if has_null else None
    result["silhouette_p_value"] = (float((1 + np.sum(null_arr >= result["silhouette_best"])) / (1 + len(null)))
                                    if has_null else None)
    aris = []
    if n_boot > 0:
        draws = bootstrap_effects(arrays, prompt_effects=prompt_effects, n_boot=n_boot, seed=seed + 1,
                                  intervention=selected.attrs["selection"]["intervention"])
        for draw in draws:
            boot_labels, _, _, _ = _grouping(draw, active, probes, k=max(k, 1), **rules)
            aris.append(adjusted_rand_score(labels[active], boot_labels[active]) if active.sum() > 1 else 1.0)
    low, high = percentile_interval(np.array(aris)) if aris else (np.nan, np.nan)
    result["stability"] = {"ari_mean": float(np.mean(aris)) if aris else None, "ci_low": float(low) if aris else None,
                           "ci_high": float(high) if aris else None, "n_boot": int(n_boot), "baseline": 0.0}
    result["groups"], names = _describe(labels, arrays.effect, arrays.tasks, arrays.levels, arrays.grid["rel_depth"].to_numpy())
    grid = arrays.grid
    result["assignments"] = pd.DataFrame({"head_id": grid.index, "layer": grid["layer"].to_numpy(), "head": grid["head"].to_numpy(),
                                          "rel_depth": grid["rel_depth"].to_numpy(), "group": labels,
                                          "group_name": [names[g] for g in labels]})
    return result


def _describe(labels: np.ndarray, effect: np.ndarray, tasks: list[str], levels: list[str],
              depth: np.ndarray) -> tuple[pd.DataFrame, dict[int, str]]:
    """Group table and names: dominant level and top tasks by mean |effect_normalized|."""
    rows, names = [], {}
    magnitude = np.abs(effect)
    for group in sorted(np.unique(labels)):
        members = labels == group
        with np.errstate(invalid="ignore"):
            per_task = np.nanmean(magnitude[members], axis=0) if members.any() else np.full(len(tasks), np.nan)
        per_task = np.nan_to_num(per_task)
        level_means = {lev: float(np.mean([per_task[j] for j, lv in enumerate(levels) if lv == lev])) for lev in sorted(set(levels))}
        top = [tasks[j] for j in np.argsort(-per_task)[:2]]
        if group == 0:
            dominant, name = None, "G0 inert"
        else:
            dominant = max(level_means, key=level_means.get)
            name = f"G{group} {dominant}: {', '.join(top)}"
        names[int(group)] = name
        rows.append({"group": int(group), "group_name": name, "size": int(members.sum()), "dominant_level": dominant,
                     "top_tasks": top, "mean_abs_effect": float(per_task.mean()) if len(tasks) else float("nan"),
                     "mean_depth": float(depth[members].mean())})
    return pd.DataFrame(rows), names
