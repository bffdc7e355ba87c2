"""Faithfulness curves for one batch: the circuits of each ranking, and random ones, evaluated exactly.

For every ranking (a name and a score per edge) and every size of the grid, the circuit keeping
the top ``floor(fraction * n_edges)`` edges is evaluated with path patching, every other edge
ablated (:func:`~cortexmap.circuits.patching.circuit_metric`); ``n_random`` seeded random
rankings give the baseline (``method="random"``, ``draw`` 0, 1, ...). The result is the curve
table of :mod:`~cortexmap.circuits.faithfulness` (one row per prompt and circuit, prompts named by
the batch's ``indices``), so several batches of a task concatenate into one table before
:func:`~cortexmap.circuits.faithfulness.summarize_curves`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from cortexmap.circuits.faithfulness import MIB_FRACTIONS, circuit_sizes, prefix_masks, random_orders, rank_edges
from cortexmap.circuits.patching import PathPatcher
from cortexmap.errors import CortexmapError
from cortexmap.tasks.core import EncodedBatch


def faithfulness_curves(handle: Any, batch: EncodedBatch, scores: Mapping[str, np.ndarray], *,
                        fractions: Sequence[float] = MIB_FRACTIONS, absolute: bool = True, n_random: int = 1,
                        seed: int = 0, ablation: str = "corrupt", rows_per_pass: int = 64,
                        progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Per-prompt metrics of every ranking's circuits over the size grid, with random baselines.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of a supported architecture.
        batch: prompts of one token length.
        scores: method name -> ``[n_edges]`` scores in the graph's edge order (e.g. the ``score``
            column of :func:`~cortexmap.circuits.attribution.attribute_edges`).
        fractions: circuit sizes as fractions of edges, increasing (MIB's grid by default).
        absolute: rank by ``|score|`` (True) or by signed score, highest first.
        n_random: random rankings to evaluate (seeded by ``seed``).
        seed: seed of the random rankings.
        ablation: ``"corrupt"`` or ``"mean"``: what edges outside a circuit carry.
        rows_per_pass: prompt rows per forward pass.
        progress: called with (circuits done, circuits in all) after each ranking.

    Returns:
        The curve table: ``method, draw, fraction, n_edges, prompt, metric`` (plus the ``full``
        and ``empty`` reference rows) and ``ablation``.
    """
    patcher = PathPatcher(handle, batch, ablation)
    n_edges = patcher.graph.n_edges
    sizes = circuit_sizes(n_edges, fractions)
    orders = [(name, 0, rank_edges(np.asarray(values), absolute)) for name, values in scores.items()]
    orders += [("random", draw, order) for draw, order in enumerate(random_orders(n_edges, n_random, seed))]
    prompts = list(batch.indices)
    frames = []

    def rows(method: str, draw: int, fraction: float, size: int, metric: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"method": method, "draw": draw, "fraction": fraction, "n_edges": size,
                             "prompt": prompts, "metric": metric})

    empty = patcher.circuits([np.zeros(n_edges, dtype=bool)])[0]
    frames += [rows("full", 0, 1.0, n_edges, patcher.clean_metric), rows("empty", 0, 0.0, 0, empty)]
    total = len(orders) * len(sizes)
    for done, (method, draw, order) in enumerate(orders, 1):
        if len(order) != n_edges:
            raise CortexmapError(f"{method} has {len(order)} scores for a graph of {n_edges} edges; score every edge")
        metrics = patcher.circuits(list(prefix_masks(order, sizes, n_edges)), rows_per_pass)
        frames += [rows(method, draw, float(f), int(n), m) for f, n, m in zip(fractions, sizes, metrics)]
        if progress:
            progress(done * len(sizes), total)
    out = pd.concat(frames, ignore_index=True)
    out["ablation"] = ablation
    return out
