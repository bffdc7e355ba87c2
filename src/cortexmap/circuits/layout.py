"""Which modules an edge-level forward hooks, read from the geometry table, and which models qualify.

Exact path patching needs every sender's output to be a separate term of the residual stream and
every receiver to read the residual through a module we can call again on an edited copy. That
holds for the geometry rows with a pre-norm :class:`~cortexmap.models.geometry.BlockLayout`
and separate q/k/v projections (llama, mistral, qwen2, qwen3, gemma, opt with its default
pre-norm order). Everything else raises :class:`~cortexmap.errors.UnsupportedArchitectureError`
with one line saying why:

* fused q/k/v projections (gpt2, gpt_neox): one module computes every head's q, k and v;
* sandwich norms (gemma2, gemma3_text): the attention output is normalized as a whole before it
  is added, so a head's contribution to the residual is not a term of its own;
* post-norm blocks (OPT-350m's ``do_layer_norm_before=False``): the residual is normalized after
  each add, so earlier contributions do not reach later receivers unchanged;
* a row without a block layout (``HeadGeometry.block`` is None).

The receiving modules, per layer: the attention norm (its output feeds q/k/v), the q/k/v
projections (their outputs are head-major, ``[.., n * d_head]``), the output projection (its
input is the head outputs, :func:`~cortexmap.models.register_head_hooks`), the MLP norm and the
MLP; and the final norm, which the logits read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cortexmap.circuits.graph import Graph
from cortexmap.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class BlockModules:
    """The modules of one decoder block that a circuit forward hooks."""

    attn_norm: Any
    q_proj: Any
    k_proj: Any
    v_proj: Any
    out_proj: Any
    mlp_norm: Any
    mlp: Any


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


def unsupported_reason(handle: Any) -> str | None:
    """Why edge-level circuits cannot run exactly on this model, or None when they can."""
    geometry, model_type = handle.geometry, handle.model_type
    block = geometry.block
    if geometry.qkv_fused or geometry.q_proj is None:
        return (f"{model_type} computes q, k and v in one fused projection ({geometry.qkv_fused}), so one head's "
                "inputs cannot be rewired alone; circuits support llama, mistral, qwen2, qwen3, gemma and opt")
    if block is None:
        return (f"{model_type} has no block layout in the geometry table (HeadGeometry.block), so circuits do not "
                "know where its heads read and write the residual stream")
    if block.residual == "sandwich":
        return (f"{model_type} normalizes the attention output as a whole before adding it to the residual "
                "stream, so a head's contribution is not a term of its own and edges cannot be patched exactly")
    if block.residual != "pre_norm":
        return f"{model_type} has a {block.residual!r} residual block; circuits need a pre-norm sequential one"
    if block.pre_norm_flag and not getattr(handle.model.config, block.pre_norm_flag, True):
        return (f"{model_type} with {block.pre_norm_flag}=False normalizes the residual after each add (post-norm), "
                "so earlier contributions do not reach later inputs unchanged and edges cannot be patched exactly")
    return None


def circuit_layout(handle: Any) -> Layout:
    """Resolve the hook points of a supported model.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle`.

    Returns:
        The :class:`Layout`.

    Raises:
        UnsupportedArchitectureError: the architecture is not pre-norm sequential with separate
            q/k/v projections (one line saying why), or a described module is missing.
    """
    reason = unsupported_reason(handle)
    if reason:
        raise UnsupportedArchitectureError(reason)
    geometry, block = handle.geometry, handle.geometry.block
    blocks = []
    for index, module in enumerate(handle.blocks()):
        attn = getattr(module, geometry.attn)
        found = BlockModules(
            attn_norm=getattr(module, block.attn_norm, None), q_proj=getattr(attn, geometry.q_proj, None),
            k_proj=getattr(attn, block.k_proj, None), v_proj=getattr(attn, block.v_proj, None),
            out_proj=getattr(attn, geometry.out_proj, None), mlp_norm=getattr(module, block.mlp_norm, None),
            mlp=getattr(module, block.mlp, None),
        )
        missing = [name for name, value in vars(found).items() if value is None]
        if missing:
            raise UnsupportedArchitectureError(
                f"layer {index} of {handle.spec} ({handle.model_type}) lacks {', '.join(missing)} named in its "
                "geometry row; fix the row's BlockLayout or load a stock model"
            )
        blocks.append(found)
    final = handle.final_modules()  # [final norm, ..., unembedding]
    final_norm = final[0] if len(final) > 1 else None
    if final_norm is None:
        raise UnsupportedArchitectureError(
            f"{handle.model_type} has no final norm at {geometry.final_norm[:1]}, so the logits' input cannot be hooked"
        )
    return Layout(handle, Graph.for_model(handle), tuple(blocks), final_norm, handle.blocks()[0])
