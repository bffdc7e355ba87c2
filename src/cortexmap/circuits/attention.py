"""Path patching into one head's query and key, with that head's attention as the metric.

The receiver is query head ``h`` of layer ``l``; it attends with its own query input (edge
``s -> L{l}H{h}.q``) and with the key input of its KV group ``g`` (edge ``s -> L{l}KV{g}.k``;
under grouped-query attention the group's other heads read that key too, but only head ``h``'s
attention is measured). Its value input does not change where it attends, so it is left out.

* **Query side** of sender ``s``: the path-patching effect of the edge ``s -> q``: the receiver's
  query reads ``resid + (source_s - clean_s)`` (at every position; only the query position's row
  is measured), its keys and everything else stay clean.
* **Key side**: the same for the edge ``s -> k``: the group's keys at every position read the
  edited residual, the query stays clean.
* The **source** is the corrupt prompts' run or the batch mean, as in
  :mod:`~cortexmap.circuits.patching`; an effect is ``metric(patched) - metric(clean)`` per prompt.
* The **metric** is a function of head ``h``'s attention row at the query position,
  ``A [keys]``, as the model's own eager attention computes it (rotary, scaling, soft-capping,
  sliding windows and GQA as the model defines them): the weight on a set of key positions,
  ``sum_{k in K} A[k]`` (``"weight"``), or its log (``"log-weight"``); with a contrast set
  ``C`` the difference ``m(K) - m(C)``. The log-weight difference is exactly the difference of
  pre-softmax scores (the softmax normalizer cancels) when ``K`` and ``C`` are single positions.
* The **screen** is EAP on that metric: ``(source_s - clean_s) . dM / d input_r`` at the clean
  run, for the same edges, from the gradient of the same attention call
  (:class:`~cortexmap.circuits.attribution.ScoringPass`). It is an estimate.

Exact and cheap. A single edge into one receiver changes nothing upstream of it, so every
variant is measured by re-running only layer ``l``'s attention norm and attention module on the
clean residual, with that receiver's slice of the projection replaced
(:class:`~cortexmap.circuits.rewire.RewiredPass` on a frozen ``source - clean`` store): the
attention module is called again with the keyword arguments the model gave it in the clean run
(position embeddings, mask), tiled over the variants. Tensors of two or more dimensions whose
first axis is the batch are tiled; others broadcast.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from cortexmap.circuits.attribution import ScoringPass, _no_parameter_grads
from cortexmap.circuits.graph import Edge, Graph
from cortexmap.circuits.layout import Layout, circuit_layout
from cortexmap.circuits.rewire import RewiredPass, replace_hidden
from cortexmap.circuits.senders import (
    difference_store,
    hidden_arg,
    record_contributions,
    source_contributions,
)
from cortexmap.errors import CortexmapError, InterventionError
from cortexmap.heads import HeadId
from cortexmap.models.hooks import eager_attention
from cortexmap.tasks.core import EncodedBatch

METRICS: tuple[str, ...] = ("weight", "log-weight")
SIDES: tuple[str, ...] = ("query", "key")


def side_edges(graph: Graph, head: HeadId) -> dict[str, list[Edge]]:
    """The edges into ``head``'s query and into its KV group's key, per side, in sender order."""
    group = head.head // (graph.n_heads // graph.n_kv_heads)
    query, key = str(head), f"L{head.layer}KV{group}"  # on sandwich graphs the senders are emb, A{l}, M{l}
    return {"query": [e for e in graph.edges if e.receiver == query and e.kind == "q"],
            "key": [e for e in graph.edges if e.receiver == key and e.kind == "k"]}


def attention_metric(rows: torch.Tensor, key: torch.Tensor, contrast: torch.Tensor | None,
                     metric: str = "weight") -> torch.Tensor:
    """The metric of attention rows (see the module docstring).

    Args:
        rows: ``[n, seq]`` attention weights of the query position over the keys.
        key: ``[n, seq]`` bool, the key positions whose weight is measured.
        contrast: ``[n, seq]`` bool positions subtracted, or None.
        metric: ``"weight"`` or ``"log-weight"``.

    Returns:
        ``[n]`` float32.
    """
    rows = rows.float()

    def measure(mask: torch.Tensor) -> torch.Tensor:
        total = (rows * mask.to(rows.dtype)).sum(-1)
        return total.log() if metric == "log-weight" else total

    out = measure(key)
    return out if contrast is None else out - measure(contrast)


class _FrozenPass(RewiredPass):
    """A :class:`RewiredPass` on a frozen store whose pairs weight few senders each (single edges).

    ``_delta`` adds a store chunk only to the pairs that weight one of its senders, instead of
    every pair: the same sum, without ``[pairs, batch, seq * d]`` products of zeros per chunk.
    """

    def _delta(self, w: torch.Tensor, groups: torch.Tensor, upstream: tuple[int, ...]) -> torch.Tensor | None:
        total = None
        for start, n, chunk in self._store(upstream):
            wc = w[:, start:start + n].to(chunk.dtype)  # [P, n]
            pairs = wc.any(1).nonzero().flatten()
            if not len(pairs):
                continue
            if total is None:
                total = chunk.new_zeros(len(w), self.batch, chunk.shape[-1])
            total[pairs] += (wc[pairs] @ chunk.reshape(n, -1)).reshape(len(pairs), self.batch, -1)
        return total


def _tile(value: Any, batch: int, k: int) -> Any:
    """``value`` with every tensor of ``ndim >= 2`` whose first axis is the batch repeated ``k`` times."""
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == batch and k > 1:
            return value.repeat(k, *[1] * (value.dim() - 1))
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_tile(v, batch, k) for v in value)
    return value


class HeadPatcher:
    """A batch's clean and source runs, recorded once, for patching edges into one head's query and key.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of a supported architecture.
        batch: prompts of one token length (``corrupt_ids`` needed for ``ablation="corrupt"``).
        head: the receiving query head.
        ablation: ``"corrupt"`` or ``"mean"``: what a patched edge carries.
        query: the query position (negative: from the end).
        layout: the model's layout, if already resolved.

    Attributes:
        clean_rows: ``[batch, seq]`` the head's clean attention row at the query position.

    Raises:
        UnsupportedArchitectureError: see :mod:`cortexmap.circuits.layout`.
        InterventionError: an unknown ablation, or corrupt ablation without corrupt prompts.
        CortexmapError: a query position outside the prompts, or a model without attention weights.
    """

    def __init__(self, handle: Any, batch: EncodedBatch, head: HeadId, ablation: str = "corrupt", query: int = -1,
                 layout: Layout | None = None) -> None:
        if ablation not in ("corrupt", "mean"):
            raise InterventionError(f"unknown ablation {ablation!r}: use corrupt or mean")
        self.layout = layout or circuit_layout(handle)
        self.handle, self.head, self.graph = handle, head, self.layout.graph
        self.block = self.layout.blocks[head.layer]
        self.attn = handle.attention(head.layer)
        ids = batch.input_ids.to(handle.device)
        self.batch, self.seq = ids.shape
        self.query = query + self.seq if query < 0 else query
        if not 0 <= self.query < self.seq:
            raise CortexmapError(f"query position {query} lies outside prompts of {self.seq} tokens; "
                                 f"give -{self.seq}..{self.seq - 1}")
        found: dict[str, Any] = {}

        def norm_in(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            found["x"] = hidden_arg(args, kwargs).detach().clone()  # [batch, seq, d_model]

        def attn_in(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            found["args"], found["kwargs"] = args, kwargs

        hooks = [self.block.attn_norm.register_forward_pre_hook(norm_in, with_kwargs=True),
                 self.attn.register_forward_pre_hook(attn_in, with_kwargs=True)]
        try:
            with eager_attention(handle.model):  # the mask the model builds for eager attention is recorded
                clean = record_contributions(self.layout, ids)
        finally:
            for h in hooks:
                h.remove()
        self.x, self.args, self.kwargs = found["x"], found["args"], found["kwargs"]
        corrupt = None if batch.corrupt_ids is None else batch.corrupt_ids.to(handle.device)
        self.source = source_contributions(self.layout, ids, corrupt, ablation, clean)
        self.store = difference_store(self.layout, self.source, clean)  # passes read the senders before the layer
        self.compact = difference_store(self.layout, self.source, clean, compact=True)
        self.clean_rows = self.rows(np.zeros((1, self.graph.n_edges), dtype=bool))[0]

    def _attention(self, normed: torch.Tensor, k: int) -> torch.Tensor:
        """Call the layer's attention on ``normed [k * batch, seq, d]``; the head's rows ``[k * batch, seq]``."""
        args = _tile(self.args, self.batch, k)
        kwargs = {name: _tile(v, self.batch, k) for name, v in self.kwargs.items()}
        args, kwargs = replace_hidden(args, kwargs, normed)
        with eager_attention(self.handle.model):
            out = self.attn(*args, **kwargs)
        weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if weights is None:  # [k * batch, n_heads, seq, seq] below
            raise CortexmapError(f"layer {self.head.layer} of {self.handle.spec} returned no attention weights; "
                                 "explaining attention needs a model with eager attention")
        return weights[:, self.head.head, self.query]

    @torch.no_grad()
    def rows(self, patched: np.ndarray) -> torch.Tensor:
        """The head's attention rows ``[k, batch, seq]`` with ``patched [k, n_edges]`` (bool) edges patched per group.

        Only edges into this layer's attention take effect (nothing else is re-run).
        """
        k = len(patched)
        weights = torch.as_tensor(np.asarray(patched, dtype=np.float32), device=self.x.device)
        rewired = _FrozenPass(self.layout, self.source, weights, frozen=self.store)
        rewired.batch, rewired.seq = self.batch, self.seq
        hooks = rewired._attention_hooks(self.head.layer, self.block)
        try:
            normed = self.block.attn_norm(self.x.repeat(k, 1, 1))
            return self._attention(normed, k).reshape(k, self.batch, self.seq)
        finally:
            for h in hooks:
                h.remove()
            rewired.release()

    def effects(self, edges: list[Edge], measure: Callable[[torch.Tensor], torch.Tensor],
                joint: list[list[Edge]] = (), rows_per_pass: int = 512) -> np.ndarray:
        """Exact effects ``[batch, n]`` of patching each edge alone, then each set of ``joint`` together.

        Args:
            edges: edges into this head's query or its group's key.
            measure: attention rows ``[n, seq]`` -> metric ``[n]`` (rows tiled per batch).
            joint: sets of edges patched at once (e.g. a whole side), after the single edges.
            rows_per_pass: prompt rows per attention call.
        """
        masks = np.zeros((len(edges) + len(joint), self.graph.n_edges), dtype=bool)
        masks[np.arange(len(edges)), self.graph.index(edges)] = True
        for i, group in enumerate(joint):
            masks[len(edges) + i, self.graph.index(group)] = True
        clean = measure(self.clean_rows)
        k = max(1, rows_per_pass // self.batch)
        # joint sets in a pass of their own: a pass sums every store chunk any of its groups weights
        starts = [*range(0, len(edges), k), *range(len(edges), len(masks), k)]
        ends = [*starts[1:], len(masks)]
        out = np.empty((self.batch, len(masks)))
        for start, end in zip(starts, ends):
            rows = self.rows(masks[start:min(end, start + k)])  # [k', batch, seq]
            values = measure(rows.reshape(-1, self.seq)).reshape(-1, self.batch) - clean
            out[:, start:start + len(rows)] = values.T.cpu().numpy()
        return out

    def eap(self, edges: list[Edge], measure: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        """EAP scores ``[batch, n]`` of ``edges``: ``(source - clean) . dM/d input`` at the clean run."""
        scores = torch.zeros(self.batch, self.graph.n_edges, dtype=torch.float32, device=self.x.device)
        scoring = ScoringPass(self.layout, self.source, 0.0, scores, frozen=self.compact)
        scoring.batch, scoring.seq = self.batch, self.seq
        hooks = scoring._attention_hooks(self.head.layer, self.block)
        try:
            with _no_parameter_grads(self.handle.model), torch.enable_grad():
                normed = self.block.attn_norm(self.x.detach().requires_grad_(True))
                measure(self._attention(normed, 1)).sum().backward()
        finally:
            for h in hooks:
                h.remove()
            scoring.release()  # drops its store and inputs; what the tensor hooks' cycles still hold is small
        return scores[:, self.graph.index(edges)].cpu().numpy()
