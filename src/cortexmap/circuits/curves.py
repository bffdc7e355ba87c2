"""Faithfulness curves for one batch: the circuits of each ranking, and random ones, evaluated exactly.

For every ranking (a name and a score per edge), every order asked for (``"absolute"``: by
``|score|``; ``"signed"``: by ``sign * score``, highest first; MIB ranks CPR's circuits signed,
in its own sign) and every size of the grid, the circuit keeping the top ``floor(fraction *
n_edges)`` edges is evaluated with path patching, every other edge ablated
(:func:`~cortexmap.circuits.patching.circuit_metric`); ``n_random`` seeded random rankings give the
baseline (``method="random"``, ``order="random"``, ``draw`` 0, 1, ...). A circuit whose edge set
was already evaluated in the call (two orders or rankings agreeing at a size) is not run again. The result is the curve
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
                        fractions: Sequence[float] = MIB_FRACTIONS, orders: Sequence[str] = ("absolute",),
                        sign: float = 1.0, n_random: int = 1,
                        seed: int = 0, ablation: str = "corrupt", rows_per_pass: int = 1,
                        progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Per-prompt metrics of every ranking's circuits over the size grid, with random baselines.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of a supported architecture.
        batch: prompts of one token length.
        scores: method name -> ``[n_edges]`` scores in the graph's edge order (e.g. the ``score``
            column of :func:`~cortexmap.circuits.attribution.attribute_edges`).
        fractions: circuit sizes as fractions of edges, increasing (MIB's grid by default).
        orders: ``"absolute"`` (rank by ``|score|``) and / or ``"signed"`` (by ``sign * score``,
            highest first): each gives every ranking a curve of its own.
        sign: the factor turning scores into the signed order's (MIB: -1, see
            :mod:`~cortexmap.circuits.protocol`).
        n_random: random rankings to evaluate (seeded by ``seed``).
        seed: seed of the random rankings.
        ablation: ``"corrupt"`` or ``"mean"``: what edges outside a circuit carry.
        rows_per_pass: prompt rows per forward pass (default: one circuit per pass; on a CPU,
            SmolLM2-135M, packing two circuits into one pass took 15 s of CPU time per circuit
            against 8 s one at a time).
        progress: called with (circuits done, circuits in all) after each ranking.

    Returns:
        The curve table: ``method, order, draw, fraction, n_edges, prompt, metric`` (plus the
        ``full`` and ``empty`` reference rows, order ``""``) and ``ablation``.

    Raises:
        CortexmapError: an unknown order, or a ranking without a score for every edge.
    """
    patcher = PathPatcher(handle, batch, ablation)
    n_edges = patcher.graph.n_edges
    sizes = circuit_sizes(n_edges, fractions)
    unknown = set(orders) - {"absolute", "signed"}
    if unknown or not orders:
        raise CortexmapError(f"unknown ranking order(s) {sorted(unknown) or list(orders)}: use absolute and/or signed")
    rankings = []
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        if len(values) != n_edges:
            raise CortexmapError(f"{name} has {len(values)} scores for a graph of {n_edges} edges; score every edge")
        rankings += [(name, o, 0, rank_edges(values if o == "absolute" else sign * values, o == "absolute"))
                     for o in orders]
    rankings += [("random", "random", d, order) for d, order in enumerate(random_orders(n_edges, n_random, seed))]
    prompts = list(batch.indices)
    frames = []

    def rows(method: str, order: str, draw: int, fraction: float, size: int, metric: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"method": method, "order": order, "draw": draw, "fraction": fraction, "n_edges": size,
                             "prompt": prompts, "metric": metric})

    empty = patcher.circuits([np.zeros(n_edges, dtype=bool)])[0]
    frames += [rows("full", "", 0, 1.0, n_edges, patcher.clean_metric), rows("empty", "", 0, 0.0, 0, empty)]
    seen: dict[bytes, np.ndarray] = {}
    total = len(rankings) * len(sizes)
    for done, (method, order_name, draw, order) in enumerate(rankings, 1):
        masks = prefix_masks(order, sizes, n_edges)
        keys = [np.packbits(m).tobytes() for m in masks]
        new = [i for i, k in enumerate(keys) if k not in seen]
        for i, metric in zip(new, patcher.circuits([masks[i] for i in new], rows_per_pass)):
            seen[keys[i]] = metric
        frames += [rows(method, order_name, draw, float(f), int(n), seen[k]) for f, n, k in zip(fractions, sizes, keys)]
        if progress:
            progress(done * len(sizes), total)
    out = pd.concat(frames, ignore_index=True)
    out["ablation"] = ablation
    return out
