"""Which effect rows an analysis reads, and what "importance" means.

Every analysis module reads ``effects`` (docs/schema.md) through this module, so the conventions
below are fixed once:

* **One model per call.** A frame holding several models is refused; slice it first.
* **One intervention and method.** ``intervention=None`` prefers ``"zero"``, then ``"mean"``,
  ``"resample"``, ``"patch"``, ``"amplify"``; ``method=None`` prefers ``"exact"``, then
  ``"screen"``, then ``"attribution"`` for that intervention. Several ``alpha`` values (amplify)
  need an explicit ``alpha``.
* **Screened out is below the bar.** In a ``screen`` run (:mod:`cortexmap.sweep.verify`) the
  exact rows cover the verified and audited heads only. Selecting ``"exact"`` there adds a row for
  every other screened head with effect 0, no interval and ``screened_out = True``: it counts in
  every population (percentiles, depth, groups) as a head without effect and is never important
  or active, and no estimate stands in for a measurement.
* **Harmful direction is negative.** Interventions are expected to lower the task's metric (the
  logit difference, or its multi-token / answer-set form; ``effect = intervened - clean < 0``). ``importance = max(0, -effect) / |clean|``, i.e.
  ``max(0, -effect_normalized)``; NaN when ``clean`` is 0.
* **Standard errors come from the reported interval.** ``se_normalized = (ci_high - ci_low) /
  (2 * 1.959964) / |clean|``: the normal approximation of the 95% bootstrap interval.
* **Active.** A head is active when at least one task has ``|effect_normalized| >= 0.05`` (5% of
  the clean metric) and ``|z| >= 3`` (stricter than 1.96 because every task is checked): the rule
  for "this head does something" used by groups, comparisons and scale tables.
* **Important.** A head is important for a task when ``effect_normalized < 0``, ``z =
  effect_normalized / se_normalized <= -z_crit`` and ``importance >= min_importance``. The default
  ``z_crit = IMPORTANT_Z = 3`` (two-sided p = 0.0027) is stricter than "the 95% interval excludes
  zero" (1.96), which would admit 2.5% of all heads per task as noise: about 7 heads per task in a
  270-head model, scattered over depth, diluting every depth statistic. Heads without an interval
  are never important.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from cortexmap.errors import ResultsError
from cortexmap.heads import HeadId
from cortexmap.results.layout import ATTRIBUTION, EXACT, SCREEN

Z95 = 1.959963984540054
IMPORTANT_Z = 3.0
INTERVENTION_PREFERENCE = ("zero", "mean", "resample", "patch", "amplify")
METHOD_PREFERENCE = (EXACT, SCREEN, ATTRIBUTION)
EFFECT_COLUMNS = (
    "model", "task", "level", "intervention", "alpha", "method", "layer", "head", "head_id",
    "n_prompts", "clean", "intervened", "effect", "effect_normalized", "ci_low", "ci_high",
)


def require_columns(frame: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    """Raise :class:`ResultsError` unless ``frame`` is a non-empty DataFrame with ``columns``.

    Args:
        frame: the table to check.
        columns: column names it must hold.
        name: what the table is called in the message (e.g. ``"effects"``).

    Raises:
        ResultsError: not a DataFrame, empty, or missing columns.
    """
    if not isinstance(frame, pd.DataFrame):
        raise ResultsError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}: load it with pandas first")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ResultsError(f"{name} lacks columns {missing}: pass a table in the layout of docs/schema.md")
    if frame.empty:
        raise ResultsError(f"{name} is empty: run the sweep (or the measurement) before analysing it")


def head_grid(n_layers: int, n_heads: int) -> pd.DataFrame:
    """Every head of an ``n_layers x n_heads`` model, layer-major.

    Args:
        n_layers: number of layers (from the manifest).
        n_heads: query heads per layer.

    Returns:
        DataFrame indexed by ``head_id`` with ``layer``, ``head`` and ``rel_depth = layer /
        (n_layers - 1)`` (0 for a one-layer model).

    Raises:
        ResultsError: a dimension is not a positive integer.
    """
    if int(n_layers) != n_layers or int(n_heads) != n_heads or n_layers < 1 or n_heads < 1:
        raise ResultsError(f"n_layers={n_layers}, n_heads={n_heads} is not a model shape: pass positive integers from the manifest")
    layers = np.repeat(np.arange(n_layers), n_heads)
    heads = np.tile(np.arange(n_heads), n_layers)
    ids = [str(HeadId(int(lay), int(h))) for lay, h in zip(layers, heads)]
    depth = layers / (n_layers - 1) if n_layers > 1 else np.zeros(len(layers))
    grid = pd.DataFrame({"layer": layers, "head": heads, "rel_depth": depth}, index=pd.Index(ids, name="head_id"))
    return grid


def select_effects(
    effects: pd.DataFrame,
    *,
    intervention: str | None = None,
    method: str | None = None,
    alpha: float | None = None,
) -> pd.DataFrame:
    """The rows of one model, intervention, method (and alpha) with derived columns.

    Args:
        effects: effects table (docs/schema.md), one model.
        intervention: which intervention; None picks by ``INTERVENTION_PREFERENCE``.
        method: ``"exact"`` or ``"attribution"``; None prefers exact.
        alpha: amplification factor, needed only when several are present.

    Returns:
        A new DataFrame, one row per (task, layer, head), with ``importance`` and
        ``se_normalized`` added; the chosen settings are in ``.attrs["selection"]``.

    Raises:
        ResultsError: columns missing, several models, unknown intervention/method, or duplicates.
    """
    require_columns(effects, EFFECT_COLUMNS, "effects")
    models = sorted(effects["model"].astype(str).unique())
    if len(models) > 1:
        raise ResultsError(f"effects holds {len(models)} models ({', '.join(models)}): pass one model's rows, e.g. effects[effects.model == {models[0]!r}]")
    present = list(effects["intervention"].unique())
    if intervention is None:
        intervention = next((i for i in INTERVENTION_PREFERENCE if i in present), sorted(map(str, present))[0])
    elif intervention not in present:
        raise ResultsError(f"intervention {intervention!r} is not in effects (present: {sorted(map(str, present))}): pick one of those")
    rows = effects[effects["intervention"] == intervention]
    methods = list(rows["method"].unique())
    if method is None:
        method = next((m for m in METHOD_PREFERENCE if m in methods), sorted(map(str, methods))[0])
    elif method not in methods:
        raise ResultsError(f"method {method!r} has no {intervention!r} rows (present: {sorted(map(str, methods))}): pick one of those")
    screened = rows[rows["method"] == SCREEN]
    rows = rows[rows["method"] == method]
    if method == EXACT and len(screened):
        rows = _with_screened_out(rows, screened)
    alphas = rows["alpha"].dropna().unique()
    if alpha is not None:
        rows = rows[np.isclose(rows["alpha"].astype(float), alpha)]
        if rows.empty:
            raise ResultsError(f"alpha {alpha} has no {intervention!r} rows (present: {sorted(alphas)}): pick one of those")
    elif len(alphas) > 1:
        raise ResultsError(f"{intervention!r} rows hold several alphas {sorted(alphas)}: pass alpha= to pick one")
    if rows.duplicated(["task", "layer", "head"]).any():
        raise ResultsError("effects holds duplicate (task, layer, head) rows for one setting: deduplicate the sweep output")
    out = rows.copy()
    clean_abs = out["clean"].abs().astype(float).replace(0.0, np.nan)
    out["importance"] = np.clip(-out["effect"].astype(float), 0.0, None) / clean_abs
    out["se_normalized"] = (out["ci_high"] - out["ci_low"]).astype(float) / (2 * Z95) / clean_abs
    out.attrs["selection"] = {"model": models[0], "intervention": str(intervention), "method": str(method),
                              "alpha": None if alpha is None else float(alpha)}
    return out


def _with_screened_out(exact: pd.DataFrame, screened: pd.DataFrame) -> pd.DataFrame:
    """``exact`` plus a no-effect row for every screened (task, alpha, head) it lacks."""
    def keys(frame: pd.DataFrame) -> pd.MultiIndex:  # alpha is NaN except for amplification
        return pd.MultiIndex.from_frame(frame[["task", "layer", "head"]].assign(alpha=frame["alpha"].fillna(-1.0)))

    missing = screened[~keys(screened).isin(keys(exact))].copy()
    exact = exact.assign(screened_out=False)
    if missing.empty:
        return exact
    clean = exact.assign(alpha=exact["alpha"].fillna(-1.0)).groupby(["task", "alpha"])["clean"].first()
    lookup = pd.MultiIndex.from_frame(missing[["task"]].assign(alpha=missing["alpha"].fillna(-1.0)))
    missing["clean"] = pd.Series(clean.reindex(lookup).to_numpy(), index=missing.index).fillna(missing["clean"])
    missing["intervened"] = missing["clean"]
    missing[["effect", "effect_normalized"]] = 0.0
    missing[["ci_low", "ci_high"]] = np.nan
    missing["method"] = EXACT
    missing["n_prompts"] = 0
    missing["screened_out"] = True
    return pd.concat([exact, missing], ignore_index=True)


@dataclass(frozen=True)
class EffectArrays:
    """Dense head x task arrays of one selection (heads in :func:`head_grid` order).

    Attributes:
        grid: :func:`head_grid` of the model.
        tasks: task names, sorted; the columns of every array.
        levels: level of each task.
        effect: ``effect_normalized`` [n_grid_heads, n_tasks]; NaN where not measured.
        se: ``se_normalized``, same shape.
        clean_abs: ``|clean|``, same shape.
    """

    grid: pd.DataFrame
    tasks: list[str]
    levels: list[str]
    effect: np.ndarray
    se: np.ndarray
    clean_abs: np.ndarray


def effect_arrays(selected: pd.DataFrame, n_layers: int, n_heads: int) -> EffectArrays:
    """Lay a :func:`select_effects` frame out as head x task arrays.

    Args:
        selected: output of :func:`select_effects`.
        n_layers: layers of the model.
        n_heads: heads per layer.

    Returns:
        The arrays; heads never measured are NaN rows.

    Raises:
        ResultsError: a row's head lies outside the grid, or a task has two levels.
    """
    grid = head_grid(n_layers, n_heads)
    bad = (selected["layer"] < 0) | (selected["layer"] >= n_layers) | (selected["head"] < 0) | (selected["head"] >= n_heads)
    if bad.any():
        first = selected.loc[bad].iloc[0]
        raise ResultsError(f"effects has head L{first['layer']}H{first['head']} outside {n_layers} layers x {n_heads} heads: pass the manifest's shape")
    levels_of = selected.groupby("task")["level"].unique()
    if (levels_of.map(len) > 1).any():
        raise ResultsError(f"task {levels_of[levels_of.map(len) > 1].index[0]!r} has several levels: fix the task battery's level table")
    tasks = sorted(map(str, levels_of.index))
    row = (selected["layer"].to_numpy() * n_heads + selected["head"].to_numpy()).astype(int)
    col = pd.Index(tasks).get_indexer(selected["task"].astype(str))

    def fill(values: pd.Series) -> np.ndarray:
        out = np.full((len(grid), len(tasks)), np.nan)
        out[row, col] = values.to_numpy(dtype=float)
        return out

    return EffectArrays(
        grid=grid,
        tasks=tasks,
        levels=[str(levels_of[t][0]) for t in tasks],
        effect=fill(selected["effect_normalized"]),
        se=fill(selected["se_normalized"]),
        clean_abs=fill(selected["clean"].abs()),
    )


def importance_of(effect: np.ndarray) -> np.ndarray:
    """``max(0, -effect_normalized)`` with NaN read as 0 (any shape)."""
    return np.nan_to_num(np.clip(-effect, 0.0, None), nan=0.0)


def important_mask(effect: np.ndarray, se: np.ndarray, *, z_crit: float = IMPORTANT_Z,
                   min_importance: float = 0.0) -> np.ndarray:
    """Boolean mask of important (head, task) cells, broadcasting over leading axes.

    Args:
        effect: ``effect_normalized`` values (e.g. [n_boot, heads, tasks] draws).
        se: ``se_normalized`` (broadcastable to ``effect``).
        z_crit: one-sided critical z on the harmful side.
        min_importance: smallest ``max(0, -effect_normalized)`` that counts.

    Returns:
        ``effect < 0 and effect <= -z_crit * se and -effect >= min_importance``; False on NaN.
    """
    with np.errstate(invalid="ignore"):
        mask = (effect < 0) & (effect <= -z_crit * se) & (-effect >= min_importance)
    return mask & np.isfinite(effect) & np.isfinite(se)


def important_weights(effect: np.ndarray, se: np.ndarray, *, z_crit: float = IMPORTANT_Z,
                      min_importance: float = 0.0) -> np.ndarray:
    """Importance of the important cells, zero elsewhere (the weights depth analyses use)."""
    return importance_of(effect) * important_mask(effect, se, z_crit=z_crit, min_importance=min_importance)


ACTIVE_THRESHOLD = 0.05
ACTIVE_Z = 3.0


def active_heads(effect: np.ndarray, se: np.ndarray, *, threshold: float = ACTIVE_THRESHOLD,
                 z_min: float = ACTIVE_Z) -> np.ndarray:
    """[heads] True when some task's effect (either sign) is both large and clearly non-zero.

    Args:
        effect: ``effect_normalized`` [heads, tasks].
        se: ``se_normalized`` [heads, tasks]; a missing or zero se counts as certain.
        threshold: smallest ``|effect_normalized|``.
        z_min: smallest ``|effect_normalized| / se_normalized``.

    Returns:
        Boolean array over heads.
    """
    magnitude = np.nan_to_num(np.abs(effect))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = magnitude / np.where(np.nan_to_num(se) > 0, se, np.nan)
    z = np.where(np.isfinite(z), z, np.where(magnitude > 0, np.inf, 0.0))
    return ((magnitude >= threshold) & (z >= z_min)).any(axis=-1)
