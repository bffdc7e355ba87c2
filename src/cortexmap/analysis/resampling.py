"""Bootstrap draws of a head x task effect table, for every interval the analyses report.

Two sources of uncertainty, chosen per task:

* **Prompt bootstrap** (when ``prompt_effects`` covers the task): prompts are resampled with
  replacement, the same resample for every head of the task (heads see the same prompts, so their
  effects are correlated and the resample keeps that), and each head's mean effect is recomputed
  and divided by its ``|clean|``. The clean metric itself is held fixed. A task's resampled
  prompts depend only on the seed, the task's name and its prompts, so draws of two interventions
  measured on the same prompts are paired (the same resample in every replicate).
* **Normal approximation** (otherwise): each head's ``effect_normalized`` is drawn independently
  from ``Normal(effect_normalized, se_normalized)``, ``se_normalized`` implied by the reported 95%
  interval (see :mod:`cortexmap.analysis.selection`). Cells without an interval do not vary. This
  ignores the correlation between heads, so intervals on sums over heads are somewhat too narrow
  when heads share prompts.

``prompt_effects`` columns: ``task``, ``intervention``, ``layer``, ``head``, ``prompt``,
``effect``; rows of other interventions than the selection's are ignored.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from cortexmap.analysis.selection import EffectArrays, require_columns
from cortexmap.errors import ResultsError

PROMPT_EFFECT_COLUMNS = ("task", "layer", "head", "prompt", "effect")


def bootstrap_effects(
    arrays: EffectArrays,
    *,
    prompt_effects: pd.DataFrame | None = None,
    intervention: str | None = None,
    n_boot: int = 500,
    seed: int = 0,
) -> np.ndarray:
    """Draw ``n_boot`` bootstrap replicates of ``effect_normalized``.

    Args:
        arrays: the selection as arrays (:func:`~cortexmap.analysis.selection.effect_arrays`).
        prompt_effects: optional per-prompt effects; used for the tasks it covers.
        intervention: keep only these ``prompt_effects`` rows (when it has the column).
        n_boot: number of replicates.
        seed: seed of the random generator.

    Returns:
        Array [n_boot, n_grid_heads, n_tasks]; NaN where the head was not measured.

    Raises:
        ResultsError: ``prompt_effects`` lacks columns, or ``n_boot`` < 1.
    """
    if n_boot < 1:
        raise ResultsError(f"n_boot={n_boot} draws nothing: pass a positive number of bootstrap replicates")
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n_boot,) + arrays.effect.shape)
    se = np.nan_to_num(arrays.se, nan=0.0)
    draws = arrays.effect[None] + noise * se[None]
    if prompt_effects is None:
        return draws
    require_columns(prompt_effects, PROMPT_EFFECT_COLUMNS, "prompt_effects")
    rows = prompt_effects
    if intervention is not None and "intervention" in rows.columns:
        rows = rows[rows["intervention"] == intervention]
    n_heads = int(arrays.grid["head"].max()) + 1
    for j, task in enumerate(arrays.tasks):
        sub = rows[rows["task"] == task]
        if sub.empty:
            continue
        task_rng = np.random.default_rng([seed, zlib.crc32(str(task).encode())])
        resampled = _prompt_bootstrap(sub, arrays, j, n_heads, n_boot, task_rng)
        # Heads without per-prompt rows for this task keep their normal-approximation draws.
        covered = np.isfinite(resampled).any(axis=0)
        draws[:, covered, j] = resampled[:, covered]
    return draws


def _prompt_bootstrap(sub: pd.DataFrame, arrays: EffectArrays, j: int, n_heads: int, n_boot: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Resampled normalized means of one task, [n_boot, n_grid_heads] (NaN: no prompt rows)."""
    prompts = pd.Index(sorted(sub["prompt"].unique()))
    values = np.full((len(prompts), len(arrays.grid)), np.nan)  # [prompt, head]
    row = prompts.get_indexer(sub["prompt"])
    col = (sub["layer"].to_numpy() * n_heads + sub["head"].to_numpy()).astype(int)
    values[row, col] = sub["effect"].to_numpy(dtype=float)
    measured = np.isfinite(values)
    counts = rng.multinomial(len(prompts), np.full(len(prompts), 1.0 / len(prompts)), size=n_boot).astype(float)
    totals = counts @ np.where(measured, values, 0.0)
    n_used = counts @ measured.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = totals / n_used
        return means / arrays.clean_abs[:, j][None]
