"""One forward pass in which chosen edges carry a source run's contribution: the core of path patching.

Semantics (MIB's, and the usual definition of an edge intervention). The model runs on the clean
prompts, and receiver ``r`` reads::

    input_r = resid_r + sum_s w[s -> r] * (source_s - current_s)

``resid_r`` is the residual stream where ``r`` reads it *in this pass*, ``current_s`` what sender
``s`` writes in this pass, ``source_s`` what it writes in the source run (corrupt prompts, or the
batch mean) and ``w`` the edge's weight: 1 patches the edge (it carries exactly the source
contribution), 0 leaves it clean (it carries the sender's output in this pass, which differs from
the clean run's once something upstream was patched). Edges change only what receivers read, never
the residual stream itself. ``w = 0`` everywhere is the clean run, ``w = 1`` everywhere the source
run; fractional weights interpolate (EAP-IG's path, :mod:`~cortexmap.circuits.attribution`).

Mechanics, all through hooks on the model's own modules (no modeling code is copied):

* senders: a pre-hook on the first block (emb), the out-projection pre-hook (head outputs ``z``)
  and forward hooks on the MLP's output module and (sandwich blocks) the post-attention norm
  write ``source - current`` into the store (:mod:`~cortexmap.circuits.senders`), as the pass
  reaches them;
* attention receivers: for each receiver with a weighted edge, ``resid + delta`` goes through the
  attention norm module, then the q/k/v projection module (the fused one where q, k and v share
  one), and that receiver's columns of the projection output (query head ``h`` or KV group ``g``
  of its kind, :meth:`Layout.columns <cortexmap.circuits.layout.Layout.columns>`) are replaced;
  the other columns keep the pass's own values;
* ``A{l}``, MLP and logits receivers: a pre-hook on their norm replaces its input by ``resid + delta``
  (for ``A{l}``, ``resid`` is the layer's attention output before its norm).

Rows: ``k`` groups of the batch run together; row ``g * batch + i`` is prompt ``i`` under
``weights[g]``. A **frozen** store (``source - clean``, from :func:`~cortexmap.circuits.senders.difference_store`)
replaces the live one when every group patches edges into one receiver only: then nothing
upstream of the receiver changed, the clean differences are exact, and groups need no store of
their own.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from cortexmap.circuits.graph import ReceiverBlock
from cortexmap.circuits.layout import Layout, Projection
from cortexmap.circuits.senders import Contributions, head_chunk, hidden_arg, residual_chunk
from cortexmap.models.hooks import register_head_hooks


class RewiredPass:
    """A forward pass with per-edge weights; build one per pass and call :meth:`run`.

    Args:
        layout: the model's hook points and graph.
        source: the source run's contributions (``[batch or 1, ...]``).
        weights: ``[k, n_edges]`` edge weights on the model's device, or None (no edge weighted).
        frozen: a ``source - clean`` store to use instead of recording one during the pass.
    """

    grad_enabled = False  # subclasses that differentiate the pass set True (the emb input becomes a leaf)

    def __init__(self, layout: Layout, source: Contributions, weights: torch.Tensor | None = None, *,
                 frozen: list[torch.Tensor] | None = None) -> None:
        self.layout, self.graph, self.source = layout, layout.graph, source
        self.weights, self.frozen = weights, frozen
        self.k = 1 if weights is None else int(weights.shape[0])
        self.chunks: list[torch.Tensor] = []
        self.variants: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._inner = False
        self.batch = self.seq = 0

    # ---- the pass --------------------------------------------------------------------------
    def run(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run on ``input_ids [batch, seq]`` tiled ``k`` times; return last-position logits ``[k * batch, vocab]``."""
        self.batch, self.seq = input_ids.shape
        hooks = []
        try:
            hooks += self._register()
            with torch.set_grad_enabled(self.grad_enabled):
                out = self.layout.handle.model(input_ids=input_ids.repeat(self.k, 1), use_cache=False, logits_to_keep=1)
            return out.logits[:, -1]
        finally:
            for h in hooks:
                h.remove()

    def release(self) -> None:
        """Drop the store and edited inputs.

        Hooks on the pass's tensors refer back to the pass: a reference cycle gc would free late.
        """
        self.chunks.clear()
        self.variants.clear()

    def _register(self) -> list[Any]:
        layout, graph, hooks = self.layout, self.graph, []
        live = self.frozen is None
        if live:
            hooks.append(layout.first_block.register_forward_pre_hook(self._emb_hook, with_kwargs=True))
            hooks += register_head_hooks(layout.handle, {l: self._z_hook(l) for l in range(len(layout.blocks))})
        for layer, block in enumerate(layout.blocks):
            hooks += self._attention_hooks(layer, block)
            if block.attn_out is not None:  # sandwich: A{l} reads the heads, then writes the residual
                hooks.append(block.attn_out.register_forward_pre_hook(self._single_hook(graph.block("attn", layer)),
                                                                      with_kwargs=True))
                if live:
                    hooks.append(block.attn_out.register_forward_hook(self._output_hook("attn", layer)))
            if live:
                hooks.append(block.mlp_out.register_forward_hook(self._output_hook("mlp", layer)))
            hooks.append(block.mlp_norm.register_forward_pre_hook(self._single_hook(graph.block("mlp", layer)),
                                                                  with_kwargs=True))
        hooks.append(layout.final_norm.register_forward_pre_hook(self._single_hook(graph.block("logits")),
                                                                  with_kwargs=True))
        return hooks

    def _attention_hooks(self, layer: int, block: Any) -> list[Any]:
        hooks = [block.attn_norm.register_forward_hook(self._attn_norm_hook(layer), with_kwargs=True)]
        for proj in self.layout.projections(layer):
            hooks.append(proj.module.register_forward_hook(self._proj_hook(layer, proj)))
        return hooks

    def _call(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        """Call a hooked module on an edited input without our own hooks firing again."""
        self._inner = True
        try:
            return module(x)
        finally:
            self._inner = False

    # ---- senders ---------------------------------------------------------------------------
    def _tiled(self, current: torch.Tensor) -> torch.Tensor:
        """``current [k * batch, ...]`` as ``[k, batch, ...]``."""
        return current.reshape(self.k, self.batch, *current.shape[1:])

    def _emb_hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden = hidden_arg(args, kwargs)
        replaced = None
        if self.grad_enabled:  # a leaf, so the pass is differentiable without parameter gradients
            hidden = replaced = hidden.detach().requires_grad_(True)
        diff = (self.source.emb.unsqueeze(0) - self._tiled(hidden)).reshape(hidden.shape)
        self.chunks.append(residual_chunk(diff))
        return None if replaced is None else replace_hidden(args, kwargs, replaced)

    def _z_hook(self, layer: int) -> Callable[[torch.Tensor], None]:
        def hook(z: torch.Tensor) -> None:  # [k * batch, seq, n_heads, d_head]
            dz = (self.source.z[layer].unsqueeze(0) - self._tiled(z)).reshape(z.shape)
            self.chunks.append(head_chunk(self.layout, layer, dz))

        return hook

    def _output_hook(self, kind: str, layer: int) -> Callable[..., None]:
        """Forward hook storing ``source - current`` of sender group ``kind`` (``"attn"`` or ``"mlp"``) of ``layer``."""
        def hook(module: Any, args: tuple[Any, ...], out: Any) -> None:
            out = out[0] if isinstance(out, tuple) else out
            current = out.reshape(self.k * self.batch, self.seq, -1)
            diff = (self.source.output(kind, layer).unsqueeze(0) - self._tiled(current)).reshape(current.shape)
            self.chunks.append(residual_chunk(diff))

        return hook

    # ---- deltas ----------------------------------------------------------------------------
    def _store(self, upstream: tuple[int, ...]) -> list[tuple[int, int, torch.Tensor]]:
        """``(column, n_senders, chunk)`` of the store chunks of sender groups ``upstream``, in column order."""
        chunks = self.frozen if self.frozen is not None else self.chunks
        out, column = [], 0
        for c in upstream:
            n = self.graph.sender_groups[c].count
            out.append((column, n, chunks[c]))
            column += n
        return out

    def _delta(self, w: torch.Tensor, groups: torch.Tensor, upstream: tuple[int, ...]) -> torch.Tensor | None:
        """``sum_s w[p, s] * store_s`` for pairs ``p`` of group ``groups[p]``: ``[P, batch, seq * d]``.

        ``w [P, n_up]`` has one column per sender of the sender groups ``upstream``. Returns None
        when every weight is zero.
        """
        total = None
        one_group = self.frozen is not None or self.k == 1
        for start, n, chunk in self._store(upstream):
            wc = w[:, start:start + n].to(chunk.dtype)  # [P, n]
            if not bool(wc.any()):
                continue
            if one_group:  # chunk [n, batch, x]: every pair reads the same rows
                term = (wc @ chunk.reshape(n, -1)).reshape(len(w), self.batch, -1)
            else:  # chunk [n, k * batch, x]: pair p reads its group's rows
                term = chunk.new_zeros(len(w), self.batch, chunk.shape[-1])
                for g in groups.unique().tolist():
                    rows = (groups == g).nonzero().squeeze(1)
                    block = chunk[:, g * self.batch:(g + 1) * self.batch].reshape(n, -1)
                    term[rows] = (wc[rows] @ block).reshape(len(rows), self.batch, -1)
            total = term if total is None else total + term
        return total

    # ---- attention receivers ---------------------------------------------------------------
    def _attn_norm_hook(self, layer: int) -> Callable[..., None]:
        block = self.graph.block("attention", layer)
        n_rec, n_up, sl = len(block.receivers), block.n_up, block.edges

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            if self._inner or self.weights is None:
                return
            x = hidden_arg(args, kwargs)
            active = self.weights[:, sl].reshape(self.k, n_rec, n_up).any(-1).nonzero()
            if not len(active):
                return
            groups, receivers = active[:, 0], active[:, 1]
            resid = x.reshape(self.k, self.batch, -1)[groups]  # [P, batch, seq * d]
            w = self.weights[:, sl].reshape(self.k, n_rec, n_up)[groups, receivers]  # [P, n_up]
            delta = self._delta(w, groups, block.groups)
            if delta is not None:
                resid = resid + delta
            normed = self._call(module, resid.reshape(len(groups) * self.batch, *x.shape[1:]))
            self.variants[layer] = (groups, receivers, normed)

        return hook

    def _proj_hook(self, layer: int, proj: Projection) -> Callable[..., Any]:
        lo, n = proj.lo, len(proj.columns)

        def hook(module: Any, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
            if self._inner or layer not in self.variants:
                return None
            groups, receivers, normed = self.variants[layer]
            sel = ((receivers >= lo) & (receivers < lo + n)).nonzero().squeeze(1)
            if not len(sel):
                return None
            columns = proj.columns.to(out.device)[receivers[sel] - lo]  # [P', d_head]
            edited = normed.reshape(len(groups), self.batch, *normed.shape[1:])[sel]
            new = self._call(module, edited.reshape(-1, *normed.shape[1:]))  # [P' * batch, seq, width]
            width = out.shape[-1]
            new = new.reshape(len(sel), self.batch, self.seq, width).permute(0, 3, 1, 2)  # [P', width, batch, seq]
            spliced = out.reshape(self.k, self.batch, self.seq, width).permute(0, 3, 1, 2).clone()
            rows = torch.arange(len(sel), device=out.device)[:, None]
            spliced[groups[sel][:, None], columns] = new[rows, columns]  # pair p: its group's rows, its columns
            return spliced.permute(0, 2, 3, 1).reshape(out.shape)

        return hook

    # ---- A{l}, MLP and logits receivers -----------------------------------------------------
    def _single_hook(self, block: ReceiverBlock) -> Callable[..., Any]:
        sl = block.edges

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if self._inner or self.weights is None:
                return None
            x = hidden_arg(args, kwargs)
            w = self.weights[:, sl]
            groups = w.any(-1).nonzero().squeeze(1)
            if not len(groups):
                return None
            delta = self._delta(w[groups], groups, block.groups)
            if delta is None:
                return None
            new = x.reshape(self.k, self.batch, -1).clone()
            new[groups] = new[groups] + delta
            return replace_hidden(args, kwargs, new.reshape(x.shape))

        return hook


def replace_hidden(args: tuple[Any, ...], kwargs: dict[str, Any], new: torch.Tensor) -> tuple[Any, Any]:
    """A ``with_kwargs`` pre-hook's return value that swaps the hidden-state argument for ``new``."""
    if args:
        return (new,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}
