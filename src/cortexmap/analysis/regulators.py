"""Regulator heads: candidates for heads that modulate many later heads. Measured, then tested.

Input ``influence`` (measured elsewhere by ablating source heads): one row per (condition, prompt,
source head, later target head) with ``out_change`` (relative L2 change of the target's output)
and ``attn_kl`` (KL of the target's attention pattern, clean || ablated).

Definitions (``metric`` is ``out_change`` unless asked otherwise):

* **Influence matrix**: mean of each metric per source -> target pair over prompts.
* **Null threshold**: ``noise_floor`` when given (e.g. measured by ablating nothing or a random
  direction); otherwise the ``null_quantile`` (0.95) quantile of the influence a random source
  head exerts on a random later head, modelled robustly as log-normal from the bulk of all pairs:
  ``exp(median(log m) + Phi^-1(null_quantile) * 1.4826 * MAD(log m))`` over pair means ``m > 0``.
  The robust fit keeps a few strong regulators from raising their own threshold (a plain
  quantile would, in a small model, land among a regulator's own pairs). For bulk pairs the
  breadth is then about ``1 - null_quantile`` by construction.
* **Regulator score** = breadth x strength: breadth = share of the source's later heads whose mean
  influence exceeds the threshold, strength = mean influence over those later heads.
* **Baseline**: the distribution of scores over all source heads (median and 95th percentile), and
  a breadth test: the number of a head's later heads above the threshold against a binomial with
  the random-head exceedance rate ``max(median breadth over sources, 1 - null_quantile)``,
  Bonferroni-corrected over source heads (``p_breadth``; targets of one source share prompts, so
  this p-value is optimistic, which the correction and the next condition temper). A head is a
  *candidate* when ``p_breadth < alpha`` and the lower end of its bootstrap interval exceeds the
  95th percentile of all heads' scores. Sources in late layers have few later heads, so their
  breadth is coarse and rarely passes the test.
* **Intervals**: bootstrap over prompts (same resample for every pair, stratified by condition),
  threshold held at its observed value.
* **Condition contrasts** (a vs b): difference of each head's score, threshold shared (from the
  pooled prompts of both conditions); percentile bootstrap interval (prompts resampled within each
  condition); permutation p-value shuffling condition labels across the pooled prompts,
  two-sided ``(1 + #{|null| >= |diff|}) / (1 + n_perm)``; Benjamini-Hochberg q-values over heads.

Conditions are ``"family:variant"`` strings; the row ``"all"``, when present, is what
:func:`regulator_scores` reads by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import binom, false_discovery_control, norm

from cortexmap.analysis.resampling import percentile_interval
from cortexmap.analysis.selection import require_columns
from cortexmap.errors import ResultsError
from cortexmap.heads import HeadId

INFLUENCE_COLUMNS = ("condition", "prompt", "source_layer", "source_head", "target_layer", "target_head", "out_change", "attn_kl")
METRICS = ("out_change", "attn_kl")
REFERENCE_VARIANTS = ("easy", "clear", "short")
_CHUNK = 64


@dataclass(frozen=True)
class _Pivot:
    values: np.ndarray  # [rows = (condition, prompt), pairs]
    conditions: np.ndarray  # [rows] condition of each row
    sources: pd.DataFrame  # one row per source head: layer, head, head_id, n_targets
    starts: np.ndarray  # [sources] first pair of each source (pairs are sorted by source)


def _pivot(influence: pd.DataFrame, metric: str) -> _Pivot:
    require_columns(influence, INFLUENCE_COLUMNS, "influence")
    if metric not in METRICS:
        raise ResultsError(f"metric {metric!r} is unknown: use one of {METRICS}")
    if (influence["target_layer"] <= influence["source_layer"]).any():
        raise ResultsError("influence has targets at or before their source layer: keep only later target heads")
    keys = ["source_layer", "source_head", "target_layer", "target_head"]
    if influence.duplicated(["condition", "prompt"] + keys).any():
        raise ResultsError("influence has duplicate (condition, prompt, source, target) rows: deduplicate the measurement")
    row_code = influence.groupby(["condition", "prompt"], sort=True).ngroup().to_numpy()
    pair_code = influence.groupby(keys, sort=True).ngroup().to_numpy()
    values = np.full((row_code.max() + 1, pair_code.max() + 1), np.nan)
    values[row_code, pair_code] = influence[metric].to_numpy(dtype=float)
    conditions = influence.groupby(["condition", "prompt"], sort=True).size().reset_index()["condition"].astype(str).to_numpy()
    pairs = influence.drop_duplicates(keys).sort_values(keys)[keys].reset_index(drop=True)
    sources = pairs.groupby(["source_layer", "source_head"], sort=True).size().rename("n_targets").reset_index()
    sources.columns = ["layer", "head", "n_targets"]
    sources.insert(0, "head_id", [str(HeadId(int(a), int(b))) for a, b in zip(sources["layer"], sources["head"])])
    starts = np.concatenate([[0], np.cumsum(sources["n_targets"].to_numpy())[:-1]])
    return _Pivot(values, conditions, sources, starts)


def _means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted pair means ignoring NaN: weights [B, rows] -> [B, pairs]."""
    measured = np.isfinite(values)
    if measured.all():
        return (weights @ values) / weights.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.where(measured, values, 0.0)) / (weights @ measured.astype(float))


def _scores(means: np.ndarray, threshold: float, pivot: _Pivot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(breadth, strength, score) per source from pair means [B, pairs]."""
    filled = np.nan_to_num(means, nan=0.0)
    n_targets = pivot.sources["n_targets"].to_numpy()
    breadth = np.add.reduceat((filled > threshold).astype(float), pivot.starts, axis=1) / n_targets
    strength = np.add.reduceat(filled, pivot.starts, axis=1) / n_targets
    return breadth, strength, breadth * strength


def _null_threshold(means: np.ndarray, null_quantile: float, noise_floor: float | None) -> float:
    """Influence a random pair exceeds with probability ``1 - null_quantile`` (module docstring)."""
    if noise_floor is not None:
        return float(noise_floor)
    logs = np.log(means[np.isfinite(means) & (means > 0)])
    if logs.size == 0:
        return 0.0
    centre = float(np.median(logs))
    spread = 1.4826 * float(np.median(np.abs(logs - centre)))
    return float(np.exp(centre + norm.ppf(null_quantile) * spread))


def _boot_weights(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap count weights [n_boot, rows], resampling rows within each group."""
    weights = np.zeros((n_boot, len(groups)))
    for group in np.unique(groups):
        idx = np.flatnonzero(groups == group)
        weights[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
    return weights


def _rows(pivot: _Pivot, condition: str | None) -> np.ndarray:
    present = set(pivot.conditions)
    if condition is None:
        return np.flatnonzero(pivot.conditions == "all") if "all" in present else np.arange(len(pivot.conditions))
    if condition not in present:
        raise ResultsError(f"condition {condition!r} is not in influence (present: {sorted(present)}): pick one of those")
    return np.flatnonzero(pivot.conditions == condition)


def influence_matrix(influence: pd.DataFrame, *, condition: str | None = None) -> pd.DataFrame:
    """Mean influence per source -> target pair.

    Args:
        influence: influence table (module docstring).
        condition: rows of this condition; None reads ``"all"`` if present, else every row.

    Returns:
        DataFrame: source_id, target_id, source_layer, source_head, target_layer, target_head,
        out_change, attn_kl (means over prompts) and n_prompts.
    """
    require_columns(influence, INFLUENCE_COLUMNS, "influence")
    present = set(influence["condition"].astype(str))
    if condition is not None and condition not in present:
        raise ResultsError(f"condition {condition!r} is not in influence (present: {sorted(present)}): pick one of those")
    chosen = condition if condition is not None else ("all" if "all" in present else None)
    rows = influence if chosen is None else influence[influence["condition"].astype(str) == chosen]
    keys = ["source_layer", "source_head", "target_layer", "target_head"]
    out = rows.groupby(keys, sort=True).agg(out_change=("out_change", "mean"), attn_kl=("attn_kl", "mean"),
                                            n_prompts=("prompt", "size")).reset_index()
    out.insert(0, "target_id", [str(HeadId(int(a), int(b))) for a, b in zip(out["target_layer"], out["target_head"])])
    out.insert(0, "source_id", [str(HeadId(int(a), int(b))) for a, b in zip(out["source_layer"], out["source_head"])])
    return out


def regulator_scores(
    influence: pd.DataFrame,
    *,
    metric: str = "out_change",
    condition: str | None = None,
    noise_floor: float | None = None,
    null_quantile: float = 0.95,
    alpha: float = 0.05,
    n_boot: int = 500,
    seed: int = 0,
) -> pd.DataFrame:
    """Regulator score of every source head with a bootstrap interval, best first.

    Args:
        influence: influence table (module docstring).
        metric: ``"out_change"`` or ``"attn_kl"``.
        condition: rows of this condition; None reads ``"all"`` if present, else every row.
        noise_floor: fixed null threshold; None fits the random-pair null (module docstring).
        null_quantile: quantile of the random-pair null.
        alpha: level of the breadth test.
        n_boot: bootstrap replicates over prompts.
        seed: random seed.

    Returns:
        DataFrame sorted by score: head_id, layer, head, n_targets, breadth, strength, score,
        ci_low, ci_high, p_top (share of replicates where the head ranks first), percentile (rank
        among sources, %), baseline_median, baseline_p95, threshold, p_breadth (Bonferroni),
        candidate.
    """
    pivot = _pivot(influence, metric)
    rows = _rows(pivot, condition)
    values = pivot.values[rows]
    observed = _means(values, np.ones((1, len(rows))))
    threshold = _null_threshold(observed, null_quantile, noise_floor)
    breadth, strength, score = (a[0] for a in _scores(observed, threshold, pivot))
    rng = np.random.default_rng(seed)
    boot = []
    for start in range(0, n_boot, _CHUNK):
        weights = _boot_weights(pivot.conditions[rows], min(_CHUNK, n_boot - start), rng)
        boot.append(_scores(_means(values, weights), threshold, pivot)[2])
    boot_scores = np.vstack(boot) if boot else np.full((1, len(score)), np.nan)
    low, high = percentile_interval(boot_scores)
    p_top = np.bincount(np.argmax(boot_scores, axis=1), minlength=len(score)) / len(boot_scores) if boot else np.nan
    out = pivot.sources.copy()
    out["breadth"], out["strength"], out["score"] = breadth, strength, score
    out["ci_low"], out["ci_high"], out["p_top"] = low, high, p_top
    out["percentile"] = 100.0 * pd.Series(score).rank(method="max").to_numpy() / len(score)
    out["baseline_median"] = float(np.median(score))
    out["baseline_p95"] = float(np.percentile(score, 95))
    out["threshold"] = threshold
    n_targets = out["n_targets"].to_numpy()
    rate = max(float(np.median(breadth)), 1.0 - null_quantile)
    exceed = np.rint(breadth * n_targets).astype(int)
    out["p_breadth"] = np.minimum(1.0, binom.sf(exceed - 1, n_targets, rate) * len(out))
    out["candidate"] = (out["p_breadth"] < alpha) & (out["ci_low"] > out["baseline_p95"])
    return out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def default_condition_pairs(conditions: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs (a, b) to contrast: each variant of a family against its reference variant.

    The reference of a ``"family:variant"`` family is the variant listed in
    :data:`REFERENCE_VARIANTS` (easy, clear, short); a family of exactly two variants without one
    is paired in sorted order (second minus first). ``"all"`` and bare names are skipped.
    """
    families: dict[str, list[str]] = {}
    for cond in sorted(set(map(str, conditions))):
        if ":" in cond:
            families.setdefault(cond.split(":", 1)[0], []).append(cond)
    pairs = []
    for members in families.values():
        refs = [m for m in members if m.split(":", 1)[1] in REFERENCE_VARIANTS]
        if refs:
            pairs += [(m, refs[0]) for m in members if m != refs[0]]
        elif len(members) == 2:
            pairs.append((members[1], members[0]))
    return pairs


def condition_contrasts(
    influence: pd.DataFrame,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    metric: str = "out_change",
    noise_floor: float | None = None,
    null_quantile: float = 0.95,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per head and condition pair, the change of regulator score (a - b) with interval and p-value.

    Args:
        influence: influence table (module docstring).
        pairs: (condition_a, condition_b) pairs; None uses :func:`default_condition_pairs`.
        metric: ``"out_change"`` or ``"attn_kl"``.
        noise_floor: fixed null threshold; None fits the random-pair null to the pooled prompts.
        null_quantile: quantile of the random-pair null.
        n_boot: bootstrap replicates (prompts resampled within each condition).
        n_perm: condition-label permutations.
        seed: random seed.

    Returns:
        DataFrame: condition_a, condition_b, head_id, layer, head, score_a, score_b, diff, ci_low,
        ci_high, p_value, q_value, threshold, n_prompts_a, n_prompts_b; empty when there is no
        pair to contrast.

    Raises:
        ResultsError: a named condition is absent, or n_perm / n_boot < 1.
    """
    if n_perm < 1 or n_boot < 1:
        raise ResultsError(f"n_boot={n_boot}, n_perm={n_perm}: pass positive numbers of replicates")
    pivot = _pivot(influence, metric)
    pairs = default_condition_pairs(pivot.conditions) if pairs is None else list(pairs)
    rng = np.random.default_rng(seed)
    frames = []
    for cond_a, cond_b in pairs:
        rows_a, rows_b = _rows(pivot, cond_a), _rows(pivot, cond_b)
        values = pivot.values[np.concatenate([rows_a, rows_b])]
        n_a, n_b = len(rows_a), len(rows_b)
        in_a = np.arange(n_a + n_b) < n_a
        pooled = _means(values, np.ones((1, n_a + n_b)))
        threshold = _null_threshold(pooled, null_quantile, noise_floor)

        def diff(weights_a: np.ndarray, weights_b: np.ndarray) -> np.ndarray:
            score_a = _scores(_means(values, weights_a), threshold, pivot)[2]
            return score_a - _scores(_means(values, weights_b), threshold, pivot)[2]

        score_a = _scores(_means(values, in_a[None].astype(float)), threshold, pivot)[2][0]
        score_b = _scores(_means(values, (~in_a)[None].astype(float)), threshold, pivot)[2][0]
        observed = score_a - score_b
        boot, null = [], []
        for start in range(0, n_boot, _CHUNK):
            weights = _boot_weights(in_a.astype(int), min(_CHUNK, n_boot - start), rng)
            boot.append(diff(weights * in_a, weights * ~in_a))
        for start in range(0, n_perm, _CHUNK):
            size = min(_CHUNK, n_perm - start)
            labels = np.argsort(rng.random((size, n_a + n_b)), axis=1) < n_a
            null.append(diff(labels.astype(float), (~labels).astype(float)))
        low, high = percentile_interval(np.vstack(boot))
        null_arr = np.vstack(null)
        p_value = (1 + (np.abs(null_arr) >= np.abs(observed)[None] - 1e-12).sum(axis=0)) / (1 + n_perm)
        frame = pivot.sources[["head_id", "layer", "head"]].copy()
        frame.insert(0, "condition_b", cond_b)
        frame.insert(0, "condition_a", cond_a)
        frame["score_a"], frame["score_b"], frame["diff"] = score_a, score_b, observed
        frame["ci_low"], frame["ci_high"], frame["p_value"] = low, high, p_value
        frame["q_value"] = false_discovery_control(p_value)
        frame["threshold"], frame["n_prompts_a"], frame["n_prompts_b"] = threshold, n_a, n_b
        frames.append(frame)
    columns = ["condition_a", "condition_b", "head_id", "layer", "head", "score_a", "score_b", "diff", "ci_low", "ci_high",
               "p_value", "q_value", "threshold", "n_prompts_a", "n_prompts_b"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
