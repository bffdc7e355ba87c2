"""Edge attribution patching (EAP) and EAP with integrated gradients (EAP-IG): estimates of every edge's effect.

Each estimates the exact path-patching effect ``M(e patched) - M(clean)`` of
:mod:`~cortexmap.circuits.patching` for all edges at once. Write ``M(w)`` for the metric when
every edge ``e = s -> r`` has weight ``w_e`` (receiver ``r`` reads ``resid_r + sum_s w_e
(source_s - current_s)``, :mod:`~cortexmap.circuits.rewire`); then ``dM/dw_e = (source_s -
current_s) . dM/d input_r``, a dot product over positions and ``d_model``.

* **EAP** (Syed et al. 2023): the first-order term at the clean run, ``score_e = (source_s -
  clean_s) . dM/d input_r`` at ``w = 0``: one source forward (recorded) and one clean forward +
  backward.
* **EAP-IG along the edges** (``"eap-ig-edges"``, cortexmap's variant): integrated gradients
  along ``w = alpha * 1``, i.e. every edge patched with weight ``alpha``, so that each receiver's
  input moves on the straight line from its value in the pass toward the source's (``(1 - alpha)
  resid_r + alpha source_resid_r``): ``score_e = (1/steps) sum_j (source_s - current_s(alpha_j)) .
  dM/d input_r(alpha_j)`` at the midpoints ``alpha_j = (j + 1/2) / steps``. These scores are
  complete: they sum to ``M(source) - M(clean)`` up to the quadrature error, which shrinks as
  ``1 / steps**2``. ``steps`` forward + backward passes; any ablation.
* **EAP-IG** (``"eap-ig"``, Hanna et al. 2024; MIB's "EAP-IG-inputs", the EAP-IG of its
  leaderboard): the gradients are taken on runs whose *input embeddings* are interpolated,
  ``corrupt + (k / steps) (clean - corrupt)`` for ``k = 0 .. steps - 1`` (the points of
  ``get_scores_eap_ig`` in hannamw/EAP-IG ``src/eap/attribute.py``: corrupt end included, clean
  end not), averaged and multiplied by the clean run's differences ``source_s - clean_s``.
  Corrupt ablation only (it needs corrupt embeddings); not complete. MIB's default is 5 steps
  (``--ig-steps`` of MIB-circuit-track ``run_attribution.py``). MIB's "EAP-IG-activations" (one
  layer's outputs interpolated at a time) is not provided.

Scores are per prompt (the metric of row ``i`` depends only on row ``i``), estimating
``patched - clean``: negative where an edge carries the clean answer. They are estimates, labelled
``method`` wherever they go; :func:`~cortexmap.circuits.patching.edge_effects` verifies the top ones.

How the per-receiver gradients are had without per-receiver copies. On every path above all
attention receivers of a layer read the same input ``x`` (every edge has the same weight), so
the pass runs with one copy, as the model does. ``dM/d input_r`` for query head ``h`` is the
vector-Jacobian product of ``x -> q_proj(attn_norm(x))`` at ``x`` with the gradient at the
projection output *restricted to head h's columns*; likewise for KV group ``g`` and the k or v
projection (a fused q/k/v projection: its columns of the fused output). A backward hook on each
projection output re-runs that norm and projection (the model's modules, on a detached ``x``)
and takes all of its receivers' slices at once as one batched VJP (``is_grads_batched``).
``A{l}`` (sandwich), MLP and logits receivers are one per input: a hook on the norm's input gives
their gradient directly. Each gradient is contracted with the store of
``source - current`` differences (:mod:`~cortexmap.circuits.senders`) at once and dropped.

Memory: one forward + backward at the batch size (parameters get no gradients), plus a compact
store: each layer's head senders keep their ``source - current`` *z* differences (``batch x seq
x H x d_head``, one residual-sized tensor per layer where residual-space chunks would take
``H``), projected to residual space one layer's chunk at a time when a receiver's gradient is
contracted with them; at any moment one layer's ``max(H, G)`` receiver gradients; no per-edge
graph, no copies of the inputs. Only the ``[batch, n_edges]`` scores accumulate. The price is
compute: every contraction re-projects the upstream head chunks (``O(n_layers^2)`` small matmuls
per pass).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch

from cortexmap.circuits.graph import ReceiverBlock
from cortexmap.circuits.layout import Layout, Projection, circuit_layout
from cortexmap.circuits.rewire import RewiredPass, replace_hidden
from cortexmap.circuits.senders import (
    Contributions,
    difference_store,
    head_chunk,
    hidden_arg,
    record_contributions,
    source_contributions,
)
from cortexmap.errors import CortexmapError
from cortexmap.tasks.core import EncodedBatch

METHODS: tuple[str, ...] = ("eap", "eap-ig", "eap-ig-edges")


class ScoringPass(RewiredPass):
    """A differentiable pass at ``w = alpha * 1`` whose backward adds every edge's score to ``scores``.

    Args:
        layout: the model's hook points and graph.
        source: the source run's contributions.
        alpha: the weight of every edge (0: the clean run, EAP).
        scores: ``[batch, n_edges]`` float32 accumulator.
        scale: factor on what the backward pass adds (``1 / steps`` for EAP-IG).
        frozen: fixed ``source - clean`` differences to score with (EAP-IG-inputs), with ``alpha = 0``.
        embeddings: the first block's input to run on instead of the model's (EAP-IG-inputs).
    """

    grad_enabled = True

    def __init__(self, layout: Layout, source: Contributions, alpha: float, scores: torch.Tensor,
                 scale: float = 1.0, *, frozen: list[torch.Tensor] | None = None,
                 embeddings: torch.Tensor | None = None) -> None:
        super().__init__(layout, source, frozen=frozen)
        self.embeddings = embeddings
        self.alpha, self.scores, self.scale = alpha, scores, scale
        self.attn_in: dict[int, torch.Tensor] = {}
        self._sum: torch.Tensor | None = None
        self._summed = 0  # store chunks in self._sum

    def release(self) -> None:
        super().release()
        self.attn_in.clear()
        self._sum = None

    def _uniform_delta(self, upstream: tuple[int, ...]) -> torch.Tensor | None:
        """``alpha * sum_s (source_s - current_s)`` over the sender groups ``upstream``: ``[1, batch, x]`` (None at 0).

        The residual receivers' upstream sets are prefixes of the logits' (every residual sender,
        in writing order) and receivers come in that order, so a running sum over the store serves
        them all (``O(n_senders)`` adds in all). A sandwich layer's ``A{l}`` reads its heads only:
        summed on its own.
        """
        if self.alpha == 0.0:
            return None
        order = self.graph.block("logits").groups
        if upstream != order[:len(upstream)] or self._summed > len(upstream):
            total = sum(self._chunk_total(c, self.chunks[c]) for c in upstream)
            return self.alpha * total.unsqueeze(0)
        while self._summed < len(upstream):
            c = order[self._summed]
            part = self._chunk_total(c, self.chunks[c])  # [batch, x]
            self._sum = part if self._sum is None else self._sum + part
            self._summed += 1
        return self.alpha * self._sum.unsqueeze(0)

    # ---- a compact store: head senders keep their z differences, projected when read ----------
    def _z_hook(self, layer: int) -> Callable[[torch.Tensor], None]:
        def hook(z: torch.Tensor) -> None:  # [batch, seq, n_heads, d_head] (one group: no weights)
            self.chunks.append(self.source.z[layer] - z)

        return hook

    def _chunk_total(self, c: int, chunk: torch.Tensor) -> torch.Tensor:
        """Store chunk ``c`` summed over its senders, ``[batch, x]`` (a head chunk: the heads' joint write)."""
        if chunk.dim() == 3:
            return chunk.sum(0)
        weight = self.layout.out_weight(self.graph.sender_groups[c].layer).to(chunk.dtype)
        return torch.einsum("bshd,Dhd->bsD", chunk, weight).reshape(chunk.shape[0], -1)

    def _store(self, upstream: tuple[int, ...]) -> Iterator[tuple[int, int, torch.Tensor]]:  # type: ignore[override]
        """The store's chunks of sender groups ``upstream``, head chunks projected to residual space one at a time."""
        chunks = self.frozen if self.frozen is not None else self.chunks
        column = 0
        for c in upstream:
            chunk, n = chunks[c], self.graph.sender_groups[c].count
            if chunk.dim() == 4:
                with torch.no_grad():
                    chunk = head_chunk(self.layout, self.graph.sender_groups[c].layer, chunk.detach())
            yield column, n, chunk
            column += n

    def _register(self) -> list[Any]:
        hooks = super()._register()
        if self.frozen is not None:  # no live store: the input still becomes the leaf
            hooks.append(self.layout.first_block.register_forward_pre_hook(self._input_hook, with_kwargs=True))
        return hooks

    def _input_hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden = hidden_arg(args, kwargs) if self.embeddings is None else self.embeddings
        return replace_hidden(args, kwargs, hidden.detach().requires_grad_(True))

    def _attention_hooks(self, layer: int, block: Any) -> list[Any]:
        hooks = [block.attn_norm.register_forward_pre_hook(self._attn_input_hook(layer), with_kwargs=True)]
        for proj in self.layout.projections(layer):
            hooks.append(proj.module.register_forward_hook(self._proj_grad_hook(layer, proj, block.attn_norm)))
        return hooks

    def _attn_input_hook(self, layer: int) -> Callable[..., Any]:
        upstream = self.graph.block("attention", layer).groups

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if self._inner:
                return None
            x = hidden_arg(args, kwargs)
            delta = self._uniform_delta(upstream)
            self.attn_in[layer] = x if delta is None else x + delta.reshape(x.shape)
            return None if delta is None else replace_hidden(args, kwargs, self.attn_in[layer])

        return hook

    def _proj_grad_hook(self, layer: int, proj: Projection, norm: Any) -> Callable[..., None]:
        block, n = self.graph.block("attention", layer), len(proj.columns)

        def on_grad(grad: torch.Tensor) -> None:  # [batch, seq, width]: dM / d projection output
            x = self.attn_in[layer].detach().requires_grad_(True)
            with torch.enable_grad():
                y = self._call(proj.module, self._call(norm, x))
            mask = torch.zeros(n, grad.shape[-1], dtype=grad.dtype, device=grad.device)
            mask.scatter_(1, proj.columns.to(grad.device), 1.0)  # row r: receiver r's columns
            slots = grad.unsqueeze(0) * mask.reshape(n, *[1] * (grad.dim() - 1), -1)
            per_receiver, = torch.autograd.grad(y, x, slots, is_grads_batched=True)
            self._contract(block, proj.lo, per_receiver.reshape(n, self.batch, -1))

        def hook(module: Any, args: tuple[Any, ...], out: torch.Tensor) -> None:
            if not self._inner:
                out.register_hook(on_grad)

        return hook

    def _single_hook(self, block: ReceiverBlock) -> Callable[..., Any]:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if self._inner:
                return None
            x = hidden_arg(args, kwargs)
            delta = self._uniform_delta(block.groups)
            new = x.clone() if delta is None else x + delta.reshape(x.shape)  # this receiver's own input
            new.register_hook(lambda grad: self._contract(block, 0, grad.reshape(1, self.batch, -1)))
            return replace_hidden(args, kwargs, new)

        return hook

    def _contract(self, block: ReceiverBlock, lo: int, grad: torch.Tensor) -> None:
        """``scores[:, edges into block's receivers lo..] += scale * <store, grad>``; ``grad [n, batch, seq * d]``."""
        target = self.scores[:, block.edges].view(self.batch, len(block.receivers), block.n_up)[:, lo:lo + len(grad)]
        grad = grad.float()
        for start, count, chunk in self._store(block.groups):
            target[:, :, start:start + count] += self.scale * torch.einsum("nbx,rbx->brn", chunk.detach().float(), grad)


@contextmanager
def _no_parameter_grads(model: Any) -> Iterator[None]:
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def edge_scores(handle: Any, batch: EncodedBatch, method: str = "eap-ig", steps: int = 5,
                ablation: str = "corrupt") -> np.ndarray:
    """Per-prompt attribution scores of every edge, ``[batch, n_edges]`` in the graph's edge order.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of a supported architecture.
        batch: prompts of one token length (``corrupt_ids`` needed for corrupt ablation).
        method: ``"eap"``, ``"eap-ig"`` (MIB's EAP-IG-inputs) or ``"eap-ig-edges"``.
        steps: integration points of the EAP-IG methods (ignored by EAP).
        ablation: ``"corrupt"``, ``"mean"`` or ``"zero"``: the source run the scores move toward.

    Returns:
        Estimated ``patched - clean`` metric per prompt and edge (float32).

    Raises:
        CortexmapError: an unknown method, ``steps < 1``, or eap-ig without corrupt ablation.
        UnsupportedArchitectureError: see :mod:`cortexmap.circuits.layout`.
        InterventionError: an unknown ablation, or corrupt ablation without corrupt prompts.
    """
    if method not in METHODS:
        raise CortexmapError(f"unknown attribution method {method!r}: use one of {', '.join(METHODS)}")
    if steps < 1:
        raise CortexmapError(f"EAP-IG needs at least one integration step, got steps={steps}")
    if method == "eap-ig" and ablation != "corrupt":
        raise CortexmapError("eap-ig interpolates corrupt and clean embeddings: it needs ablation='corrupt' "
                             "(eap-ig-edges integrates along the edges and takes any ablation)")
    layout = circuit_layout(handle)
    device = handle.device
    ids = batch.input_ids.to(device)
    corrupt = None if batch.corrupt_ids is None else batch.corrupt_ids.to(device)
    clean = record_contributions(layout, ids) if method == "eap-ig" else None
    source = source_contributions(layout, ids, corrupt, ablation, clean)
    scores = torch.zeros(ids.shape[0], layout.graph.n_edges, dtype=torch.float32, device=device)
    if method == "eap-ig":
        frozen = difference_store(layout, source, clean, compact=True)
        passes = [ScoringPass(layout, source, 0.0, scores, 1.0 / steps, frozen=frozen,
                              embeddings=source.emb + (k / steps) * (clean.emb - source.emb)) for k in range(steps)]
    else:
        alphas = [0.0] if method == "eap" else [(j + 0.5) / steps for j in range(steps)]
        passes = [ScoringPass(layout, source, alpha, scores, 1.0 / len(alphas)) for alpha in alphas]
    with _no_parameter_grads(handle.model):
        for rewired in passes:
            try:
                batch.metric(rewired.run(ids)).sum().backward()  # the task's metric at the last position
            finally:
                rewired.release()
                gc.collect()  # the hooks on the pass's tensors hold it in cycles: free it before the next pass
    return scores.cpu().numpy()


def attribute_edges(handle: Any, batch: EncodedBatch, method: str = "eap-ig", steps: int = 5,
                    ablation: str = "corrupt") -> pd.DataFrame:
    """Attribution scores of every edge as a tidy table.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of a supported architecture.
        batch: prompts of one token length.
        method: ``"eap"``, ``"eap-ig"`` (MIB's EAP-IG-inputs) or ``"eap-ig-edges"``.
        steps: integration points of the EAP-IG methods.
        ablation: ``"corrupt"``, ``"mean"`` or ``"zero"``.

    Returns:
        One row per edge, in the graph's edge order: ``sender, receiver, kind, sender_layer,
        receiver_layer, score`` (mean over prompts of the estimated patched - clean metric),
        ``score_sd`` (its standard deviation over prompts), ``n_prompts``, ``method``, ``steps``
        (1 for EAP) and ``ablation``.
    """
    values = edge_scores(handle, batch, method, steps, ablation)
    out = circuit_layout(handle).graph.frame()
    out["score"] = values.mean(0)
    out["score_sd"] = values.std(0, ddof=1) if len(values) > 1 else np.nan
    out["n_prompts"] = len(values)
    out["method"] = method
    out["steps"] = 1 if method == "eap" else steps
    out["ablation"] = ablation
    return out
