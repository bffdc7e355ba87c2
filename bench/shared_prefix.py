"""Prototype (proposed for ``sweep/engine.py``): exact patching that skips the prompt prefix the two runs share.

Activation patching runs the *base* prompt with head outputs taken from the *source* prompt. When
every pair of a batch agrees on its first ``p`` tokens (IOI: the names are swapped at position 9
of 14), the two runs are identical at those positions in every layer (causal attention), so
patching there changes nothing and the patched run equals the base run on positions ``< p``.
Only positions ``p..seq-1`` need recomputing, attending to the base run's keys and values of the
prefix. The prefix is run once with ``use_cache=True``; the suffix pass that records block inputs
and arguments is run on top of that cache, so attention masks, position embeddings and sliding
windows come from transformers itself, for any architecture. At replay the recorded cache
argument is replaced by a copy of the prefix-only cache whose rows are tiled like the batch.

The metric needs only the last position, which is always in the suffix. The saving is in the
token count of every block: ``seq / (seq - p)`` for the linear layers (14 / 5 on IOI).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import Cache

from cortexmap.interventions.capture import head_outputs
from cortexmap.interventions.edit import edit_hook
from cortexmap.sweep.engine import _tile, head_block_edit


def shared_prefix_length(base: torch.Tensor, source: torch.Tensor) -> int:
    """Leading positions on which every row of ``base`` and ``source`` (``[batch, seq]``) agree, at most seq - 1."""
    same = (base == source).all(0)  # [seq]
    differ = (~same).nonzero()
    p = int(differ[0]) if len(differ) else base.shape[1]
    return min(p, base.shape[1] - 1)


@dataclass
class SuffixCache:
    """A base run split at ``prefix``: the prefix's KV cache and what the suffix blocks were called with."""

    prefix: int
    prefix_cache: Any  # transformers Cache holding positions < prefix, never mutated
    block_inputs: list[torch.Tensor]  # per layer: [batch, seq - prefix, d_model]
    block_args: list[tuple[tuple[Any, ...], dict[str, Any]]]

    @property
    def batch(self) -> int:
        return self.block_inputs[0].shape[0]

    def tiled_cache(self, k: int) -> Any:
        """A fresh copy of the prefix cache with rows ordered like ``k`` tiled copies of the batch."""
        cache = copy.deepcopy(self.prefix_cache)
        if k > 1:
            cache.batch_select_indices(torch.arange(self.batch, device=self.block_inputs[0].device).repeat(k))
        return cache


@torch.no_grad()
def suffix_cache(handle: Any, input_ids: torch.Tensor, prefix: int) -> SuffixCache:
    """Run ``input_ids[:, :prefix]`` with a cache, then record the suffix blocks' inputs and arguments."""
    out = handle.model(input_ids=input_ids[:, :prefix], use_cache=True)
    cache = out.past_key_values
    snapshot = copy.deepcopy(cache)
    inputs: list[Any] = [None] * handle.n_layers
    args: list[Any] = [None] * handle.n_layers

    def block_hook(layer: int) -> Callable[..., None]:
        def hook(module: Any, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
            inputs[layer] = (a[0] if a else kw["hidden_states"]).detach()
            rest = {key: value for key, value in kw.items() if key != "hidden_states"}
            args[layer] = (tuple(a[1:]), rest)

        return hook

    blocks = handle.blocks()
    hooks = [blocks[l].register_forward_pre_hook(block_hook(l), with_kwargs=True) for l in range(handle.n_layers)]
    try:
        handle.model(input_ids=input_ids[:, prefix:], cache=cache, use_cache=True, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    return SuffixCache(prefix, snapshot, inputs, args)


def _with_cache(value: Any, cache: Any) -> Any:
    if isinstance(value, Cache):
        return cache
    if isinstance(value, dict):
        return {key: _with_cache(v, cache) for key, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_with_cache(v, cache) for v in value)
    return value


@torch.no_grad()
def run_suffix_from_layer(handle: Any, sc: SuffixCache, layer: int, edit: Any, k: int) -> torch.Tensor:
    """:func:`cortexmap.sweep.engine.run_from_layer` over the suffix positions only."""
    batch = sc.batch
    hidden = _tile(sc.block_inputs[layer], batch, k)
    cache = sc.tiled_cache(k)
    blocks = handle.blocks()
    hook = handle.out_proj(layer).register_forward_pre_hook(edit_hook(edit, handle.n_heads), with_kwargs=True)
    try:
        for index in range(layer, handle.n_layers):
            a, kw = sc.block_args[index]
            out = blocks[index](hidden, *_with_cache(_tile(a, batch, k), cache), **_with_cache(_tile(kw, batch, k), cache))
            hidden = out[0] if isinstance(out, tuple) else out
    finally:
        hook.remove()
    return handle.logits_from_hidden(hidden[:, -1])


@torch.no_grad()
def exact_patch_matrix(handle: Any, base_ids: torch.Tensor, source_ids: torch.Tensor,
                       metric: Callable[[torch.Tensor], torch.Tensor], rows_per_pass: int = 256) -> np.ndarray:
    """Metric of every single-head patch (source into base, all positions): ``[batch, n_layers * n_heads]``.

    ``metric`` maps ``[k * batch, vocab]`` last-position logits (rows tiled per batch) to ``[k * batch]``.
    """
    batch, n_h = base_ids.shape[0], handle.n_heads
    prefix = shared_prefix_length(base_ids, source_ids)
    if prefix == 0:
        raise ValueError("the prompts share no prefix; use cortexmap.sweep.compute.exact_matrix")
    sc = suffix_cache(handle, base_ids, prefix)
    source_z = head_outputs(handle, source_ids)  # {layer: [batch, seq, n_heads, d_head]}
    out = np.empty((batch, handle.n_layers * n_h))
    k_max = max(1, rows_per_pass // batch)
    for layer in range(handle.n_layers):
        heads = list(range(n_h))
        n_chunks = -(-len(heads) // k_max)
        size = -(-len(heads) // n_chunks)  # balanced chunks: 9 heads at k_max 8 run as 5 + 4, not 8 + 1
        for start in range(0, len(heads), size):
            chunk = heads[start:start + size]
            edit = head_block_edit(n_h, chunk, batch, "patch", replacement=source_z[layer][:, prefix:])
            values = metric(run_suffix_from_layer(handle, sc, layer, edit, len(chunk))).view(len(chunk), batch)
            for i, head in enumerate(chunk):
                out[:, layer * n_h + head] = values[i].cpu().numpy()
    return out
