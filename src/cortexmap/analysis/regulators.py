"""Regulator heads: candidates for heads that modulate many later heads, judged against their own layer.

Input ``influence`` (measured by :mod:`cortexmap.sweep.influence`): one row per (condition, prompt,
source head, later target head) with ``out_change`` (relative L2 change of the target's output)
and ``attn_kl`` (KL of the target's attention pattern, clean || ablated); optionally ``ablation``
(``mean``: the source replaced by its mean output over the condition prompts, counterfactual;
``zero``: off-distribution; tables without the column were measured with zero ablation) and
``n_tokens`` (the prompt's token length). ``prompt`` is the index of the prompt in its condition's
list, so the ``i``-th prompts of two matched conditions are a pair.

Why layer-matched: an early head influences more later heads by position alone (it has more of
them, and everything downstream reads its output), so a head is only compared with the heads of
its **own layer**, which share its targets:

* **Influence matrix**: mean of each metric per source -> target pair over prompts.
* **Null threshold of a layer**: ``noise_floor`` when given; otherwise the ``null_quantile``
  (0.95) quantile of the influence a random head *of that source layer* exerts on a random later
  head, modelled robustly as log-normal from the bulk of the layer's pairs:
  ``exp(median(log m) + Phi^-1(null_quantile) * 1.4826 * MAD(log m))`` over pair means ``m > 0``
  (robust, so a strong regulator barely raises its own threshold).
* **Regulator score** = breadth x strength: breadth = share of the source's later heads whose mean
  influence exceeds its layer's threshold, strength = mean influence over those later heads.
* **Baseline** (``baseline_median``, ``baseline_p95``): the median and 95th percentile of the
  scores of the *other* heads of the source's layer (``n_peers`` of them).
* **Layer rank test** (``p_value``): on each prompt the heads of a layer are ranked 1..k by their
  score on that prompt alone (ties broken by strength); a head's rank sum over the ``P`` prompts
  is compared with its exact null, the sum of ``P`` independent uniform ranks, which holds when
  the heads of a layer are exchangeable and prompts independent, however influence varies with
  depth and however strongly the targets of one source move together on a prompt (a binomial
  count of targets would treat them as independent). Bonferroni over all source heads;
  ``p_smallest`` is the smallest p ``P`` prompts allow (``k**-P`` times the heads), so a screen
  of too few prompts says it is underpowered.
* **Candidate** = ``p_value < alpha`` and the lower end of its bootstrap interval above
  ``baseline_p95``. ``percentile`` is the head's rank within its layer. A head alone in its layer
  has no baseline and is never a candidate.
* **Intervals**: bootstrap over prompts (same resample for every pair, stratified by condition),
  thresholds held at their observed values.
* **Condition contrasts** (a vs b): difference of each head's score, threshold shared (from the
  pooled prompts of both conditions, or given per head); when the two conditions hold the same
  prompt indices they are **matched pairs** (:func:`cortexmap.tasks.condition_sets`, equal token
  lengths): the bootstrap resamples pairs and the permutation null swaps the two labels within
  each pair; otherwise prompts are resampled within each condition and labels shuffled across the
  pooled prompts. p is two-sided ``(1 + #{|null| >= |diff|}) / (1 + n_perm)``; Benjamini-Hochberg
  q-values over every (head, condition pair) contrast returned, the family the findings report. A contrast between sets of unequal length measures length as much as
  demand; ``tokens_a`` / ``tokens_b`` state the mean lengths when the table has ``n_tokens``.

Conditions are ``"family:variant"`` strings; the row ``"all"``, when present, is what
:func:`regulator_scores` reads by default. The record of the whole analysis is :class:`Regulators`
(:func:`regulator_analysis` of a run's view).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.selection import require_columns
from cortexmap.errors import ResultsError
from cortexmap.heads import HeadId
from cortexmap.stats import bh_q, percentile_interval

INFLUENCE_COLUMNS = ("condition", "prompt", "source_layer", "source_head", "target_layer", "target_head", "out_change", "attn_kl")
METRICS = ("out_change", "attn_kl")
REFERENCE_VARIANTS = ("easy", "clear", "short")
_CHUNK = 64


@dataclass(frozen=True)
class _Pivot:
    values: np.ndarray  # [rows = (condition, prompt), pairs]
    conditions: np.ndarray  # [rows] condition of each row
    prompts: np.ndarray  # [rows] prompt index of each row
    tokens: np.ndarray  # [rows] token length of each row (NaN when not measured)
    sources: pd.DataFrame  # one row per source head: head_id, layer, head, n_targets
    starts: np.ndarray  # [sources] first pair of each source (pairs are sorted by source)
    pair_source: np.ndarray  # [pairs] index of each pair's source


def _pivot(influence: pd.DataFrame, metric: str) -> _Pivot:
    require_columns(influence, INFLUENCE_COLUMNS, "influence")
    if metric not in METRICS:
        raise ResultsError(f"metric {metric!r} is unknown: use one of {METRICS}")
    keys = [influence[k].to_numpy(dtype=np.int64) for k in ("source_layer", "source_head", "target_layer", "target_head")]
    if (keys[2] <= keys[0]).any():
        raise ResultsError("influence has targets at or before their source layer: keep only later target heads")
    conditions = np.asarray(influence["condition"].astype(str).to_numpy(), dtype=str)
    condition_code = np.unique(conditions, return_inverse=True)[1].ravel()
    row_id = condition_code * (int(influence["prompt"].max()) + 1) + influence["prompt"].to_numpy(dtype=np.int64)
    rows, row_code = np.unique(row_id, return_inverse=True)
    span = [int(k.max()) + 1 for k in keys]
    pair_id = ((keys[0] * span[1] + keys[1]) * span[2] + keys[2]) * span[3] + keys[3]
    pair_ids, first, pair_code = np.unique(pair_id, return_index=True, return_inverse=True)
    if len(np.unique(row_code.ravel() * len(pair_ids) + pair_code.ravel())) != len(influence):
        raise ResultsError("influence has duplicate (condition, prompt, source, target) rows: deduplicate them")
    values = np.full((len(rows), len(pair_ids)), np.nan)
    values[row_code.ravel(), pair_code.ravel()] = influence[metric].to_numpy(dtype=float)
    row_first = np.unique(row_code.ravel(), return_index=True)[1]
    tokens = (influence["n_tokens"].to_numpy(dtype=float)[row_first] if "n_tokens" in influence
              else np.full(len(rows), np.nan))
    source_layer, source_head = keys[0][first], keys[1][first]  # pairs are sorted by source
    source_id, n_targets = np.unique(source_layer * span[1] + source_head, return_counts=True)
    layer, head = source_id // span[1], source_id % span[1]
    sources = pd.DataFrame({"head_id": [str(HeadId(int(a), int(b))) for a, b in zip(layer, head)],
                            "layer": layer, "head": head, "n_targets": n_targets})
    starts = np.concatenate([[0], np.cumsum(n_targets)[:-1]])
    return _Pivot(values, conditions[row_first], influence["prompt"].to_numpy()[row_first], tokens, sources, starts,
                  np.repeat(np.arange(len(sources)), n_targets))


def _means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted pair means ignoring NaN: weights [B, rows] -> [B, pairs]."""
    measured = np.isfinite(values)
    if measured.all():
        return (weights @ values) / weights.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.where(measured, values, 0.0)) / (weights @ measured.astype(float))


def _scores(means: np.ndarray, threshold: np.ndarray | float, pivot: _Pivot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(breadth, strength, score) per source from pair means [B, pairs] and a threshold per pair (or one)."""
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


def _layer_thresholds(means: np.ndarray, pivot: _Pivot, null_quantile: float,
                      noise_floor: float | None) -> np.ndarray:
    """``[sources]`` the null threshold of each source's layer, fitted on that layer's pairs only."""
    layers = pivot.sources["layer"].to_numpy()
    pair_layer = layers[pivot.pair_source]
    out = np.empty(len(layers))
    for layer in np.unique(layers):
        out[layers == layer] = _null_threshold(means[pair_layer == layer], null_quantile, noise_floor)
    return out


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


def _peer_baselines(score: np.ndarray, layers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per source: the other heads of its layer's median and 95th-percentile score, their number, its rank (%)."""
    median, p95 = np.full(len(score), np.nan), np.full(len(score), np.nan)
    n_peers, percentile = np.zeros(len(score), dtype=int), np.full(len(score), np.nan)
    for layer in np.unique(layers):
        idx = np.flatnonzero(layers == layer)
        for i in idx:
            peers = score[idx[idx != i]]
            n_peers[i] = len(peers)
            percentile[i] = 100.0 * (score[idx] <= score[i]).sum() / len(idx)
            if len(peers):
                median[i], p95[i] = np.median(peers), np.percentile(peers, 95)
    return median, p95, n_peers, percentile


def _uniform_sum_sf(k: int, n: int) -> np.ndarray:
    """``sf[t] = P(S >= t)`` for ``S`` the sum of ``n`` independent uniform draws from ``1..k``."""
    pmf = np.ones(1)
    for _ in range(n):
        pmf = np.convolve(pmf, np.full(k, 1.0 / k))
    sf = np.concatenate([np.ones(n), pmf[::-1].cumsum()[::-1]])  # index t = 0 .. n*k
    return np.minimum(sf, 1.0)


def _rank_test(per_prompt: np.ndarray, strength: np.ndarray, layers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per source, the exact p of its rank sum among its layer's heads over prompts, and the smallest p possible.

    ``per_prompt`` / ``strength``: ``[prompts, sources]``; on each prompt heads are ranked 1..k
    within their layer by score, ties broken by strength. Under exchangeable heads each rank is
    uniform and prompts are independent, so the rank sum's null is a sum of uniforms.
    """
    n_prompts = per_prompt.shape[0]
    p_value, smallest = np.full(len(layers), np.nan), np.full(len(layers), np.nan)
    for layer in np.unique(layers):
        idx = np.flatnonzero(layers == layer)
        k = len(idx)
        if k < 2 or n_prompts == 0:
            continue
        ranks = np.empty((n_prompts, k))
        for row in range(n_prompts):
            ranks[row, np.lexsort((strength[row, idx], per_prompt[row, idx]))] = np.arange(1, k + 1)
        sf = _uniform_sum_sf(k, n_prompts)
        p_value[idx] = sf[ranks.sum(axis=0).astype(int)]
        smallest[idx] = sf[-1]
    return p_value, smallest


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
    """Regulator score of every source head with a bootstrap interval and its layer's baseline, best first.

    Args:
        influence: influence table (module docstring).
        metric: ``"out_change"`` or ``"attn_kl"``.
        condition: rows of this condition; None reads ``"all"`` if present, else every row.
        noise_floor: fixed null threshold for every layer; None fits each layer's null (module docstring).
        null_quantile: quantile of the random-pair null.
        alpha: level of the candidate rule.
        n_boot: bootstrap replicates over prompts.
        seed: random seed.

    Returns:
        DataFrame sorted by score: head_id, layer, head, n_targets, breadth, strength, score,
        ci_low, ci_high, p_top (share of replicates where the head ranks first of all heads),
        percentile (rank within its layer, %), n_peers, baseline_median, baseline_p95 (the other
        heads of its layer), threshold (its layer's), p_value (layer rank test, Bonferroni),
        p_smallest, p_breadth (the same as p_value, its old name), n_prompts, candidate.

    Raises:
        ResultsError: a malformed table, an unknown metric or condition.
    """
    pivot = _pivot(influence, metric)
    rows = _rows(pivot, condition)
    values = pivot.values[rows]
    observed = _means(values, np.ones((1, len(rows))))
    threshold = _layer_thresholds(observed[0], pivot, null_quantile, noise_floor)
    per_pair = threshold[pivot.pair_source]
    breadth, strength, score = (a[0] for a in _scores(observed, per_pair, pivot))
    rng = np.random.default_rng(seed)
    boot = []
    for start in range(0, n_boot, _CHUNK):
        weights = _boot_weights(pivot.conditions[rows], min(_CHUNK, n_boot - start), rng)
        boot.append(_scores(_means(values, weights), per_pair, pivot)[2])
    boot_scores = np.vstack(boot) if boot else np.full((1, len(score)), np.nan)
    low, high = percentile_interval(boot_scores)
    p_top = np.bincount(np.argmax(boot_scores, axis=1), minlength=len(score)) / len(boot_scores) if boot else np.nan
    out = pivot.sources.copy()
    out["breadth"], out["strength"], out["score"] = breadth, strength, score
    out["ci_low"], out["ci_high"], out["p_top"] = low, high, p_top
    layers = out["layer"].to_numpy()
    median, p95, n_peers, percentile = _peer_baselines(score, layers)
    out["percentile"], out["n_peers"], out["baseline_median"], out["baseline_p95"] = percentile, n_peers, median, p95
    out["threshold"] = threshold
    _, strength_p, score_p = _scores(values, per_pair, pivot)
    p_rank, smallest = _rank_test(score_p, strength_p, layers)
    out["p_value"] = np.minimum(1.0, p_rank * len(out))
    out["p_smallest"] = np.minimum(1.0, smallest * len(out))
    out["p_breadth"] = out["p_value"]  # the old name, kept for its callers
    out["n_prompts"] = len(rows)
    out["candidate"] = (out["p_value"] < alpha) & (out["ci_low"] > out["baseline_p95"])
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


def _matched(pivot: _Pivot, rows_a: np.ndarray, rows_b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Both conditions' rows ordered by prompt index when they hold the same indices (matched pairs), else None."""
    order_a, order_b = rows_a[np.argsort(pivot.prompts[rows_a])], rows_b[np.argsort(pivot.prompts[rows_b])]
    if len(order_a) != len(order_b) or not np.array_equal(pivot.prompts[order_a], pivot.prompts[order_b]):
        return None
    return order_a, order_b


def condition_contrasts(
    influence: pd.DataFrame,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    metric: str = "out_change",
    noise_floor: float | None = None,
    thresholds: Mapping[str, float] | None = None,
    null_quantile: float = 0.95,
    paired: bool | None = None,
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
        thresholds: a threshold per head id (e.g. its layer's, from the screen of every head);
            heads without one use ``noise_floor`` / the pooled fit.
        null_quantile: quantile of the random-pair null.
        paired: treat the ``i``-th prompts of the two conditions as a matched pair; None: when
            both hold the same prompt indices.
        n_boot: bootstrap replicates.
        n_perm: label permutations (within pairs when paired).
        seed: random seed.

    Returns:
        DataFrame: condition_a, condition_b, head_id, layer, head, score_a, score_b, diff, ci_low,
        ci_high, p_value, q_value, threshold, n_prompts_a, n_prompts_b, paired, tokens_a,
        tokens_b (mean token lengths; NaN when not measured); empty when there is no pair.

    Raises:
        ResultsError: a named condition is absent, n_perm / n_boot < 1, or ``paired=True`` for
            conditions that are not matched.
    """
    if n_perm < 1 or n_boot < 1:
        raise ResultsError(f"n_boot={n_boot}, n_perm={n_perm}: pass positive numbers of replicates")
    pivot = _pivot(influence, metric)
    pairs = default_condition_pairs(pivot.conditions) if pairs is None else list(pairs)
    rng = np.random.default_rng(seed)
    frames = []
    for cond_a, cond_b in pairs:
        rows_a, rows_b = _rows(pivot, cond_a), _rows(pivot, cond_b)
        matched = _matched(pivot, rows_a, rows_b)
        if paired and matched is None:
            raise ResultsError(f"{cond_a} and {cond_b} do not hold the same prompt indices: they are not matched pairs")
        is_paired = matched is not None and paired is not False
        if is_paired:
            rows_a, rows_b = matched
        values = pivot.values[np.concatenate([rows_a, rows_b])]
        n_a, n_b = len(rows_a), len(rows_b)
        in_a = np.arange(n_a + n_b) < n_a
        pooled = _means(values, np.ones((1, n_a + n_b)))[0]
        fitted = _null_threshold(pooled, null_quantile, noise_floor)
        given = pivot.sources["head_id"].map(dict(thresholds or {})).to_numpy(dtype=float)
        threshold = np.where(np.isfinite(given), given, fitted)
        per_pair = threshold[pivot.pair_source]

        def score(weights: np.ndarray) -> np.ndarray:
            return _scores(_means(values, weights), per_pair, pivot)[2]

        score_a, score_b = score(in_a[None].astype(float))[0], score((~in_a)[None].astype(float))[0]
        observed = score_a - score_b
        boot, null = [], []
        for start in range(0, n_boot, _CHUNK):
            size = min(_CHUNK, n_boot - start)
            if is_paired:
                half = rng.multinomial(n_a, np.full(n_a, 1.0 / n_a), size=size).astype(float)
                weights = np.concatenate([half, half], axis=1)
            else:
                weights = _boot_weights(in_a.astype(int), size, rng)
            boot.append(score(weights * in_a) - score(weights * ~in_a))
        for start in range(0, n_perm, _CHUNK):
            size = min(_CHUNK, n_perm - start)
            if is_paired:
                swap = rng.random((size, n_a)) < 0.5
                labels = np.concatenate([~swap, swap], axis=1)
            else:
                labels = np.argsort(rng.random((size, n_a + n_b)), axis=1) < n_a
            null.append(score(labels.astype(float)) - score((~labels).astype(float)))
        low, high = percentile_interval(np.vstack(boot))
        null_arr = np.vstack(null)
        p_value = (1 + (np.abs(null_arr) >= np.abs(observed)[None] - 1e-12).sum(axis=0)) / (1 + n_perm)
        frame = pivot.sources[["head_id", "layer", "head"]].copy()
        frame.insert(0, "condition_b", cond_b)
        frame.insert(0, "condition_a", cond_a)
        frame["score_a"], frame["score_b"], frame["diff"] = score_a, score_b, observed
        frame["ci_low"], frame["ci_high"], frame["p_value"] = low, high, p_value
        frame["threshold"], frame["n_prompts_a"], frame["n_prompts_b"] = threshold, n_a, n_b
        frame["paired"] = is_paired
        with np.errstate(invalid="ignore"):
            frame["tokens_a"] = np.nanmean(pivot.tokens[rows_a]) if np.isfinite(pivot.tokens[rows_a]).any() else np.nan
            frame["tokens_b"] = np.nanmean(pivot.tokens[rows_b]) if np.isfinite(pivot.tokens[rows_b]).any() else np.nan
        frames.append(frame)
    columns = ["condition_a", "condition_b", "head_id", "layer", "head", "score_a", "score_b", "diff", "ci_low",
               "ci_high", "p_value", "q_value", "threshold", "n_prompts_a", "n_prompts_b", "paired", "tokens_a", "tokens_b"]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)
    out["q_value"] = bh_q(out["p_value"].to_numpy())  # one family: every head and condition pair returned
    return out[columns]


ABLATION_WORDS = {"mean": "mean ablation", "zero": "zero ablation, off-distribution"}


@dataclass(frozen=True)
class Regulators:
    """Regulator heads of one run: the layer-matched candidate screen and the condition contrasts.

    Attributes:
        scores: :func:`regulator_scores` of the scored rows (the screen of every head), best first;
            None when not evaluated.
        contrasts: :func:`condition_contrasts` of the heads measured on the condition sets.
        scored_on: the condition of the scored rows (``"screen"``), or ``"all"`` for every row.
        ablation: how sources were ablated (``mean``, ``zero``, or both joined by ``+``).
        n_sources: heads scored.
        alpha: level of the candidate rule.
        note: why the analysis was not evaluated (None when it was).
    """

    scores: pd.DataFrame | None
    contrasts: pd.DataFrame | None
    scored_on: str | None
    ablation: str | None
    n_sources: int
    alpha: float = 0.05
    note: str | None = None

    @property
    def candidates(self) -> pd.DataFrame:
        """The candidate rows of :attr:`scores` (empty when none)."""
        return self.scores[self.scores["candidate"]] if self.scores is not None else pd.DataFrame()

    def findings(self) -> list[Finding]:
        """``regulator`` findings (candidates, or the top scores when none passes) and ``contrast`` findings."""
        if self.scores is None:
            return [Finding(kind="not_evaluated", subject="regulators", text=self.note or "regulators not evaluated")]
        how = ABLATION_WORDS.get(self.ablation or "", f"{self.ablation} ablation")
        out = [_candidate_finding(r, self, how) for r in self.candidates.head(3).to_dict("records")]
        if not out and len(self.scores):
            out.append(_no_candidate_finding(self, how))
        return out + _contrast_findings(self.contrasts, how)


def _peers(r: dict) -> str:
    return (f"the {int(r['n_peers'])} other heads of layer {int(r['layer'])}: median {num(r['baseline_median'], 3)}, "
            f"95th pct {num(r['baseline_p95'], 3)}")


def _candidate_finding(r: dict, rec: Regulators, how: str) -> Finding:
    n = int(rec.candidates.shape[0])
    text = (f"Regulator candidate {r['head_id']} ({how}; {n} candidate{'s' if n > 1 else ''} in all): score {num(r['score'], 3)} {ci(r['ci_low'], r['ci_high'])} "
            f"(breadth {num(r['breadth'])}, strength {num(r['strength'], 3)}) vs {_peers(r)}; rank within its layer "
            f"over {int(r['n_prompts'])} prompts p = {num(r['p_value'], 4)} (Bonferroni over {rec.n_sources} heads).")
    return Finding(kind="regulator", head=r["head_id"], effect=r["score"], ci_low=r["ci_low"], ci_high=r["ci_high"],
                   baseline=r["baseline_p95"], baseline_label="95th pct of the other heads of its layer",
                   p_value=r["p_value"], verdict="candidate", method="exact",
                   stats={"breadth": r["breadth"], "strength": r["strength"], "baseline_median": r["baseline_median"],
                          "n_peers": r["n_peers"], "n_sources": rec.n_sources, "n_prompts": r["n_prompts"],
                          "n_candidates": n, "ablation": rec.ablation}, text=text)


def _no_candidate_finding(rec: Regulators, how: str) -> Finding:
    top = rec.scores.head(3).to_dict("records")
    smallest = float(np.nanmin(rec.scores["p_smallest"])) if rec.scores["p_smallest"].notna().any() else np.nan
    power = np.isfinite(smallest) and smallest < rec.alpha
    shown = "; ".join(f"{r['head_id']} {num(r['score'], 3)} {ci(r['ci_low'], r['ci_high'])} vs its layer's 95th pct "
                      f"{num(r['baseline_p95'], 3)}, p {num(r['p_value'], 3)}" for r in top)
    reason = ("" if power else f" (underpowered: with {int(top[0]['n_prompts'])} prompts the smallest possible p is "
              f"{num(smallest, 3)})")
    text = (f"No regulator candidate among {rec.n_sources} heads ({how}){reason}: a candidate needs its within-layer "
            f"rank p < {rec.alpha} (Bonferroni) and its interval above the 95th pct of its layer's other heads; "
            f"top scores: {shown}.")
    r = top[0]
    stats: dict[str, Any] = {"baseline_median": r["baseline_median"], "p_smallest": smallest, "n_sources": rec.n_sources,
                             "ablation": rec.ablation}
    for i, other in enumerate(top[1:], start=2):
        stats.update({f"top{i}_head": other["head_id"], f"top{i}_score": other["score"],
                      f"top{i}_score_ci_low": other["ci_low"], f"top{i}_score_ci_high": other["ci_high"],
                      f"top{i}_p_value": other["p_value"]})
    return Finding(kind="regulator", head=r["head_id"], effect=r["score"], ci_low=r["ci_low"], ci_high=r["ci_high"],
                   baseline=r["baseline_p95"], baseline_label="95th pct of the other heads of its layer",
                   p_value=r["p_value"], verdict="no candidate" if power else "underpowered", method="exact",
                   stats=stats, text=text)


def _finite(value: Any) -> float | None:
    """``value`` as a float, None when missing or NaN (so a finding compares equal after a JSON round trip)."""
    return float(value) if value is not None and np.isfinite(value) else None


def _design(c: dict) -> str:
    pairing = "matched pairs" if c.get("paired") else "unpaired prompts"
    a, b = _finite(c.get("tokens_a")), _finite(c.get("tokens_b"))
    if a is None or b is None:
        return pairing
    return f"{pairing}, mean length {num(a, 1)} vs {num(b, 1)} tokens"


def _contrast_finding(c: dict, verdict: str, text: str, how: str, **stats: Any) -> Finding:
    return Finding(kind="contrast", subject=f"{c['condition_a']} - {c['condition_b']}", head=c["head_id"],
                   effect=c["diff"], ci_low=c["ci_low"], ci_high=c["ci_high"], baseline=0.0,
                   baseline_label="no difference between conditions", p_value=c["p_value"], verdict=verdict,
                   method="exact", stats={"q_value": c["q_value"], "tokens_a": _finite(c.get("tokens_a")),
                                          "tokens_b": _finite(c.get("tokens_b")), "paired": bool(c.get("paired")),
                                          **stats}, text=text)


def _contrast_findings(contrasts: pd.DataFrame | None, how: str) -> list[Finding]:
    if contrasts is None or contrasts.empty:
        return []
    rows = contrasts.to_dict("records")
    significant = [c for c in rows if np.isfinite(c["q_value"]) and c["q_value"] < 0.05]
    out = []
    for c in sorted(significant, key=lambda c: c["p_value"])[:5]:
        out.append(_contrast_finding(c, "differs", f"Condition contrast {c['head_id']} ({how}): score "
                                     f"{c['condition_a']} - {c['condition_b']} = {num(c['diff'], 3)} "
                                     f"{ci(c['ci_low'], c['ci_high'])} ({_design(c)}), permutation p = "
                                     f"{num(c['p_value'], 4)} (q = {num(c['q_value'], 3)}).", how))
    tested = [c for c in rows if np.isfinite(c["p_value"])]
    if tested and not significant:
        c = min(tested, key=lambda c: c["p_value"])
        text = (f"No regulator score differs between conditions at q < 0.05 ({len(tested)} contrasts, {how}); "
                f"smallest p: {c['head_id']} {c['condition_a']} - {c['condition_b']} = {num(c['diff'], 3)} "
                f"{ci(c['ci_low'], c['ci_high'])} ({_design(c)}), p = {num(c['p_value'], 4)} "
                f"(q = {num(c['q_value'], 3)}).")
        out.append(_contrast_finding(c, "no difference", text, how, n_contrasts=len(tested)))
    return out


def _ablation_of(influence: pd.DataFrame) -> str:
    if "ablation" not in influence:
        return "zero"
    return "+".join(sorted(set(influence["ablation"].astype(str))))


def regulator_analysis(
    view: Any,
    *,
    metric: str = "out_change",
    null_quantile: float = 0.95,
    alpha: float = 0.05,
    n_boot: int | None = None,
    n_perm: int = 1000,
    seed: int | None = None,
) -> Regulators:
    """Regulator heads of a run from ``view.table("influence")`` (module docstring).

    The rows of the screen of every head (``condition == "screen"``) are scored, so every head is
    judged against the other heads of its layer; without a screen every row is scored. The other
    rows (the condition sets) are contrasted, breadth measured against each head's layer threshold
    from the scoring.

    Args:
        view: a :class:`~cortexmap.analysis.view.RunView`.
        metric: ``"out_change"`` or ``"attn_kl"``.
        null_quantile: quantile of each layer's random-pair null.
        alpha: level of the candidate rule.
        n_boot: bootstrap replicates (None: the view's).
        n_perm: label permutations of the contrasts.
        seed: seed (None: the view's; the scores use ``seed + 4`` and the contrasts ``seed + 5``, as
            ``cortexmap analyze`` always has).

    Returns:
        The :class:`Regulators` record (``note`` set and no scores when the run has no influence table).
    """
    from cortexmap.results.layout import SCREEN_CONDITION

    influence = view.table("influence")
    if influence is None:
        return Regulators(None, None, None, None, 0, alpha, "regulator heads not evaluated: no influence "
                          "measurements (cortexmap analyze --regulators measures them)")
    boot = view.n_boot if n_boot is None else n_boot
    base = view.seed if seed is None else seed
    screened = (influence["condition"] == SCREEN_CONDITION).to_numpy()
    scored_on = SCREEN_CONDITION if screened.any() else "all"
    scores = regulator_scores(influence[screened] if screened.any() else influence,
                              condition=SCREEN_CONDITION if screened.any() else None, metric=metric,
                              null_quantile=null_quantile, alpha=alpha, n_boot=boot, seed=base + 4)
    measured = influence[~screened] if screened.any() else influence
    thresholds = dict(zip(scores["head_id"], scores["threshold"])) if screened.any() else None
    contrasts = condition_contrasts(measured, metric=metric, thresholds=thresholds, null_quantile=null_quantile,
                                    n_boot=boot, n_perm=n_perm, seed=base + 5) if len(measured) else None
    return Regulators(scores, contrasts, scored_on, _ablation_of(influence), int(len(scores)), alpha)
