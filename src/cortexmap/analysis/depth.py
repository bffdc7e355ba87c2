"""Where in depth a task (or a level) keeps its important heads.

Conventions:

* A task's **layer distribution** ``p_t(l)`` is the importance of its *important* heads (see
  :mod:`cortexmap.analysis.selection`) summed per layer and divided by the task's total, so every
  task sums to 1 whatever the size of its effects. A task with no important head has no
  distribution (NaN row) and is left out of every average.
* A level's distribution is the plain mean of its tasks' distributions: each task weighs the same.
* **Mean depth** is ``sum_l p(l) * rel_depth(l)`` with ``rel_depth = layer / (n_layers - 1)``.
* **Intervals** resample both the effects (:mod:`cortexmap.analysis.resampling`) and each task's
  important heads (:func:`head_resample_counts`); the set of important cells itself is held at its
  observed value, since re-thresholding noisy replicates would let noise heads in.

The array functions broadcast over leading axes so bootstrap replicates and permutations run as
one array operation.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cortexmap.analysis.selection import IMPORTANT_Z, effect_arrays, important_weights, select_effects


def layer_onehot(layers: np.ndarray, n_layers: int) -> np.ndarray:
    """[n_heads_in_grid, n_layers] indicator of each head's layer."""
    return (np.asarray(layers)[:, None] == np.arange(n_layers)[None, :]).astype(float)


def layer_mass(weights: np.ndarray, layers: np.ndarray, n_layers: int) -> np.ndarray:
    """Sum head weights per layer: [..., heads, tasks] -> [..., tasks, layers]."""
    return np.einsum("...ht,hl->...tl", weights, layer_onehot(layers, n_layers))


def normalize_mass(mass: np.ndarray) -> np.ndarray:
    """Divide each row (last axis) by its total; rows with no mass become NaN."""
    total = mass.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, mass / np.where(total > 0, total, 1.0), np.nan)


def group_mean(dist: np.ndarray, labels: list[str], groups: list[str]) -> np.ndarray:
    """Mean of task rows per group, ignoring NaN rows: [..., tasks, L] -> [..., groups, L]."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a group without evaluable tasks is NaN
        for group in groups:
            idx = [i for i, lab in enumerate(labels) if lab == group]
            out.append(np.nanmean(dist[..., idx, :], axis=-2))
    return np.stack(out, axis=-2)


def head_resample_counts(mask: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap multiplicities of each task's important heads: [heads, tasks] -> [n_boot, heads, tasks].

    Each task's important heads are drawn with replacement (as many as it has), so intervals
    reflect that a task's circuit is known only through a handful of heads.
    """
    counts = np.zeros((n_boot,) + mask.shape)
    for j in range(mask.shape[1]):
        idx = np.flatnonzero(mask[:, j])
        if len(idx):
            counts[:, idx, j] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
    return counts


def mean_depth(dist: np.ndarray, rel_depth: np.ndarray) -> np.ndarray:
    """Expected relative depth of each distribution row: [..., rows, L] -> [..., rows]."""
    return dist @ rel_depth


def layer_distribution(
    effects: pd.DataFrame,
    n_layers: int,
    n_heads: int,
    *,
    intervention: str | None = None,
    method: str | None = None,
    z_crit: float = IMPORTANT_Z,
    min_importance: float = 0.0,
) -> pd.DataFrame:
    """Per task and layer, the importance mass of the task's important heads.

    Args:
        effects: effects table of one model.
        n_layers: layers of the model.
        n_heads: heads per layer.
        intervention: see :func:`~cortexmap.analysis.selection.select_effects`.
        method: see :func:`~cortexmap.analysis.selection.select_effects`.
        z_crit: significance rule for "important".
        min_importance: smallest importance that counts.

    Returns:
        Long DataFrame (task, level, layer, rel_depth, n_important, mass, share); ``share`` is the
        task's layer distribution (NaN for a task without important heads).
    """
    selected = select_effects(effects, intervention=intervention, method=method)
    arrays = effect_arrays(selected, n_layers, n_heads)
    weights = important_weights(arrays.effect, arrays.se, z_crit=z_crit, min_importance=min_importance)
    layers = arrays.grid["layer"].to_numpy()
    mass = layer_mass(weights, layers, n_layers)  # [tasks, layers]
    counts = layer_mass((weights > 0).astype(float), layers, n_layers)
    share = normalize_mass(mass)
    rel = arrays.grid.groupby("layer")["rel_depth"].first().to_numpy()
    rows = [
        {"task": task, "level": level, "layer": lay, "rel_depth": float(rel[lay]),
         "n_important": int(counts[j, lay]), "mass": float(mass[j, lay]), "share": float(share[j, lay])}
        for j, (task, level) in enumerate(zip(arrays.tasks, arrays.levels))
        for lay in range(n_layers)
    ]
    return pd.DataFrame(rows)
