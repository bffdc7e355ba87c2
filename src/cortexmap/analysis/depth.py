"""Where in depth a task (or a level) keeps its important heads.

Conventions:

* A task's **layer distribution** ``p_t(l)`` is the weight of its *important* cells (the view's
  claim rule and weights, :mod:`cortexmap.analysis.view`) summed per layer and divided by the task's
  total, so every task sums to 1 whatever the size of its effects. A task with no important head
  has no distribution (NaN row) and is left out of every average.
* **Mean depth** is ``sum_l p(l) * rel_depth(l)`` with ``rel_depth = layer / (n_layers - 1)``.
* **Intervals** resample both the effects (:mod:`cortexmap.analysis.resampling`) and each task's
  important heads (:func:`head_resample_counts`); the set of important cells itself is held at its
  observed value, since re-thresholding noisy replicates would let noise heads in.

The array functions broadcast over leading axes so bootstrap replicates and permutations run as
one array operation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from cortexmap.analysis.view import RunView



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


def layer_distribution(view: "RunView") -> pd.DataFrame:
    """Per task and layer, the weight of the task's important cells (the view's claim rule and weights).

    Returns:
        Long DataFrame (task, level, layer, rel_depth, n_important, mass, share); ``share`` is the
        task's layer distribution (NaN for a task without important heads).
    """
    layers = view.layers
    mass = layer_mass(view.weight, layers, view.n_layers)  # [tasks, layers]
    counts = layer_mass(view.important.astype(float), layers, view.n_layers)
    share = normalize_mass(mass)
    rel = view.rel_depth
    rows = [
        {"task": task, "level": level, "layer": lay, "rel_depth": float(rel[lay]),
         "n_important": int(counts[j, lay]), "mass": float(mass[j, lay]), "share": float(share[j, lay])}
        for j, (task, level) in enumerate(zip(view.tasks, view.levels))
        for lay in range(view.n_layers)
    ]
    return pd.DataFrame(rows)
