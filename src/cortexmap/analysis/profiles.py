"""Head profiles: one row per head, its normalized effects over tasks plus its probe scores.

Conventions:

* Effect columns are named ``"<intervention>:<task>"`` and hold ``effect_normalized`` (signed:
  negative = the intervention hurts the task); probe columns are ``"probe:<probe>"`` and hold the
  probe score. :func:`effect_columns` and :func:`probe_columns` find them.
* Rows are every head of the ``n_layers x n_heads`` grid, indexed by ``head_id`` (layer-major),
  with ``layer``, ``head`` and ``rel_depth = layer / (n_layers - 1)``. Heads or tasks that were not
  measured are NaN; nothing is imputed here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from cortexmap.analysis.selection import effect_arrays, head_grid, require_columns, select_effects
from cortexmap.errors import ResultsError
from cortexmap.heads import HeadId

PATTERN_COLUMNS = ("probe", "layer", "head", "score", "ci_low", "ci_high")
EFFECT_PREFIX_SEP = ":"
PROBE_PREFIX = "probe:"


def effect_columns(profiles: pd.DataFrame) -> list[str]:
    """Effect columns (``"<intervention>:<task>"``) of a profile table, in order."""
    return [c for c in profiles.columns if EFFECT_PREFIX_SEP in str(c) and not str(c).startswith(PROBE_PREFIX)]


def probe_columns(profiles: pd.DataFrame) -> list[str]:
    """Probe columns (``"probe:<probe>"``) of a profile table, in order."""
    return [c for c in profiles.columns if str(c).startswith(PROBE_PREFIX)]


def probe_matrix(patterns: pd.DataFrame | None, n_layers: int, n_heads: int) -> pd.DataFrame:
    """Probe scores as a head x probe table (``"probe:<probe>"`` columns) over the whole grid.

    Args:
        patterns: probe table (docs/schema.md) of one model, or None.
        n_layers: layers of the model.
        n_heads: heads per layer.

    Returns:
        DataFrame indexed by ``head_id`` (grid order); no columns when ``patterns`` is None/empty.

    Raises:
        ResultsError: columns missing, several models, or a head outside the grid.
    """
    grid = head_grid(n_layers, n_heads)
    if patterns is None or len(patterns) == 0:
        return pd.DataFrame(index=grid.index)
    require_columns(patterns, PATTERN_COLUMNS, "patterns")
    if "model" in patterns.columns and patterns["model"].nunique() > 1:
        raise ResultsError(f"patterns holds {patterns['model'].nunique()} models: pass one model's rows")
    bad = (patterns["layer"] >= n_layers) | (patterns["head"] >= n_heads) | (patterns["layer"] < 0) | (patterns["head"] < 0)
    if bad.any():
        raise ResultsError(f"patterns has heads outside {n_layers} layers x {n_heads} heads: pass the manifest's shape")
    ids = [str(HeadId(int(lay), int(h))) for lay, h in zip(patterns["layer"], patterns["head"])]
    wide = (patterns.assign(head_id=ids).pivot_table(index="head_id", columns="probe", values="score", aggfunc="mean"))
    wide.columns = [f"{PROBE_PREFIX}{p}" for p in wide.columns]
    return wide.reindex(grid.index)


def head_profiles(
    effects: pd.DataFrame,
    patterns: pd.DataFrame | None,
    n_layers: int,
    n_heads: int,
    *,
    interventions: Sequence[str] | None = None,
    method: str | None = None,
) -> pd.DataFrame:
    """Wide per-head profile: normalized effects over tasks (per intervention) and probe scores.

    Args:
        effects: effects table of one model.
        patterns: probe table of the same model, or None.
        n_layers: layers of the model.
        n_heads: heads per layer.
        interventions: which interventions to include; None includes the default one (see
            :func:`~cortexmap.analysis.selection.select_effects`).
        method: ``"exact"`` or ``"attribution"``; None prefers exact, per intervention.

    Returns:
        DataFrame indexed by ``head_id`` with ``layer``, ``head``, ``rel_depth``, one
        ``"<intervention>:<task>"`` column per task and one ``"probe:<probe>"`` column per probe.
    """
    grid = head_grid(n_layers, n_heads)
    parts = [grid]
    for intervention in ([None] if interventions is None else list(interventions)):
        selected = select_effects(effects, intervention=intervention, method=method)
        arrays = effect_arrays(selected, n_layers, n_heads)
        name = selected.attrs["selection"]["intervention"]
        parts.append(pd.DataFrame(arrays.effect, index=grid.index, columns=[f"{name}{EFFECT_PREFIX_SEP}{t}" for t in arrays.tasks]))
    parts.append(probe_matrix(patterns, n_layers, n_heads))
    return pd.concat(parts, axis=1)


def standardize(values: np.ndarray) -> np.ndarray:
    """Z-score columns (NaN -> column mean, i.e. 0); constant columns become 0.

    Args:
        values: [rows, columns] array.

    Returns:
        A new array of the same shape.
    """
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(values, axis=0) if values.size else np.zeros(values.shape[1])
        std = np.nanstd(values, axis=0) if values.size else np.ones(values.shape[1])
    mean = np.nan_to_num(mean)
    safe = np.where(np.isfinite(std) & (std > 0), std, np.inf)
    return np.nan_to_num((values - mean) / safe, nan=0.0)
