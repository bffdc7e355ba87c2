"""Exact per-head sweeps, faster than one forward pass per head.

Three savings over the plain loop (one hooked full forward per head):

* **prefix reuse**: an intervention at layer ``l`` starts from the cached clean input of block
  ``l`` (hidden state plus the exact arguments the block was called with) instead of
  recomputing blocks ``0..l-1``;
* **read positions only**: only the positions the metric reads (the last prompt position, or
  the teacher-forced answer positions of :mod:`cortexmap.tasks.metrics`) go through the final
  norm and the unembedding;
* **heads on the batch axis**: ``k`` head interventions run in one pass over ``k * batch`` rows,
  row ``i * batch + b`` editing head ``heads[i]`` on prompt ``b`` (a per-row :class:`LayerEdit`);
  heads of several layers share a pass, their rows joining when the pass reaches their layer
  (:func:`run_joined`), so short prompts and small batches still fill the pass.

The block arguments are replayed as recorded, with every tensor of rank >= 2 whose first axis is
the prompt batch tiled ``k`` times (rank-1 tensors such as ``cache_position`` are never tiled).
Rows may be right-padded (:mod:`cortexmap.tasks.encoding`): no attention mask is passed, and
since attention is causal a real position never sees the pads after it, so every tiled copy of a
row computes its real positions as the row alone would.

A fourth saving applies to activation patching: when every row of a batch agrees with its source row on its first
``p`` tokens (IOI swaps the names at token 9 of 14), the patched run equals the base run at those
positions in every layer (attention is causal), so only positions ``p..seq-1`` are recomputed,
attending to the base run's keys and values of the prefix (:func:`suffix_cache`). The prefix's
KV cache comes from transformers itself, so masks, position embeddings and sliding windows are
the model's own; each pass gets a fresh copy whose rows are tiled like the batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from transformers import Cache

from cortexmap.interventions.edit import LayerEdit, edit_hook
from cortexmap.models.hooks import register_head_hooks

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits at the reads [k * n_reads, vocab] -> [k * n_prompts]
Reads = tuple[torch.Tensor, torch.Tensor] | None  # (rows, positions) of one copy; None: the last position of each row


@dataclass
class CleanCache:
    """Everything recorded from one clean forward pass of an equal-length prompt batch."""

    block_inputs: list[torch.Tensor]  # per layer: [batch, seq, d_model]
    block_args: list[tuple[tuple[Any, ...], dict[str, Any]]]
    z: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer: [batch, seq, n_heads, d_head]
    logits: torch.Tensor | None = None  # at the reads: [n_reads, vocab]
    prefix: int = 0  # positions < prefix are not in block_inputs: they live in prefix_cache
    prefix_cache: Any = None  # transformers Cache of the positions < prefix, never mutated

    @property
    def batch(self) -> int:
        return self.block_inputs[0].shape[0]

    def kv_for(self, copies: list[int]) -> Any:
        """A fresh copy of the prefix cache whose layer ``j`` holds ``copies[j]`` tiled copies of the batch.

        Each layer's attention reads only its own layer of the cache, so rows that join a pass at a
        later layer need the prefix there only: layer ``j`` is tiled to the rows alive at ``j``.
        """
        if self.prefix_cache is None:
            return None
        kv = copy.deepcopy(self.prefix_cache)
        for layer, k in zip(kv.layers, copies):
            if k > 1:
                # CPU indices: the layers of a sharded model keep their caches on different GPUs
                layer.batch_select_indices(torch.arange(self.batch).repeat(k))
        return kv


def shared_prefix_length(base: torch.Tensor, source: torch.Tensor, first_read: int | None = None) -> int:
    """Leading positions on which every row of ``base`` and ``source`` agree, at most ``first_read`` (default seq - 1).

    ``source`` may be longer or shorter (a corrupt prompt of another length, right-padded): only
    the positions both have are compared.
    """
    width = min(base.shape[1], source.shape[1])
    differ = (~(base[:, :width] == source[:, :width]).all(0)).nonzero()
    p = int(differ[0]) if len(differ) else width
    return min(p, base.shape[1] - 1 if first_read is None else first_read)


def _at_reads(logits: torch.Tensor, reads: Reads, offset: int = 0) -> torch.Tensor:
    """``[n_reads, vocab]`` from logits ``[batch, n_unique, vocab]`` kept at the reads' unique positions."""
    if reads is None:
        return logits[:, -1]
    rows, positions = reads
    _, inverse = torch.unique(positions - offset, return_inverse=True)
    return logits[rows.to(logits.device), inverse.to(logits.device)]


def _keep(reads: Reads, offset: int = 0) -> Any:
    """``logits_to_keep`` for a forward whose logits are read at ``reads`` (positions shifted by ``offset``)."""
    return 1 if reads is None else torch.unique(reads[1] - offset)


def _record(handle: Any, z: dict[int, torch.Tensor] | None, run: Callable[[], Any]) -> tuple[list[Any], list[Any], Any]:
    """Call ``run()`` recording every block's input and arguments (and head outputs into ``z``)."""
    inputs: list[Any] = [None] * handle.n_layers
    args: list[Any] = [None] * handle.n_layers
    hooks = []

    def block_hook(layer: int):  # noqa: ANN202
        def hook(module: Any, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
            hidden = a[0] if a else kw["hidden_states"]
            inputs[layer] = hidden.detach()
            rest = dict(kw)
            rest.pop("hidden_states", None)
            args[layer] = (tuple(a[1:]), rest)

        return hook

    def z_store(layer: int):  # noqa: ANN202
        def store(heads: torch.Tensor) -> None:
            z[layer] = heads.detach()  # type: ignore[index]

        return store

    blocks = handle.blocks()
    try:
        for layer in range(handle.n_layers):
            hooks.append(blocks[layer].register_forward_pre_hook(block_hook(layer), with_kwargs=True))
        if z is not None:
            hooks += register_head_hooks(handle, {layer: z_store(layer) for layer in range(handle.n_layers)})
        out = run()
    finally:
        for h in hooks:
            h.remove()
    return inputs, args, out


@torch.no_grad()
def clean_cache(handle: Any, input_ids: torch.Tensor, reads: Reads = None) -> CleanCache:
    """Run the model once on ``input_ids``: block inputs, block arguments, head outputs and the logits at ``reads``."""
    z: dict[int, torch.Tensor] = {}
    keep = _keep(reads)
    inputs, args, out = _record(handle, z, lambda: handle.model(input_ids=input_ids, use_cache=False,
                                                                logits_to_keep=keep))
    return CleanCache(inputs, args, z, _at_reads(out.logits, reads).detach())


@torch.no_grad()
def suffix_cache(handle: Any, input_ids: torch.Tensor, prefix: int, reads: Reads = None) -> CleanCache:
    """Run ``input_ids[:, :prefix]`` once with a KV cache, then record the blocks over the suffix only."""
    kv = handle.model(input_ids=input_ids[:, :prefix], use_cache=True).past_key_values
    snapshot = copy.deepcopy(kv)
    keep = _keep(reads, prefix)
    inputs, args, out = _record(handle, None, lambda: handle.model(input_ids=input_ids[:, prefix:], cache=kv,
                                                                   use_cache=True, logits_to_keep=keep))
    return CleanCache(inputs, args, {}, _at_reads(out.logits, reads, prefix).detach(), prefix=prefix,
                      prefix_cache=snapshot)


def _tile(value: Any, batch: int, k: int) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == batch and k > 1:
            return value.repeat(k, *([1] * (value.dim() - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_tile(v, batch, k) for v in value)
    if isinstance(value, list):
        return [_tile(v, batch, k) for v in value]
    if isinstance(value, dict):
        return {key: _tile(v, batch, k) for key, v in value.items()}
    return value


def _with_cache(value: Any, cache: Any) -> Any:
    """``value`` with every transformers Cache in it replaced by ``cache``."""
    if isinstance(value, Cache):
        return cache
    if isinstance(value, dict):
        return {key: _with_cache(v, cache) for key, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_with_cache(v, cache) for v in value)
    return value


@torch.no_grad()
def run_from_layer(handle: Any, cache: CleanCache, layer: int, edit: LayerEdit, k: int,
                   reads: Reads = None) -> torch.Tensor:
    """Run blocks ``layer..L-1`` on ``k`` tiled copies of the cached batch with ``edit`` at ``layer``.

    With a :func:`suffix_cache` only the suffix positions run (``edit`` must cover those only).

    Returns:
        Logits at the reads of every copy ``[k * n_reads, vocab]`` (``reads`` None: the last position of each row).
    """
    return run_joined(handle, cache, [(layer, edit, k)], reads)


def pad_rows(edit: LayerEdit, rows: int) -> LayerEdit:
    """``edit`` preceded by ``rows`` rows it leaves unchanged."""
    if rows == 0:
        return edit
    if edit.scale is not None:
        keep = torch.ones(rows, edit.scale.shape[1], dtype=edit.scale.dtype)
        return LayerEdit(scale=torch.cat([keep, edit.scale]))
    mask = torch.cat([torch.zeros(rows, edit.replace_mask.shape[1], dtype=torch.bool, device=edit.replace_mask.device),
                      edit.replace_mask])
    replace = edit.replace
    if replace.shape[0] > 1:
        replace = torch.cat([replace.new_zeros(rows, *replace.shape[1:]), replace])
    where = edit.replace_positions
    if where is not None:  # the rows before are not replaced at all (mask False): any positions do
        where = torch.cat([where.new_zeros(rows, where.shape[1]), where])
    return LayerEdit(replace=replace, replace_mask=mask, replace_positions=where)


@torch.no_grad()
def run_joined(handle: Any, cache: CleanCache, groups: list[tuple[int, LayerEdit, int]],
               reads: Reads = None) -> torch.Tensor:
    """One pass in which each group of rows joins at its own layer.

    ``groups`` holds ``(layer, edit, k)`` sorted by layer: ``k`` tiled copies of the cached batch
    start from the clean input of block ``layer`` with ``edit`` applied there (to them only); rows
    that joined earlier run through that layer unedited. Row order follows ``groups``. Over a
    :func:`suffix_cache`, each layer's prefix keys and values are tiled to the rows alive there.

    Args:
        reads: ``(rows, positions)`` of one copy of the batch where logits are read (positions of
            the full rows, prefix included); None: the last position of each row.

    Returns:
        Logits at the reads of every copy ``[sum(k) * n_reads, vocab]``.
    """
    batch = cache.batch
    joins = {layer: (edit, k) for layer, edit, k in groups}
    alive = np.cumsum([joins[j][1] if j in joins else 0 for j in range(handle.n_layers)]).tolist()
    kv = cache.kv_for(alive) if cache.prefix_cache is not None else None
    blocks = handle.blocks()
    hidden: torch.Tensor | None = None
    k_now = 0
    for index in range(groups[0][0], handle.n_layers):
        hook = None
        if index in joins:
            edit, k = joins[index]
            new = _tile(cache.block_inputs[index], batch, k)
            hidden = new if hidden is None else torch.cat([hidden, new])
            hook = handle.out_proj(index).register_forward_pre_hook(
                edit_hook(pad_rows(edit, k_now * batch), handle.n_heads), with_kwargs=True)
            k_now += k
        try:
            a, kw = _tile(cache.block_args[index], batch, k_now)
            if kv is not None:
                a, kw = _with_cache(a, kv), _with_cache(kw, kv)
            out = blocks[index](hidden, *a, **kw)
            hidden = out[0] if isinstance(out, tuple) else out
        finally:
            if hook is not None:
                hook.remove()
    if reads is None:
        return handle.logits_from_hidden(hidden[:, -1])
    rows, positions = reads
    rows = (torch.arange(k_now)[:, None] * batch + rows[None]).reshape(-1).to(hidden.device)
    positions = (positions - cache.prefix).repeat(k_now).to(hidden.device)
    return handle.logits_from_hidden(hidden[rows, positions])


def head_block_edit(
    n_heads: int,
    heads: list[int],
    batch: int,
    kind: str,
    alpha: float = 0.0,
    replacement: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
) -> LayerEdit:
    """A per-row edit: rows ``i * batch .. (i + 1) * batch - 1`` intervene on ``heads[i]``.

    Args:
        replacement: ``[batch or 1, seq or 1, n_heads, d_head]`` activations for ``mean``,
            ``resample`` and ``patch``.
        positions: ``[batch, seq]`` bool, where each row is replaced (None: everywhere).
    """
    k = len(heads)
    index = torch.arange(k).repeat_interleave(batch)
    head_of_row = torch.tensor(heads)[index]  # [k * batch]
    onehot = torch.nn.functional.one_hot(head_of_row, n_heads).bool()  # [rows, n_heads]
    if kind in ("zero", "amplify"):
        factor = 0.0 if kind == "zero" else 1.0 + alpha
        scale = torch.where(onehot, torch.tensor(factor), torch.tensor(1.0))
        return LayerEdit(scale=scale)
    if replacement is None:
        raise ValueError(f"{kind} needs replacement activations")
    rows = replacement if replacement.shape[0] == 1 else replacement.repeat(k, 1, 1, 1)
    where = None if positions is None else positions.repeat(k, 1)
    return LayerEdit(replace=rows, replace_mask=onehot.to(replacement.device), replace_positions=where)
