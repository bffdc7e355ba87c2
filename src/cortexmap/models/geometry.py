"""Head geometry: a small table of facts per architecture, keyed by ``config.model_type``.

The unit of intervention is a *query head* ``(layer, head)``: its ``d_head``-wide slice of the
input of the attention output projection (``out_proj``). That input is the per-head attention
outputs concatenated along the last axis, head-major: columns ``[h * d_head, (h + 1) * d_head)``
belong to head ``h``. This holds for every row below; we never copy modeling code.

Grouped-query attention: with ``n_heads`` query heads and ``n_kv_heads`` key/value heads, query
head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)`` (the ``repeat_kv`` convention of
transformers). Intervening on one query head touches only its own slice, so the other query heads
sharing its KV head are unchanged.

To register an architecture, add a :class:`HeadGeometry` row to ``GEOMETRY`` (or call
:func:`register_geometry`) and its tiny config to ``tests/tiny.py`` (``ARCHS``), which
``tests/models/test_loading.py`` checks row by row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cortexmap.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class BlockLayout:
    """How a decoder block reads and writes the residual stream (what edge-level circuits hook).

    Attributes:
        attn_norm: block attribute normalizing the residual that the q/k/v projections read.
        mlp_norm: block attribute normalizing the residual that the MLP reads.
        mlp: block attribute holding the MLP (its output is the MLP's contribution, unless
            ``post_mlp_norm`` normalizes it first).
        k_proj: attribute of the attention module projecting keys (queries: ``HeadGeometry.q_proj``;
            a fused projection: ``HeadGeometry.qkv_fused``).
        v_proj: attribute of the attention module projecting values.
        residual: ``"pre_norm"``: ``x += attn(attn_norm(x)); x += mlp(mlp_norm(x))``, every head
            adds its own term to the residual; ``"sandwich"``: each sublayer's output is normalized
            again before it is added (Gemma 2/3), ``x += post_attn_norm(attn(attn_norm(x)));
            x += post_mlp_norm(mlp(mlp_norm(x)))``, so head outputs are not added one by one.
        pre_norm_flag: config attribute that must be true for the pre-norm order (OPT's
            ``do_layer_norm_before``; false: ``"post_norm"``, the residual normalized after each add), or None.
        parallel_flag: config attribute that, when true, makes attention and MLP read the same
            residual, ``x += attn(attn_norm(x)) + mlp(mlp_norm(x))`` (GPT-NeoX's
            ``use_parallel_residual``: ``"parallel"``), or None.
        post_attn_norm: block attribute normalizing the attention output before it is added (sandwich).
        post_mlp_norm: block attribute normalizing the MLP output before it is added (sandwich).
    """

    attn_norm: str
    mlp_norm: str
    mlp: str
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    residual: str = "pre_norm"
    pre_norm_flag: str | None = None
    parallel_flag: str | None = None
    post_attn_norm: str | None = None
    post_mlp_norm: str | None = None

    def residual_of(self, config: Any) -> str:
        """The residual order under ``config``: ``"pre_norm"``, ``"parallel"``, ``"sandwich"`` or ``"post_norm"``."""
        if self.pre_norm_flag and not getattr(config, self.pre_norm_flag, True):
            return "post_norm"
        if self.parallel_flag and getattr(config, self.parallel_flag, False):
            return "parallel"
        return self.residual


@dataclass(frozen=True)
class HeadGeometry:
    """Where the heads live in a Hugging Face causal LM of one ``model_type``.

    Attributes:
        layers: dotted path from the CausalLM to the list of decoder blocks.
        attn: attribute of a block holding the attention module.
        out_proj: attribute of the attention module; its input is the concatenated head outputs.
        q_proj: attribute of the attention module projecting queries (None: fused qkv).
        final_norm: dotted paths applied in order to the last hidden state before the unembedding
            (``get_output_embeddings()``); ``None`` modules are skipped (OPT's optional ``project_out``).
        n_heads: config attribute with the number of query heads.
        n_kv_heads: config attribute with the number of key/value heads (None: no GQA).
        out_proj_is_conv1d: GPT-2's ``Conv1D`` stores the weight as ``[in, out]``.
        qkv_fused: attribute of the fused query/key/value projection, if any.
        qkv_order: how the fused projection's output columns are laid out: ``"kind_major"``,
            ``[q | k | v]`` with each part head-major ``[n, d_head]`` (GPT-2's ``c_attn``, split by
            ``split_size``); ``"head_major"``, ``[n_heads, (q, k, v), d_head]`` (GPT-NeoX's
            ``query_key_value``, viewed as ``[.., n_heads, 3 * d_head]`` and chunked in three).
        block: the decoder block's residual layout, for circuits (None: not described).
    """

    layers: str
    attn: str
    out_proj: str
    final_norm: tuple[str, ...]
    q_proj: str | None = "q_proj"
    n_heads: str = "num_attention_heads"
    n_kv_heads: str | None = "num_key_value_heads"
    out_proj_is_conv1d: bool = False
    qkv_fused: str | None = None
    qkv_order: str = "kind_major"
    block: BlockLayout | None = None


_LLAMA_LIKE = HeadGeometry("model.layers", "self_attn", "o_proj", ("model.norm",),
                           block=BlockLayout("input_layernorm", "post_attention_layernorm", "mlp"))
_GEMMA_SANDWICH = replace(_LLAMA_LIKE, block=BlockLayout(
    "input_layernorm", "pre_feedforward_layernorm", "mlp", residual="sandwich",
    post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm"))

GEOMETRY: dict[str, HeadGeometry] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _GEMMA_SANDWICH,
    "gemma3_text": _GEMMA_SANDWICH,
    "gpt2": HeadGeometry(
        "transformer.h", "attn", "c_proj", ("transformer.ln_f",),
        q_proj=None, n_heads="n_head", n_kv_heads=None, out_proj_is_conv1d=True, qkv_fused="c_attn",
        block=BlockLayout("ln_1", "ln_2", "mlp"),
    ),
    "gpt_neox": HeadGeometry(
        "gpt_neox.layers", "attention", "dense", ("gpt_neox.final_layer_norm",),
        q_proj=None, n_kv_heads=None, qkv_fused="query_key_value", qkv_order="head_major",
        block=BlockLayout("input_layernorm", "post_attention_layernorm", "mlp", parallel_flag="use_parallel_residual"),
    ),
    "opt": HeadGeometry(
        "model.decoder.layers", "self_attn", "out_proj",
        ("model.decoder.final_layer_norm", "model.decoder.project_out"), n_kv_heads=None,
        block=BlockLayout("self_attn_layer_norm", "final_layer_norm", "fc2", pre_norm_flag="do_layer_norm_before"),
    ),
}


def register_geometry(model_type: str, geometry: HeadGeometry) -> None:
    """Add or replace the head geometry of ``model_type`` (for architectures not built in)."""
    GEOMETRY[model_type] = geometry


def geometry_for(config: Any) -> HeadGeometry:
    """Return the geometry row of a transformers config.

    Raises:
        UnsupportedArchitectureError: no row for ``config.model_type``.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in GEOMETRY:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported (supported: {', '.join(sorted(GEOMETRY))}); "
            "register it with cortexmap.models.register_geometry(model_type, HeadGeometry(...))"
        )
    return GEOMETRY[model_type]


def head_counts(config: Any, geometry: HeadGeometry) -> tuple[int, int, int, int]:
    """Return ``(n_layers, n_heads, n_kv_heads, d_head)`` read from a config."""
    n_heads = int(getattr(config, geometry.n_heads))
    n_kv = getattr(config, geometry.n_kv_heads, None) if geometry.n_kv_heads else None
    n_kv_heads = int(n_kv) if n_kv else n_heads
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))
    d_head = getattr(config, "head_dim", None) or hidden // n_heads
    n_layers = int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer"))
    return n_layers, n_heads, n_kv_heads, int(d_head)


def kv_head_of(head: int, n_heads: int, n_kv_heads: int) -> int:
    """The key/value head that query head ``head`` reads under grouped-query attention."""
    return head // (n_heads // n_kv_heads)
