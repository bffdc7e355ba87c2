"""Exact path patching of edges, and circuits judged the MIB way.

Definitions (the pass itself is :class:`~cortexmap.circuits.rewire.RewiredPass`):

* ``patch_edges(E)``: the metric with the edges in ``E`` patched (each carries the source run's
  contribution of its sender: the corrupt prompts', or the batch mean) and every other edge clean.
* ``circuit_metric(kept)``: MIB's convention, circuit = the kept edges and **every other edge
  patched**. Keeping every edge gives the clean model (``m(full)``), keeping none gives the
  source run (``m(empty)``; for corrupt ablation, the corrupt run itself).
* The **effect** of an edge is ``patch_edges({e}) - clean``, per prompt (negative: the edge
  carried part of the clean answer).

The metric is the logit difference ``target - foil`` at the last position, in float32, one value
per prompt (the task battery's metric). Every function takes one equal-length
:class:`~cortexmap.tasks.EncodedBatch`; for a task of several length groups call it per batch
and concatenate the per-prompt arrays (mean ablation averages over the batch it is given).

Cost. A pass is one forward over ``k * batch`` rows plus, per receiver with a weighted edge, one
more call of its norm and projection. Single-edge effects run ``rows_per_pass // batch`` edges per
pass against the clean run's differences (exact: nothing upstream of the one patched receiver
changes); circuits need the pass's own differences, a store of ``n_senders x rows x seq x d_model``,
so they run ``rows_per_pass // batch`` circuits per pass with a smaller default.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from cortexmap.circuits.graph import Edge, Graph
from cortexmap.circuits.layout import circuit_layout
from cortexmap.circuits.rewire import RewiredPass
from cortexmap.circuits.senders import difference_store, record_contributions, source_contributions
from cortexmap.tasks.core import EncodedBatch
from cortexmap.stats import bootstrap_cis


class PathPatcher:
    """A batch's clean and source runs, recorded once, for many patched passes.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of a supported architecture.
        batch: prompts of one token length (``corrupt_ids`` needed for ``ablation="corrupt"``).
        ablation: ``"corrupt"`` (the corrupt prompts' run), ``"mean"`` (the batch mean) or ``"zero"``.

    Raises:
        UnsupportedArchitectureError: the model's heads do not add to the residual stream one by one.
        InterventionError: an unknown ablation, or corrupt ablation without corrupt prompts.
    """

    def __init__(self, handle: Any, batch: EncodedBatch, ablation: str = "corrupt") -> None:
        self.layout = circuit_layout(handle)
        self.graph: Graph = self.layout.graph
        self.ablation = ablation
        device = handle.device
        self.input_ids = batch.input_ids.to(device)
        corrupt = None if batch.corrupt_ids is None else batch.corrupt_ids.to(device)
        self.batch = batch  # its metric: the logit difference, or an answer set's (one-token answers)
        self.clean = record_contributions(self.layout, self.input_ids)
        self.source = source_contributions(self.layout, self.input_ids, corrupt, ablation, self.clean)
        self.clean_metric = self.metric(self.clean.last_logits).cpu().numpy()
        self._frozen: list[torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def metric(self, last_logits: torch.Tensor) -> torch.Tensor:
        """The task's metric per row of ``[k * batch, vocab]`` last-position logits (rows tiled per batch)."""
        return self.batch.metric(last_logits)

    def weights(self, masks: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(masks, dtype=np.float32), device=self.input_ids.device)

    @torch.no_grad()
    def run(self, patched: np.ndarray, *, frozen: bool = False) -> np.ndarray:
        """Metric ``[k, batch]`` of one pass with ``patched [k, n_edges]`` (bool) edges patched per group."""
        store = None
        if frozen:
            if self._frozen is None:
                self._frozen = difference_store(self.layout, self.source, self.clean)
            store = self._frozen
        rewired = RewiredPass(self.layout, self.source, self.weights(patched), frozen=store)
        return self.metric(rewired.run(self.input_ids)).view(len(patched), -1).cpu().numpy()

    def patch(self, edges: Iterable[Edge] | np.ndarray) -> np.ndarray:
        """Metric per prompt with ``edges`` (edges or a boolean mask) patched, everything else clean."""
        return self.run(self.graph.mask(edges)[None])[0]

    def circuits(self, kept: Sequence[Iterable[Edge] | np.ndarray], rows_per_pass: int = 64) -> np.ndarray:
        """Metric ``[n_circuits, batch]`` of circuits, each keeping its edges and patching the rest."""
        masks = np.stack([~self.graph.mask(c) for c in kept]) if len(kept) else np.zeros((0, self.graph.n_edges), bool)
        k = max(1, rows_per_pass // self.batch_size)
        parts = [self.run(masks[i:i + k]) for i in range(0, len(masks), k)]
        return np.concatenate(parts) if parts else np.zeros((0, self.batch_size))

    def edge_effects(self, edges: Iterable[Edge] | np.ndarray | None = None, rows_per_pass: int = 256) -> np.ndarray:
        """Effect ``[batch, n]`` (patched - clean) of patching each edge alone, in the given order.

        Args:
            edges: edges, positions in :attr:`Graph.edges <cortexmap.circuits.graph.Graph.edges>`
                (an integer array), or None for every edge.
            rows_per_pass: prompt rows per pass (edges per pass = ``rows_per_pass // batch``).
        """
        if edges is None:
            index = np.arange(self.graph.n_edges)
        elif isinstance(edges, np.ndarray) and edges.dtype.kind in "iu":
            index = edges.astype(np.int64)
        else:
            index = self.graph.index(edges)
        k = max(1, rows_per_pass // self.batch_size)
        out = np.empty((self.batch_size, len(index)))
        for start in range(0, len(index), k):
            chunk = index[start:start + k]
            onehot = np.zeros((len(chunk), self.graph.n_edges), dtype=bool)
            onehot[np.arange(len(chunk)), chunk] = True
            out[:, start:start + len(chunk)] = self.run(onehot, frozen=True).T
        return out - self.clean_metric[:, None]


def patch_edges(handle: Any, batch: EncodedBatch, edges: Iterable[Edge] | np.ndarray,
                ablation: str = "corrupt") -> np.ndarray:
    """Metric per prompt ``[batch]`` with ``edges`` patched from the ``ablation`` run, every other edge clean."""
    return PathPatcher(handle, batch, ablation).patch(edges)


def circuit_metric(handle: Any, batch: EncodedBatch, edges_kept: Iterable[Edge] | np.ndarray,
                   ablation: str = "corrupt") -> np.ndarray:
    """Metric per prompt ``[batch]`` of the circuit ``edges_kept``: every edge not in it is patched (MIB).

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of a supported architecture.
        batch: prompts of one token length.
        edges_kept: the circuit, as edges or a boolean mask over ``Graph.for_model(handle).edges``.
        ablation: ``"corrupt"``, ``"mean"`` or ``"zero"``: what the edges outside the circuit carry.

    Returns:
        ``[batch]`` float64 logit differences.

    Raises:
        UnsupportedArchitectureError: see :mod:`cortexmap.circuits.layout`.
        InterventionError: an unknown ablation, or corrupt ablation without corrupt prompts.
    """
    return PathPatcher(handle, batch, ablation).circuits([edges_kept])[0]


def circuit_metrics(handle: Any, batch: EncodedBatch, circuits: Sequence[Iterable[Edge] | np.ndarray],
                    ablation: str = "corrupt", rows_per_pass: int = 64) -> np.ndarray:
    """:func:`circuit_metric` of several circuits, ``[n_circuits, batch]``, several per pass."""
    return PathPatcher(handle, batch, ablation).circuits(circuits, rows_per_pass)


def edge_effects(handle: Any, batch: EncodedBatch, edges: Iterable[Edge] | np.ndarray | None = None,
                 ablation: str = "corrupt", rows_per_pass: int = 256, n_boot: int = 1000,
                 seed: int = 0) -> pd.DataFrame:
    """The exact effect of patching each single edge, with bootstrap intervals over prompts.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of a supported architecture.
        batch: prompts of one token length.
        edges: edges (or their integer positions in the graph's edge order); None: every edge.
        ablation: ``"corrupt"``, ``"mean"`` or ``"zero"``.
        rows_per_pass: prompt rows per forward pass.
        n_boot: bootstrap resamples of the prompts for the 95% interval.
        seed: seed of the resampling.

    Returns:
        One row per edge, in the given order: ``sender, receiver, kind, effect`` (mean over prompts of
        patched - clean), ``ci_low, ci_high, n_prompts, clean`` (mean clean metric), ``method``
        (``"exact"``) and ``ablation``.
    """
    patcher = PathPatcher(handle, batch, ablation)
    graph = patcher.graph
    if edges is None:
        index = np.arange(graph.n_edges)
    elif isinstance(edges, np.ndarray) and edges.dtype.kind in "iu":
        index = edges.astype(np.int64)
    else:
        index = graph.index(list(edges))
    effects = patcher.edge_effects(index, rows_per_pass)
    low, high = bootstrap_cis(effects, n_boot=n_boot, seed=seed)
    picked = [graph.edges[i] for i in index]
    return pd.DataFrame({
        "sender": [e.sender for e in picked], "receiver": [e.receiver for e in picked],
        "kind": [e.kind for e in picked], "effect": effects.mean(0), "ci_low": low, "ci_high": high,
        "n_prompts": patcher.batch_size, "clean": float(patcher.clean_metric.mean()),
        "method": "exact", "ablation": ablation,
    })
