"""Key and value inputs per query head: the edge graph MIB counts, run exactly on a grouped-query model.

With grouped-query attention the ``H / G`` query heads of a KV group read one key and one value
projection, so cortexmap's graph (:mod:`~cortexmap.circuits.graph`) has one ``k`` and one ``v``
receiver per group. MIB counts them per *query* head: its TransformerLens models run with
``ungroup_grouped_query_attention=True`` (hannamw/MIB-circuit-track ``run_attribution.py`` and
``run_evaluation.py``), which repeats each KV head's projection weights once per query head, and
hannamw/EAP-IG's ``Graph.from_model`` (``src/eap/graph.py``) gives every query head its own
``<q>``, ``<k>`` and ``<v>`` edges: SmolLM2-135M has 123,211 edges that way, 70,651 grouped.

:func:`per_head_kv` gives that graph without copying modeling code. Inside it, each layer's key
and value projections return their output gathered to one slot per query head (slot ``h`` holds
group ``h // (H / G)``'s projection of *its* input) and the attention module's
``num_key_value_groups`` is 1, so transformers' attention gives query head ``h`` slot ``h``
instead of repeating the groups. While every slot is computed from the same input this is the
model itself (the gather copies values); once path patching hands one query head's slot an input
of its own (:class:`~cortexmap.circuits.rewire.RewiredPass` recomputes the projection on the
edited input and keeps that head's slot), that head alone reads it, as in MIB's ungrouped model.
The handle it yields reports ``n_kv_heads == n_heads``, so every circuit function (path
patching, EAP, EAP-IG, curves) builds the per-head graph from it and runs unchanged.

The gather is registered first among the projections' forward hooks (``prepend=True``), so every
other hook of the pass sees the per-head slots. A model without GQA is its own per-head view.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from cortexmap.circuits.layout import circuit_layout
from cortexmap.errors import UnsupportedArchitectureError


def _gather(index: torch.Tensor, d_head: int) -> Callable[..., torch.Tensor]:
    def hook(module: Any, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        grouped = out.reshape(*out.shape[:-1], -1, d_head)  # [.., G, d_head]
        per_head = grouped.index_select(-2, index.to(out.device))  # [.., H, d_head]
        return per_head.reshape(*out.shape[:-1], -1)

    return hook


@contextmanager
def per_head_kv(handle: Any) -> Iterator[Any]:
    """A view of ``handle`` whose key and value inputs are one per query head, for a ``with`` block.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of an architecture circuits support.

    Yields:
        A shallow copy of the handle (same model) with ``n_kv_heads == n_heads``; ``handle``
        itself when the model has no grouped-query attention. The model is restored on exit,
        on error too.

    Raises:
        UnsupportedArchitectureError: circuits do not support the model, or its attention module
            has no ``num_key_value_groups`` to set.
    """
    if handle.n_kv_heads == handle.n_heads:
        yield handle
        return
    layout = circuit_layout(handle)
    index = torch.arange(handle.n_heads) // (handle.n_heads // handle.n_kv_heads)
    hooks: list[Any] = []
    saved: list[tuple[Any, int]] = []
    try:
        for layer, block in enumerate(layout.blocks):
            attn = handle.attention(layer)
            if not hasattr(attn, "num_key_value_groups"):
                raise UnsupportedArchitectureError(
                    f"{handle.model_type}'s attention has no num_key_value_groups, so its key/value heads cannot be "
                    "given one per query head; use the grouped edge counting (protocol cortexmap)")
            saved.append((attn, attn.num_key_value_groups))
            attn.num_key_value_groups = 1
            for proj in (block.k_proj, block.v_proj):
                hooks.append(proj.register_forward_hook(_gather(index, handle.d_head), prepend=True))
        view = copy.copy(handle)
        view.n_kv_heads = handle.n_heads
        yield view
    finally:
        for hook in hooks:
            hook.remove()
        for attn, groups in saved:
            attn.num_key_value_groups = groups
