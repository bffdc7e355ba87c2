"""Cross-model comparison: are head functions conserved between two models, and at what depth?

* **Matching.** Heads of model A and model B are compared by the cosine similarity of their
  profiles over the effect columns both share (``"<intervention>:<task>"``; NaN read as 0, an
  all-zero profile has similarity 0) and paired one-to-one by the assignment that maximizes total
  similarity (``scipy.optimize.linear_sum_assignment``; ``min(n_a, n_b)`` pairs).
* **Conservation** = mean similarity of the matched pairs. Null: permute the task columns of B's
  profiles (the same permutation for every head of B), rematch, recompute; one-sided p ``(1 +
  #{null >= observed}) / (1 + n_perm)``. This keeps B's heads and their internal structure and
  breaks only which task is which. Shuffling head labels would be no null at all (the optimal
  assignment does not depend on them). With T shared tasks there are only T! distinct nulls, so
  very few tasks cannot give a small p.
* **Depth correspondence.** Spearman correlation of the relative depths of matched pairs whose
  similarity is at least ``min_similarity``, with a bootstrap interval over those pairs.
* **Scale table** (:func:`scale_comparison`): per model, head count, mean specialization, share of
  *active* heads (:func:`~cortexmap.analysis.selection.active_heads`; reported as
  ``active_share``), and redundancy when joint-ablation pairs are given.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata, spearmanr

from cortexmap.analysis.profiles import effect_columns, head_profiles
from cortexmap.analysis.resampling import percentile_interval
from cortexmap.analysis.selection import active_heads, effect_arrays, require_columns, select_effects
from cortexmap.analysis.specialization import denoised_effects, redundancy_summary, specialization_values
from cortexmap.errors import ResultsError


def _unit_rows(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return np.divide(values, norms, out=np.zeros_like(values), where=norms > 0)


def _row_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row pair of [B, n] arrays (NaN for a constant row)."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=1) / np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))


def _match(unit_a: np.ndarray, unit_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    similarity = unit_a @ unit_b.T
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return rows, cols, similarity[rows, cols]


def shared_columns(profiles_a: pd.DataFrame, profiles_b: pd.DataFrame) -> list[str]:
    """Effect columns present in both profile tables, in A's order.

    Raises:
        ResultsError: the two tables share no effect column.
    """
    columns = [c for c in effect_columns(profiles_a) if c in set(effect_columns(profiles_b))]
    if not columns:
        raise ResultsError("the two models share no task (intervention:task column): run both on a common battery")
    return columns


def match_heads(profiles_a: pd.DataFrame, profiles_b: pd.DataFrame) -> pd.DataFrame:
    """One-to-one matching of heads by profile similarity over the shared tasks.

    Args:
        profiles_a: :func:`~cortexmap.analysis.profiles.head_profiles` of model A.
        profiles_b: the same for model B.

    Returns:
        DataFrame sorted by similarity: head_a, head_b, similarity, rel_depth_a, rel_depth_b.
    """
    columns = shared_columns(profiles_a, profiles_b)
    rows, cols, sims = _match(_unit_rows(profiles_a[columns].to_numpy(dtype=float)),
                              _unit_rows(profiles_b[columns].to_numpy(dtype=float)))
    out = pd.DataFrame({"head_a": profiles_a.index[rows], "head_b": profiles_b.index[cols], "similarity": sims,
                        "rel_depth_a": profiles_a["rel_depth"].to_numpy()[rows],
                        "rel_depth_b": profiles_b["rel_depth"].to_numpy()[cols]})
    return out.sort_values("similarity", ascending=False, kind="stable").reset_index(drop=True)


def conservation_test(
    profiles_a: pd.DataFrame,
    profiles_b: pd.DataFrame,
    *,
    heads_a: list[str] | None = None,
    heads_b: list[str] | None = None,
    n_perm: int = 200,
    n_boot: int = 1000,
    min_similarity: float = 0.5,
    seed: int = 0,
) -> dict:
    """Conservation score against a task-permutation null, and depth correspondence of matches.

    Args:
        profiles_a: :func:`~cortexmap.analysis.profiles.head_profiles` of model A.
        profiles_b: the same for model B.
        heads_a: restrict A to these head ids (e.g. its active heads); None keeps all.
        heads_b: restrict B likewise.
        n_perm: task-column permutations of B.
        n_boot: bootstrap replicates over matched pairs for the depth correlation.
        min_similarity: matched pairs at least this similar enter the depth correlation.
        seed: random seed.

    Returns:
        Dict: conservation, null_mean, null_p95, p_value, n_perm, n_tasks, n_pairs,
        depth_rho, depth_ci_low, depth_ci_high, n_depth_pairs, matches (DataFrame).

    Raises:
        ResultsError: no shared tasks, fewer than two heads, or ``n_perm`` < 1.
    """
    if n_perm < 1:
        raise ResultsError(f"n_perm={n_perm} gives no null: pass a positive number of permutations")
    profiles_a = profiles_a if heads_a is None else profiles_a.loc[list(heads_a)]
    profiles_b = profiles_b if heads_b is None else profiles_b.loc[list(heads_b)]
    if len(profiles_a) < 2 or len(profiles_b) < 2:
        raise ResultsError(f"{len(profiles_a)} and {len(profiles_b)} heads are too few to compare: lower the activity rule or pass more heads")
    columns = shared_columns(profiles_a, profiles_b)
    unit_a = _unit_rows(profiles_a[columns].to_numpy(dtype=float))
    values_b = profiles_b[columns].to_numpy(dtype=float)
    _, _, sims = _match(unit_a, _unit_rows(values_b))
    observed = float(sims.mean())
    rng = np.random.default_rng(seed)
    null = np.array([_match(unit_a, _unit_rows(values_b[:, rng.permutation(len(columns))]))[2].mean()
                     for _ in range(n_perm)])
    matches = match_heads(profiles_a, profiles_b)
    close = matches[matches["similarity"] >= min_similarity]
    rho, low, high = None, None, None
    if len(close) >= 3 and close["rel_depth_a"].nunique() > 1 and close["rel_depth_b"].nunique() > 1:
        depth_a, depth_b = close["rel_depth_a"].to_numpy(), close["rel_depth_b"].to_numpy()
        rho = float(spearmanr(depth_a, depth_b).statistic)
        idx = rng.integers(0, len(close), (n_boot, len(close)))
        boot = _row_spearman(depth_a[idx], depth_b[idx])
        low, high = (float(v) for v in percentile_interval(boot))
    return {"conservation": observed, "null_mean": float(null.mean()), "null_p95": float(np.percentile(null, 95)),
            "p_value": float((1 + np.sum(null >= observed - 1e-12)) / (1 + n_perm)), "n_perm": int(n_perm),
            "n_tasks": len(columns), "n_pairs": int(len(sims)), "depth_rho": rho, "depth_ci_low": low,
            "depth_ci_high": high, "n_depth_pairs": int(len(close)), "matches": matches}


def compare_models(
    effects_a: pd.DataFrame,
    effects_b: pd.DataFrame,
    shape_a: tuple[int, int],
    shape_b: tuple[int, int],
    *,
    intervention: str | None = None,
    method: str | None = None,
    n_perm: int = 200,
    n_boot: int = 1000,
    min_similarity: float = 0.5,
    active_only: bool = True,
    seed: int = 0,
) -> dict:
    """Build both models' effect profiles and run :func:`conservation_test` on them.

    Args:
        effects_a: effects table of model A.
        effects_b: effects table of model B.
        shape_a: (n_layers, n_heads) of A.
        shape_b: (n_layers, n_heads) of B.
        intervention: see :func:`~cortexmap.analysis.selection.select_effects` (both models).
        method: see :func:`~cortexmap.analysis.selection.select_effects`.
        n_perm: task-column permutations.
        n_boot: bootstrap replicates for the depth correlation.
        min_similarity: similarity floor of pairs in the depth correlation.
        active_only: compare only active heads (see :mod:`cortexmap.analysis.selection`), so that
            matching noise profiles of inert heads does not dilute the score.
        seed: random seed.

    Returns:
        :func:`conservation_test`'s dict plus ``active_only``.
    """
    interventions = None if intervention is None else [intervention]
    profiles, active = [], []
    for effects, shape in ((effects_a, shape_a), (effects_b, shape_b)):
        profiles.append(head_profiles(effects, None, *shape, interventions=interventions, method=method))
        if active_only:
            arrays = effect_arrays(select_effects(effects, intervention=intervention, method=method), *shape)
            active.append(list(arrays.grid.index[active_heads(arrays.effect, arrays.se)]))
        else:
            active.append(None)
    result = conservation_test(profiles[0], profiles[1], heads_a=active[0], heads_b=active[1], n_perm=n_perm,
                               n_boot=n_boot, min_similarity=min_similarity, seed=seed)
    result["active_only"] = active_only
    return result


def scale_comparison(
    effects: pd.DataFrame,
    shapes: Mapping[str, tuple[int, int]],
    *,
    pairs: Mapping[str, pd.DataFrame] | None = None,
    intervention: str | None = None,
    method: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per model: size, specialization, share of important heads, redundancy.

    Args:
        effects: effects table holding several models (``model`` column).
        shapes: model -> (n_layers, n_heads) from each manifest.
        pairs: optional model -> joint-ablation table (see
            :func:`~cortexmap.analysis.specialization.pairwise_interactions`).
        intervention: see :func:`~cortexmap.analysis.selection.select_effects`.
        method: see :func:`~cortexmap.analysis.selection.select_effects`.
        n_boot: bootstrap replicates over heads (and pairs).
        seed: random seed.

    Returns:
        DataFrame: model, n_layers, n_heads, n_heads_total, specialization_mean over active heads
        (+ ci_low/ci_high),
        active_share (share of active heads, + ci over heads), fraction_redundant (+ ci_low/ci_high) and mean_relative_interaction
        (NaN without pairs).

    Raises:
        ResultsError: a model of ``effects`` has no shape.
    """
    require_columns(effects, ("model",), "effects")
    rows = []
    rng = np.random.default_rng(seed)
    for model, frame in effects.groupby("model", sort=True):
        if model not in shapes:
            raise ResultsError(f"model {model!r} has no (n_layers, n_heads) in shapes: pass it from its manifest")
        n_layers, n_heads = shapes[model]
        arrays = effect_arrays(select_effects(frame, intervention=intervention, method=method), n_layers, n_heads)
        active = active_heads(arrays.effect, arrays.se)
        spec = specialization_values(denoised_effects(arrays.effect, arrays.se, True))
        spec = spec[np.isfinite(spec) & active]
        important = active.astype(float)
        idx = rng.integers(0, len(important), (n_boot, len(important)))
        imp_low, imp_high = percentile_interval(important[idx].mean(axis=1))
        row = {"model": model, "n_layers": n_layers, "n_heads": n_heads, "n_heads_total": n_layers * n_heads,
               "specialization_mean": float(spec.mean()) if spec.size else np.nan,
               "specialization_ci_low": np.nan, "specialization_ci_high": np.nan,
               "active_share": float(important.mean()), "active_share_ci_low": float(imp_low),
               "active_share_ci_high": float(imp_high), "fraction_redundant": np.nan,
               "fraction_redundant_ci_low": np.nan, "fraction_redundant_ci_high": np.nan,
               "mean_relative_interaction": np.nan}
        if spec.size:
            low, high = percentile_interval(spec[rng.integers(0, spec.size, (n_boot, spec.size))].mean(axis=1))
            row["specialization_ci_low"], row["specialization_ci_high"] = float(low), float(high)
        if pairs is not None and model in pairs:
            summary = redundancy_summary(pairs[model], n_boot=n_boot, seed=seed)
            row["fraction_redundant"] = summary["fraction_redundant"]
            row["fraction_redundant_ci_low"], row["fraction_redundant_ci_high"] = summary["fraction_redundant_ci"]
            row["mean_relative_interaction"] = summary["mean_relative_interaction"]
        rows.append(row)
    return pd.DataFrame(rows)
