"""Which modules an edge-level forward hooks, read from the geometry table, and which models qualify.

Exact path patching needs every sender's output to be a separate term of what its receivers
read, and every receiver to read through a module we can call again on an edited copy. The
geometry row's :class:`~cortexmap.models.geometry.BlockLayout` says how; four things vary:

* **Separate or fused q/k/v.** Llama-type rows have one projection per kind, head-major
  ``[.., n * d_head]``. GPT-2 (``c_attn``) and GPT-NeoX (``query_key_value``) compute all three
  in one module; the row's ``qkv_order`` says where a head's slices sit in its output (GPT-2:
  ``[q | k | v]``, each ``[n_heads, d_head]``; GPT-NeoX: ``[n_heads, (q, k, v), d_head]``, as
  transformers views and chunks it). A receiver is still one slice: query head ``h``'s input is
  patched by calling the fused module on the edited, normalized residual and taking *only* the
  columns of ``h``'s query (:meth:`Layout.columns`), the other heads' and kinds' columns keeping
  the pass's values. Rotary embeddings (GPT-NeoX's partial ones included) and Gemma-3's per-head
  q/k norms act on each head's slice after the projection, so splicing the slice is exact.
* **Pre-norm sequential** (llama, mistral, qwen2/3, gemma, gpt2, opt with its default
  ``do_layer_norm_before``): every head and MLP adds its own term to the residual.
* **Parallel** (GPT-NeoX's ``use_parallel_residual``): attention and MLP of a layer read the same
  residual, so ``M{l}`` does not read layer ``l``'s heads (the graph has no such edges).
* **Sandwich** (gemma2, gemma3_text): ``x += post_attn_norm(sum of heads)``. The norm is not
  linear in the heads, so a head's contribution is not a term of the residual. The graph says so:
  each head sends to one receiver, its layer's ``A{l}`` (the post-attention norm's input), and
  ``A{l}`` (the norm's output) is the sender the residual carries downstream. **What an edge
  means there:** patching ``L{l}H{h} -> A{l}`` recomputes the post-attention norm on the sum of
  heads with head ``h``'s term taken from the source run (every downstream reader sees that
  recomputed output); patching ``A{l} -> r`` gives receiver ``r`` the source run's normalized
  attention output of layer ``l``. The MLP's sender is its post-norm's output, likewise whole.
  A head therefore influences later heads only through ``A{l}``: on these models head-to-head
  composition is read as ``L{l}H{h} -> A{l} -> L{l'}H{h'}``, and circuits are counted in this
  graph's edges (far fewer than a pre-norm model of the same shape has).

Refused, with :class:`~cortexmap.errors.UnsupportedArchitectureError` and one line saying why:

* post-norm blocks (OPT-350m's ``do_layer_norm_before=False``): the residual itself is
  normalized after each add, so nothing upstream reaches a later receiver as a term of its own
  (every edge would pass through every later norm); no honest edge graph is smaller than the
  sequence of blocks;
* a row without a block layout (``HeadGeometry.block`` is None), or a fused projection of an
  unknown ``qkv_order``.

The receiving modules, per layer: the attention norm (its output feeds q/k/v), the q/k/v
projection module(s), the output projection (its input is the head outputs,
:func:`~cortexmap.models.register_head_hooks`), on sandwich blocks the post-attention norm, the
MLP norm, and the module whose output is the MLP's term; and the final norm, which the logits read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from cortexmap.circuits.graph import Graph
from cortexmap.errors import UnsupportedArchitectureError

QKV_ORDERS: tuple[str, ...] = ("kind_major", "head_major")


@dataclass(frozen=True)
class BlockModules:
    """The modules of one decoder block that a circuit forward hooks.

    Attributes:
        attn_norm: normalizes the residual the q/k/v projections read.
        q_proj: the module whose output holds the query slices (a fused projection for all three kinds).
        k_proj: the same for keys.
        v_proj: the same for values.
        out_proj: its input is the head outputs, concatenated head-major.
        attn_out: the post-attention norm of a sandwich block (sender and receiver ``A{l}``), else None.
        mlp_norm: normalizes the residual the MLP reads.
        mlp_out: the module whose output is the MLP's term of the residual (the MLP, or its post-norm).
    """

    attn_norm: Any
    q_proj: Any
    k_proj: Any
    v_proj: Any
    out_proj: Any
    attn_out: Any
    mlp_norm: Any
    mlp_out: Any


@dataclass(frozen=True)
class Projection:
    """One q/k/v projection module of a layer and the attention receivers it serves.

    Attributes:
        module: the projection (a fused one serves all ``H + 2G`` receivers).
        lo: the first receiver's index among the layer's attention receivers (q heads, k groups, v groups).
        columns: ``[n, d_head]`` long: the output columns of each of its ``n`` receivers.
    """

    module: Any
    lo: int
    columns: torch.Tensor


@dataclass(frozen=True)
class Layout:
    """A supported model's graph and hook points."""

    handle: Any
    graph: Graph
    blocks: tuple[BlockModules, ...]
    final_norm: Any
    first_block: Any

    def out_weight(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s output projection as ``[d_model, n_heads, d_head]`` (head h's slice: ``[:, h]``)."""
        weight = self.blocks[layer].out_proj.weight
        if self.handle.geometry.out_proj_is_conv1d:  # Conv1D stores [in, out]
            weight = weight.t()
        return weight.reshape(weight.shape[0], self.handle.n_heads, self.handle.d_head)

    def columns(self, kind: str) -> torch.Tensor:
        """``[n, d_head]``: where query head / KV group ``i``'s ``kind`` slice sits in its projection's output."""
        geometry, d = self.handle.geometry, self.handle.d_head
        h, g = self.graph.n_heads, self.graph.n_kv_heads
        n = h if kind == "q" else g
        slot = torch.arange(n)[:, None]
        offset = torch.arange(d)[None, :]
        if not geometry.qkv_fused:
            return slot * d + offset
        if geometry.qkv_order == "head_major":  # [n_heads, (q, k, v), d_head]
            return slot * 3 * d + "qkv".index(kind) * d + offset
        return {"q": 0, "k": h * d, "v": (h + g) * d}[kind] + slot * d + offset  # [q | k | v]

    def projections(self, layer: int) -> tuple[Projection, ...]:
        """Layer ``layer``'s q/k/v projection modules in receiver order (a fused one serves every receiver)."""
        block = self.blocks[layer]
        modules = [block.q_proj] if self.handle.geometry.qkv_fused else [block.q_proj, block.k_proj, block.v_proj]
        return tuple(Projection(module, lo, cols) for module, (lo, cols) in zip(modules, self._spans))

    @cached_property
    def _spans(self) -> list[tuple[int, torch.Tensor]]:
        """Per projection module: its first receiver and its receivers' columns (on the model's device)."""
        h, g = self.graph.n_heads, self.graph.n_kv_heads
        parts = [(0, self.columns("q")), (h, self.columns("k")), (h + g, self.columns("v"))]
        if self.handle.geometry.qkv_fused:
            parts = [(0, torch.cat([columns for _, columns in parts]))]
        return [(lo, columns.to(self.handle.device)) for lo, columns in parts]


def unsupported_reason(handle: Any) -> str | None:
    """Why edge-level circuits cannot run exactly on this model, or None when they can."""
    geometry, model_type = handle.geometry, handle.model_type
    block = geometry.block
    if block is None:
        return (f"{model_type} has no block layout in the geometry table (HeadGeometry.block), so circuits do not "
                "know where its heads read and write the residual stream")
    if geometry.qkv_fused and geometry.qkv_order not in QKV_ORDERS:
        return (f"{model_type}'s fused projection has qkv_order {geometry.qkv_order!r}; circuits know "
                f"{', '.join(QKV_ORDERS)}: fix its geometry row")
    if not geometry.qkv_fused and geometry.q_proj is None:
        return f"{model_type}'s geometry row names neither a query projection nor a fused one"
    residual = block.residual_of(handle.model.config)
    if residual == "post_norm":
        return (f"{model_type} with {block.pre_norm_flag}=False normalizes the residual after each add (post-norm), "
                "so earlier contributions do not reach later inputs unchanged and edges cannot be patched exactly")
    if residual == "sandwich" and not (block.post_attn_norm and block.post_mlp_norm):
        return f"{model_type} is described as a sandwich block without its post-norms; fix its geometry row"
    return None


def _block_modules(handle: Any, index: int, module: Any) -> BlockModules:
    geometry, block = handle.geometry, handle.geometry.block
    attn = getattr(module, geometry.attn)
    fused = getattr(attn, geometry.qkv_fused, None) if geometry.qkv_fused else None
    sandwich = block.residual_of(handle.model.config) == "sandwich"
    found = {
        "attn_norm": getattr(module, block.attn_norm, None),
        "q_proj": fused if geometry.qkv_fused else getattr(attn, geometry.q_proj, None),
        "k_proj": fused if geometry.qkv_fused else getattr(attn, block.k_proj, None),
        "v_proj": fused if geometry.qkv_fused else getattr(attn, block.v_proj, None),
        "out_proj": getattr(attn, geometry.out_proj, None),
        "attn_out": getattr(module, block.post_attn_norm, None) if sandwich else None,
        "mlp_norm": getattr(module, block.mlp_norm, None),
        "mlp_out": getattr(module, block.post_mlp_norm if sandwich else block.mlp, None),
    }
    missing = [name for name, value in found.items() if value is None and (name != "attn_out" or sandwich)]
    if missing:
        raise UnsupportedArchitectureError(
            f"layer {index} of {handle.spec} ({handle.model_type}) lacks {', '.join(missing)} named in its "
            "geometry row; fix the row's BlockLayout or load a stock model"
        )
    return BlockModules(**found)


def circuit_layout(handle: Any) -> Layout:
    """Resolve the hook points of a supported model.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle`.

    Returns:
        The :class:`Layout`.

    Raises:
        UnsupportedArchitectureError: a post-norm block or an undescribed one (one line saying
            why), or a described module is missing.
    """
    reason = unsupported_reason(handle)
    if reason:
        raise UnsupportedArchitectureError(reason)
    blocks = tuple(_block_modules(handle, index, module) for index, module in enumerate(handle.blocks()))
    final = handle.final_modules()  # [final norm, ..., unembedding]
    final_norm = final[0] if len(final) > 1 else None
    if final_norm is None:
        raise UnsupportedArchitectureError(
            f"{handle.model_type} has no final norm at {handle.geometry.final_norm[:1]}, so the logits' input "
            "cannot be hooked"
        )
    return Layout(handle, Graph.for_model(handle), blocks, final_norm, handle.blocks()[0])
