"""Functional groups: cluster heads by what intervening on them does across the battery.

Procedure (every choice is stated so it can be challenged):

1. **Inert heads first.** A head is *active* when some task makes it :data:`~cortexmap.rules.ACTIVE`
   under some claim intervention (:mod:`cortexmap.analysis.view`); the others form group 0,
   "inert", and are not clustered: most heads of a model do little, and clustering their noise
   would only split it arbitrarily.
2. **Features.** Active heads' signed ``effect_normalized`` per (claim intervention, task) column,
   each column turned into normal scores (ranks -> standard normal quantiles), so that a few heads
   with very large effects neither dominate the distances nor make a heavy tail look like a
   cluster. Probe scores are appended likewise when ``include_probes``.
3. **k by silhouette.** Ward agglomerative clustering (or k-means) for k = 2..``k_max``; k maximises
   the silhouette. **Null**: the features' principal-component scores, each permuted across heads
   independently and rotated back (the data's variance along every principal axis and each axis's
   own distribution, heavy tails included, without any joint structure between axes: a reference
   in the spirit of the gap statistic's PC-aligned one), ``n_null`` data sets, each clustered the
   same way; p ``(1 + #{null >= observed}) / (1 + n_null)``. Permuting each *feature* across heads
   would break the correlation between tasks, so any correlated continuum (heads that matter for
   many tasks at once) would read as clusters: on simulated heads with one heavy-tailed activity
   factor and no clusters that null rejected every time, a Gaussian with the same correlation in
   21% of data sets; this one stays at its level (tests/analysis/test_calibration.py). It is
   conservative: groups that lie along principal axes partly survive the permutation (about 75%
   power on three planted groups of 15 heads in 8 tasks), so a high p says the groups are not
   shown to be discrete types, not that there are none; "supported" needs ``p < alpha``.
4. **Names.** Each group is named by its dominant level (largest mean ``|effect_normalized|`` over
   its heads and the level's tasks, each task weighing the same) and its top two tasks.
5. **Stability.** The view's prompt-bootstrap replicates are clustered again with the same k (the
   active set held fixed); the adjusted Rand index (ARI) against the original grouping, over the
   active heads, is reported as a mean with a percentile interval (0 = unrelated partitions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.profiles import probe_matrix
from cortexmap.analysis.records import from_dict, to_dict
from cortexmap.analysis.view import RunView
from cortexmap.errors import ResultsError
from cortexmap.stats import percentile_interval, permutation_p

Algorithm = Literal["ward", "kmeans"]


def _cluster(features: np.ndarray, k: int, algorithm: Algorithm, seed: int) -> np.ndarray:
    if algorithm == "kmeans":
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)
    return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(features)


def best_k(features: np.ndarray, k_max: int, algorithm: Algorithm = "ward", seed: int = 0) -> tuple[int, dict[int, float], np.ndarray]:
    """k with the largest silhouette, all silhouettes, and the labels at that k (k = 1 when none fits)."""
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


def normal_scores(values: np.ndarray) -> np.ndarray:
    """Each column's ranks mapped to standard normal quantiles (NaN -> 0; constant columns -> 0)."""
    out = np.zeros(values.shape)
    for j in range(values.shape[1]):
        col = values[:, j]
        finite = np.isfinite(col)
        if finite.sum() < 2 or np.nanstd(col) == 0:
            continue
        out[finite, j] = norm.ppf((rankdata(col[finite]) - 0.5) / finite.sum())
    return out


def pc_null(features: np.ndarray, n_null: int, k_max: int, algorithm: Algorithm, rng: np.random.Generator,
            seed: int = 0) -> np.ndarray:
    """Best silhouettes of ``n_null`` data sets with the features' PC scores permuted independently (module docstring)."""
    centred = features - features.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    scores = u * s
    out = np.empty(n_null)
    for i in range(n_null):
        draw = rng.permuted(scores, axis=0) @ vt
        _, sil, _ = best_k(draw, k_max, algorithm, seed)
        out[i] = max(sil.values()) if sil else np.nan
    return out


@dataclass(frozen=True)
class Groups:
    """Functional groups of one view (module docstring).

    ``assignments``: one row per head (``head_id, layer, head, rel_depth, group, group_name``);
    ``groups``: one row per group (``group, group_name, size, dominant_level, top_tasks,
    mean_abs_effect, mean_depth``); ``silhouette``: k -> score.
    """

    assignments: pd.DataFrame
    groups: pd.DataFrame
    k: int
    n_inert: int
    silhouette: dict[str, float]
    silhouette_best: float | None
    null_mean: float | None
    null_p95: float | None
    p_value: float | None
    n_null: int
    stability_ari: float | None
    stability_ci_low: float | None
    stability_ci_high: float | None
    criterion: str
    alpha: float = 0.05
    method: str = ""

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Groups:
        return from_dict(cls, data)

    @property
    def verdict(self) -> str:
        if self.p_value is None:
            return "not evaluated"
        return "supported" if self.p_value < self.alpha else "not supported"

    def findings(self) -> list[Finding]:
        names = ", ".join(f"{g['group_name']} ({g['size']})" for g in self.groups.to_dict("records"))
        if self.silhouette_best is None:
            return [Finding(kind="groups", verdict="not evaluated", method=self.method,
                            text=f"Functional groups: not evaluated (too few active heads to cluster); {names}.")]
        text = (f"Functional groups: {self.verdict} as discrete groups: k = {self.k} active groups + {self.n_inert} inert "
                f"heads; silhouette {num(self.silhouette_best)} vs principal components permuted independently "
                f"{num(self.null_mean)} (95th pct {num(self.null_p95)}, p = {num(self.p_value, 3)}, {self.n_null} data "
                f"sets); stability ARI {num(self.stability_ari)} {ci(self.stability_ci_low, self.stability_ci_high)} "
                f"(0 = chance). Groups: {names}.")
        stats = {"k": self.k, "n_inert": self.n_inert, "null_p95": self.null_p95, "stability_ari": self.stability_ari,
                 "stability_ari_ci_low": self.stability_ci_low, "stability_ari_ci_high": self.stability_ci_high,
                 "stability_ari_baseline": 0.0}
        return [Finding(kind="groups", effect=self.silhouette_best, baseline=self.null_mean,
                        baseline_label="PC-permutation null mean", p_value=self.p_value,
                        verdict=self.verdict, method=self.method, stats=stats, text=text)]


def _features(view: RunView, values: dict[str, np.ndarray], probes: np.ndarray | None) -> np.ndarray:
    cols = [values[iv][view.active] for iv in view.interventions]
    if probes is not None and probes.shape[1]:
        cols.append(probes[view.active])
    return normal_scores(np.hstack(cols))


def functional_groups(view: RunView, *, include_probes: bool = False, k_max: int = 8, algorithm: Algorithm = "ward",
                      n_boot: int = 50, n_null: int = 50, alpha: float = 0.05) -> Groups:
    """Cluster the view's active heads into functional groups, test and name them (module docstring).

    Raises:
        ResultsError: ``k_max`` < 2 or an unknown ``algorithm``.
    """
    if k_max < 2:
        raise ResultsError(f"k_max={k_max} leaves nothing to choose: pass k_max >= 2")
    if algorithm not in ("ward", "kmeans"):
        raise ResultsError(f"algorithm {algorithm!r} is unknown: use 'ward' or 'kmeans'")
    probes = (probe_matrix(view.table("patterns"), view.n_layers, view.n_heads).to_numpy(dtype=float)
              if include_probes else None)
    effects = {iv: view.arrays[iv].effect for iv in view.interventions}
    active = view.active
    labels = np.zeros(len(view.grid), dtype=int)
    rng = np.random.default_rng(view.seed + 21)
    scores: dict[int, float] = {}
    k, null, aris = 0, np.array([]), []
    if active.sum() >= 3:
        features = _features(view, effects, probes)
        k, scores, raw = best_k(features, k_max, algorithm, view.seed)
        sizes = sorted(zip(*np.unique(raw, return_counts=True)), key=lambda x: -x[1])
        order = {lab: rank + 1 for rank, (lab, _) in enumerate(sizes)}
        labels[active] = [order[lab] for lab in raw]
        if scores and n_null > 0:
            null = pc_null(features, n_null, k_max, algorithm, rng, view.seed)
        if scores and n_boot > 0:
            draws = view.draws
            for b in range(min(n_boot, view.n_boot)):
                boot = _features(view, {iv: draws[iv][b] for iv in view.interventions}, probes)
                boot_labels = _cluster(boot, k, algorithm, view.seed) if 1 < k < active.sum() else np.zeros(int(active.sum()))
                aris.append(adjusted_rand_score(labels[active], boot_labels))
    has_null = null.size and np.isfinite(null).any()
    best = max(scores.values()) if scores else None
    low, high = percentile_interval(np.array(aris)) if aris else (None, None)
    primary = view.arrays[view.primary]
    groups, names = _describe(labels, primary.effect, list(view.tasks), list(view.levels), view.grid["rel_depth"].to_numpy())
    grid = view.grid
    assignments = pd.DataFrame({"head_id": grid.index, "layer": grid["layer"].to_numpy(), "head": grid["head"].to_numpy(),
                                "rel_depth": grid["rel_depth"].to_numpy(), "group": labels,
                                "group_name": [names[g] for g in labels]})
    return Groups(assignments=assignments, groups=groups, k=int(k), n_inert=int((labels == 0).sum()),
                  silhouette={str(key): v for key, v in scores.items()}, silhouette_best=best,
                  null_mean=float(np.nanmean(null)) if has_null else None,
                  null_p95=float(np.nanpercentile(null, 95)) if has_null else None,
                  p_value=float(permutation_p(best, null[np.isfinite(null)])) if has_null and best is not None else None,
                  n_null=int(null.size), stability_ari=float(np.mean(aris)) if aris else None,
                  stability_ci_low=None if low is None else float(low),
                  stability_ci_high=None if high is None else float(high),
                  criterion=f"k in 2..{k_max} maximising the silhouette of {algorithm} clusters of the active heads' "
                            "normal-scored effects over every claim intervention and task",
                  alpha=alpha, method=view.describe())


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
