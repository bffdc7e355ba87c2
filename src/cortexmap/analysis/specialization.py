"""Specialization (does a head matter for one task or many?) and redundancy between heads.

* **Specialization index** of a head = ``1 - H(p) / log(T)``, where ``p_t = |e_t| / sum |e|`` over
  the T tasks it was measured on (``e`` = ``effect_normalized``) and H is the Shannon entropy: 1
  when a single task carries all of its effect, 0 when all tasks carry the same. NaN for a head
  with fewer than two tasks or no effect at all. With ``denoise`` (default) cells whose ``|z|`` is
  below ``IMPORTANT_Z`` (3) count as 0: otherwise eleven tasks of pure noise pull a one-task head
  down to about 0.45 and the index mostly measures the noise level. Noise alone gives moderate values, so the model
  mean (over active heads by default: an inert head's index describes its noise) is compared with a
  null that permutes each task's column across those heads (keeps every task's effect
  distribution, breaks which head does what): one-sided p ``(1 + #{null >= observed}) / (1 +
  n_perm)``. The interval on the mean is a bootstrap over heads.
* **Pairwise interactions** (from joint ablations; columns task, head_a, head_b, effect_a,
  effect_b, effect_ab): ``interaction = effect_ab - (effect_a + effect_b)``. With harm negative,
  ``interaction < 0`` means ablating both hurts *more* than the sum (super-additive): the heads
  back each other up (redundancy; self-repair hides each single ablation). ``interaction > 0``
  means ablating both hurts *less* than the sum (sub-additive): the heads sit on one pathway or its
  damage saturates, so the second ablation adds little. Within ``tolerance`` of additivity:
  "additive".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cortexmap.analysis.resampling import percentile_interval
from cortexmap.analysis.selection import IMPORTANT_Z, active_heads, effect_arrays, require_columns, select_effects

PAIR_COLUMNS = ("task", "head_a", "head_b", "effect_a", "effect_b", "effect_ab")


def specialization_values(effect: np.ndarray) -> np.ndarray:
    """``1 - H(p) / log(T)`` per row of a [heads, tasks] effect array (NaN cells skipped)."""
    magnitude = np.abs(effect)
    n_tasks = np.isfinite(magnitude).sum(axis=-1)
    magnitude = np.nan_to_num(magnitude)
    total = magnitude.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = magnitude / total
        entropy = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=-1)
        index = 1.0 - entropy / np.log(n_tasks)
    return np.where((n_tasks >= 2) & (total[..., 0] > 0), index, np.nan)


def denoised_effects(effect: np.ndarray, se: np.ndarray, denoise: bool) -> np.ndarray:
    """Effects with cells not clearly non-zero (``|z| < IMPORTANT_Z``) set to 0 when ``denoise``."""
    if not denoise:
        return effect
    with np.errstate(invalid="ignore", divide="ignore"):
        clear = np.abs(effect) >= IMPORTANT_Z * np.nan_to_num(se)
    return np.where(np.isfinite(effect), np.where(clear, effect, 0.0), np.nan)


def specialization_index(
    effects: pd.DataFrame,
    n_layers: int,
    n_heads: int,
    *,
    intervention: str | None = None,
    method: str | None = None,
    denoise: bool = True,
) -> pd.DataFrame:
    """Specialization index of every head.

    Args:
        effects: effects table of one model.
        n_layers: layers of the model.
        n_heads: heads per layer.
        intervention: see :func:`~cortexmap.analysis.selection.select_effects`.
        method: see :func:`~cortexmap.analysis.selection.select_effects`.
        denoise: count cells with ``|z| < 3`` as 0 (module docstring).

    Returns:
        DataFrame: head_id, layer, head, rel_depth, specialization, top_task, top_share
        (share of the head's total |effect| on its top task), n_tasks.
    """
    arrays = effect_arrays(select_effects(effects, intervention=intervention, method=method), n_layers, n_heads)
    effect = denoised_effects(arrays.effect, arrays.se, denoise)
    magnitude = np.nan_to_num(np.abs(effect))
    total = magnitude.sum(axis=1)
    top = magnitude.argmax(axis=1)
    out = arrays.grid.reset_index()
    out["specialization"] = specialization_values(effect)
    out["top_task"] = [arrays.tasks[j] if t > 0 else None for j, t in zip(top, total)]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["top_share"] = np.where(total > 0, magnitude.max(axis=1) / total, np.nan)
    out["n_tasks"] = np.isfinite(arrays.effect).sum(axis=1)
    return out


def specialization_summary(
    effects: pd.DataFrame,
    n_layers: int,
    n_heads: int,
    *,
    intervention: str | None = None,
    method: str | None = None,
    active_only: bool = True,
    denoise: bool = True,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
) -> dict:
    """Model-level mean specialization with a bootstrap interval and a permutation baseline.

    Args:
        effects: effects table of one model.
        n_layers: layers of the model.
        n_heads: heads per layer.
        intervention: see :func:`~cortexmap.analysis.selection.select_effects`.
        method: see :func:`~cortexmap.analysis.selection.select_effects`.
        active_only: average over active heads only
            (:func:`~cortexmap.analysis.selection.active_heads`); the index of an inert head
            describes its noise, not its function.
        denoise: count cells with ``|z| < 3`` as 0 (module docstring).
        n_boot: bootstrap replicates over heads.
        n_perm: column permutations of the null (among the same heads).
        seed: random seed.

    Returns:
        Dict: mean, ci_low, ci_high, n_heads (averaged over), heads ("active" or "all"),
        null_mean, null_p95, p_value.
    """
    arrays = effect_arrays(select_effects(effects, intervention=intervention, method=method), n_layers, n_heads)
    denoised = denoised_effects(arrays.effect, arrays.se, denoise)
    values = specialization_values(denoised)
    defined = np.isfinite(values)
    if active_only:
        defined &= active_heads(arrays.effect, arrays.se)
    which = "active" if active_only else "all"
    if not defined.any():
        return {"mean": None, "ci_low": None, "ci_high": None, "n_heads": 0, "heads": which, "null_mean": None,
                "null_p95": None, "p_value": None}
    rng = np.random.default_rng(seed)
    kept = values[defined]
    boot = kept[rng.integers(0, len(kept), (n_boot, len(kept)))].mean(axis=1)
    low, high = percentile_interval(boot)
    effect = denoised[defined]
    null = np.concatenate([
        # permuted(axis=1) shuffles every task column across heads, independently per replicate
        np.nanmean(specialization_values(rng.permuted(np.broadcast_to(effect, (size,) + effect.shape), axis=1)), axis=1)
        for size in [min(200, n_perm - s) for s in range(0, n_perm, 200)]
    ])
    observed = float(kept.mean())
    return {"mean": observed, "ci_low": float(low), "ci_high": float(high), "n_heads": int(defined.sum()), "heads": which,
            "null_mean": float(null.mean()), "null_p95": float(np.percentile(null, 95)),
            "p_value": float((1 + np.sum(null >= observed)) / (1 + n_perm))}


def pairwise_interactions(pairs: pd.DataFrame, *, tolerance: float = 0.1) -> pd.DataFrame:
    """Interaction of joint ablations and its reading (see the module docstring).

    Args:
        pairs: columns task, head_a, head_b, effect_a, effect_b, effect_ab.
        tolerance: ``|interaction| <= tolerance * (|effect_a| + |effect_b|)`` reads as additive.

    Returns:
        A copy with ``interaction``, ``relative_interaction`` (interaction / (|effect_a| +
        |effect_b|)) and ``kind`` ("redundant", "sub_additive" or "additive").
    """
    require_columns(pairs, PAIR_COLUMNS, "pairs")
    out = pairs.copy()
    out["interaction"] = out["effect_ab"] - (out["effect_a"] + out["effect_b"])
    scale = out["effect_a"].abs() + out["effect_b"].abs()
    with np.errstate(invalid="ignore", divide="ignore"):
        out["relative_interaction"] = out["interaction"] / scale.replace(0.0, np.nan)
    additive = out["interaction"].abs() <= tolerance * scale
    out["kind"] = np.where(additive, "additive", np.where(out["interaction"] < 0, "redundant", "sub_additive"))
    return out


def redundancy_summary(pairs: pd.DataFrame, *, tolerance: float = 0.1, n_boot: int = 1000, seed: int = 0) -> dict:
    """Share of redundant pairs and mean relative interaction, with bootstrap intervals over pairs.

    Args:
        pairs: joint-ablation table (see :func:`pairwise_interactions`).
        tolerance: additivity tolerance.
        n_boot: bootstrap replicates over pairs.
        seed: random seed.

    Returns:
        Dict: n_pairs, fraction_redundant (+ ci), fraction_sub_additive, mean_relative_interaction
        (+ ci); 0 interaction is the additive baseline.
    """
    table = pairwise_interactions(pairs, tolerance=tolerance)
    redundant = (table["kind"] == "redundant").to_numpy(dtype=float)
    relative = table["relative_interaction"].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(table), (n_boot, len(table)))
    red_low, red_high = percentile_interval(redundant[idx].mean(axis=1))
    rel_low, rel_high = percentile_interval(np.nanmean(relative[idx], axis=1)) if np.isfinite(relative).any() else (np.nan, np.nan)
    return {"n_pairs": int(len(table)), "fraction_redundant": float(redundant.mean()),
            "fraction_redundant_ci": [float(red_low), float(red_high)],
            "fraction_sub_additive": float((table["kind"] == "sub_additive").mean()),
            "mean_relative_interaction": float(np.nanmean(relative)) if np.isfinite(relative).any() else None,
            "mean_relative_interaction_ci": [float(rel_low), float(rel_high)], "baseline": 0.0}
