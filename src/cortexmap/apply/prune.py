"""Physical head pruning: a copy of the model without the weights of the pruned heads.

For each pruned query head the rows of the query projection and the columns of the output
projection go (rows of GPT-2's ``Conv1D`` ``c_proj``). Key/value weights go with them:

* multi-head attention (GPT-2, GPT-NeoX, OPT, LLaMA with ``n_kv_heads == n_heads``): the head's own
  key and value rows;
* grouped-query attention: a key/value head goes only when *every* query head of its group is
  pruned. Groups left uneven are served by gathering the kept KV heads (see
  :mod:`cortexmap.apply.layout`), so no parameter is duplicated.

Fused projections: GPT-2's ``c_attn`` is a ``Conv1D`` with weight ``[hidden, 3 * hidden]`` whose
output columns are the ``q | k | v`` blocks, each head-major; GPT-NeoX's ``query_key_value`` is a
``Linear`` whose output rows are per-head interleaved ``[n_heads, 3, d_head]`` (transformers
views its output as ``[..., n_heads, 3 * d_head]`` and chunks the last axis).

``replace="zero"`` matches zero ablation exactly. ``replace="mean"`` matches mean ablation: the
head's mean output ``mean`` (over ``reference`` prompts and positions) contributes the constant
``W_out[:, head] @ mean``, folded into the output projection's bias; a bias parameter is created
where the architecture has none (LLaMA's ``o_proj``), which the result reports.

The pruned copy keeps the stock transformers classes and the unpruned ``config``; the per-layer
shapes are the layout in ``config.cortexmap_pruning``. Head-level tools (``intervene``,
``head_outputs``) assume equal head counts per layer and are not meant for a pruned model.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch

from cortexmap.errors import CortexmapError, InterventionError
from cortexmap.heads import HeadId, HeadLike, as_heads
from cortexmap.interventions import mean_head_outputs
from cortexmap.models import ModelHandle, wrap_model
from cortexmap.apply.layout import LAYOUT_VERSION, apply_layout

log = logging.getLogger(__name__)

REPLACE_MODES = ("zero", "mean")


@dataclass(frozen=True)
class PruneResult:
    """What a pruning removed, measured on the models (parameter counts) or by construction.

    Attributes:
        heads: the pruned query heads, as ``L{layer}H{head}`` names.
        replace: ``zero`` or ``mean``.
        kv_heads_removed: key/value heads whose weights went (with MHA: one per pruned head).
        kv_heads_total: key/value heads of the unpruned model.
        empty_layers: layers with every head pruned.
        bias_added_layers: layers whose output projection got a new bias (``mean`` on bias-free models).
        attn_params_before: parameters inside the attention modules before pruning.
        attn_params_after: the same after pruning.
        total_params_before: all parameters of the unpruned model.
        total_params_after: all parameters of the pruned model.
    """

    heads: tuple[str, ...]
    replace: str
    kv_heads_removed: int
    kv_heads_total: int
    empty_layers: tuple[int, ...]
    bias_added_layers: tuple[int, ...]
    attn_params_before: int
    attn_params_after: int
    total_params_before: int
    total_params_after: int
    n_heads_total: int = field(default=0)

    @property
    def attn_params_removed(self) -> int:
        return self.attn_params_before - self.attn_params_after

    @property
    def total_params_removed(self) -> int:
        return self.total_params_before - self.total_params_after

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(heads=list(self.heads), empty_layers=list(self.empty_layers),
                    bias_added_layers=list(self.bias_added_layers),
                    attn_params_removed=self.attn_params_removed, total_params_removed=self.total_params_removed)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruneResult":
        names = {f for f in cls.__dataclass_fields__}
        kept = {k: v for k, v in data.items() if k in names}
        for key in ("heads", "empty_layers", "bias_added_layers"):
            kept[key] = tuple(kept.get(key, ()))
        return cls(**kept)


def attention_params(handle: ModelHandle) -> int:
    """Parameters inside the attention modules of every layer (projections, biases, q/k norms)."""
    return sum(p.numel() for layer in range(handle.n_layers) for p in handle.attention(layer).parameters())


def pruning_result(handle: ModelHandle) -> PruneResult | None:
    """The :class:`PruneResult` recorded in a pruned model's config (``None`` if it is not pruned)."""
    layout = getattr(handle.model.config, "cortexmap_pruning", None)
    return PruneResult.from_dict(layout["result"]) if layout and "result" in layout else None


def _kv_plan(kept: list[int], n_heads: int, n_kv: int) -> tuple[list[int], int, list[int] | None]:
    """Kept KV heads, query heads per KV head in the pruned layer, and a gather index if groups are uneven."""
    group = n_heads // n_kv
    kv_of = [h // group for h in kept]
    kept_kv = sorted(set(kv_of))
    sizes = [kv_of.count(j) for j in kept_kv]
    if len(set(sizes)) == 1:
        return kept_kv, sizes[0], None
    step = math.gcd(*sizes)
    index = [pos for pos, size in enumerate(sizes) for _ in range(size // step)]
    return kept_kv, step, index


def _rows(width: int, keep: list[int]) -> torch.Tensor:
    """Indices of the rows of blocks ``keep`` in a tensor made of blocks of ``width`` rows."""
    return torch.cat([torch.arange(u * width, (u + 1) * width) for u in keep]) if keep else torch.zeros(0, dtype=torch.long)


class _Planner:
    """Builds the layout and the sliced tensors of one pruning."""

    def __init__(self, handle: ModelHandle) -> None:
        self.handle = handle
        self.geometry = handle.geometry
        self.layout: dict[str, Any] = {"version": LAYOUT_VERSION, "empty": {}, "modules": {}, "attributes": {}}
        self.tensors: dict[str, torch.Tensor] = {}
        self.kv_removed = 0
        self.bias_added: list[int] = []
        self.empty: list[int] = []

    def _path(self, layer: int, name: str = "") -> str:
        base = f"{self.geometry.layers}.{layer}.{self.geometry.attn}"
        return f"{base}.{name}" if name else base

    def _linear(self, path: str, module: Any, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
                extra: dict[str, Any] | None = None, bias: torch.Tensor | None = None) -> None:
        """Record a ``Linear`` keeping output ``rows`` and input ``cols`` (None: all)."""
        weight = module.weight.detach()  # [out, in]
        weight = weight if rows is None else weight[rows]
        weight = weight if cols is None else weight[:, cols]
        old_bias = module.bias.detach() if module.bias is not None else None
        if old_bias is not None and rows is not None:
            old_bias = old_bias[rows]
        new_bias = bias if bias is not None else old_bias
        spec = {"type": "linear", "in": weight.shape[1], "out": weight.shape[0], "bias": new_bias is not None}
        spec.update(extra or {})
        self.layout["modules"][path] = spec
        self.tensors[f"{path}.weight"] = weight.clone()
        if new_bias is not None:
            self.tensors[f"{path}.bias"] = new_bias.clone()

    def _conv1d(self, path: str, module: Any, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> None:
        """Record a GPT-2 ``Conv1D`` (weight ``[in, out]``) keeping input ``rows`` and output ``cols``."""
        weight = module.weight.detach()
        weight = weight if rows is None else weight[rows]
        weight = weight if cols is None else weight[:, cols]
        old_bias = module.bias.detach() if module.bias is not None else None
        if old_bias is not None and cols is not None:
            old_bias = old_bias[cols]
        new_bias = bias if bias is not None else old_bias
        self.layout["modules"][path] = {"type": "conv1d", "in": weight.shape[0], "out": weight.shape[1],
                                        "bias": new_bias is not None}
        self.tensors[f"{path}.weight"] = weight.clone()
        if new_bias is not None:
            self.tensors[f"{path}.bias"] = new_bias.clone()

    def layer(self, layer: int, pruned: set[int], means: torch.Tensor | None) -> None:
        """Plan one layer; ``means`` is ``[n_heads, d_head]`` for mean replacement."""
        h = self.handle
        n, d = h.n_heads, h.d_head
        kept = [i for i in range(n) if i not in pruned]
        attn, out = h.attention(layer), h.out_proj(layer)
        conv = self.geometry.out_proj_is_conv1d
        cols = _rows(d, kept)
        bias = None
        if means is not None:
            w = out.weight.detach()
            # Mean replacement: the pruned heads' constant contribution W_out[:, head] @ mean moves into the bias.
            shift = sum((w[i * d:(i + 1) * d].T if conv else w[:, i * d:(i + 1) * d]) @ means[i] for i in sorted(pruned))
            if out.bias is None:
                self.bias_added.append(layer)
            bias = (out.bias.detach() if out.bias is not None else torch.zeros_like(shift)) + shift
        out_path = self._path(layer, self.geometry.out_proj)
        if conv:
            self._conv1d(out_path, out, rows=cols, bias=bias)
        else:
            self._linear(out_path, out, cols=cols, bias=bias)
        if not kept:
            self.layout["empty"][self._path(layer)] = {"out_proj": self.geometry.out_proj,
                                                      "layer_idx": getattr(attn, "layer_idx", layer)}
            self.kv_removed += h.n_kv_heads
            self.empty.append(layer)
            return
        attrs: dict[str, Any] = {}
        if self.geometry.qkv_fused and conv:  # GPT-2: q | k | v column blocks of width hidden
            hidden = n * d
            qkv_cols = torch.cat([block * hidden + cols for block in range(3)])
            self._conv1d(self._path(layer, self.geometry.qkv_fused), getattr(attn, self.geometry.qkv_fused), cols=qkv_cols)
            self.kv_removed += len(pruned)
            attrs["split_size"] = len(kept) * d
        elif self.geometry.qkv_fused:  # GPT-NeoX: rows [n_heads, 3, d_head]
            self._linear(self._path(layer, self.geometry.qkv_fused), getattr(attn, self.geometry.qkv_fused),
                         rows=_rows(3 * d, kept))
            self.kv_removed += len(pruned)
        else:
            kept_kv, groups, index = _kv_plan(kept, n, h.n_kv_heads)
            self.kv_removed += h.n_kv_heads - len(kept_kv)
            self._linear(self._path(layer, self.geometry.q_proj), getattr(attn, self.geometry.q_proj), rows=cols)
            extra = None if index is None else {"type": "kv_expand", "head_dim": d, "index": index}
            for name in ("k_proj", "v_proj"):
                self._linear(self._path(layer, name), getattr(attn, name), rows=_rows(d, kept_kv), extra=extra)
            if hasattr(attn, "num_key_value_groups"):
                attrs["num_key_value_groups"] = groups
        if hasattr(attn, "num_heads"):
            attrs["num_heads"] = len(kept)
        if attrs:
            self.layout["attributes"][self._path(layer)] = attrs


def _validate(handle: ModelHandle, heads: Iterable[HeadLike], replace: str, reference: Any) -> list[HeadId]:
    if replace not in REPLACE_MODES:
        raise CortexmapError(f"unknown replacement {replace!r}: use 'zero' or 'mean'")
    if getattr(handle.model.config, "cortexmap_pruning", None):
        raise CortexmapError("this model is already pruned; prune the original model with the union of both head sets")
    if replace == "mean" and reference is None:
        raise InterventionError("replace='mean' needs reference=... prompts (or precomputed mean_head_outputs)")
    return [handle.head(h) for h in as_heads(list(heads))]


def prune_heads(handle: ModelHandle, heads: Iterable[HeadLike], replace: str = "zero", reference: Any = None) -> ModelHandle:
    """Return a new model without the weights of ``heads``; ``handle`` is left untouched.

    Args:
        handle: the unpruned model.
        heads: query heads to remove (``HeadId``, ``"L3H5"`` or ``(layer, head)``).
        replace: ``zero`` (as zero ablation) or ``mean`` (as mean ablation over ``reference``).
        reference: prompts or token ids for ``mean``, or precomputed ``{layer: mean z}`` from
            :func:`~cortexmap.interventions.mean_head_outputs` (averaged over positions).

    Returns:
        A :class:`~cortexmap.models.ModelHandle` of the pruned copy; its :class:`PruneResult` is
        ``pruning_result(pruned)`` and is also stored in ``config.cortexmap_pruning["result"]``.

    Raises:
        UnknownHeadError: a head outside the model.
        CortexmapError: an unknown ``replace`` or an already pruned model.
        InterventionError: ``replace="mean"`` without ``reference``.
    """
    pruned = _validate(handle, heads, replace, reference)
    by_layer: dict[int, set[int]] = {}
    for head in pruned:
        by_layer.setdefault(head.layer, set()).add(head.head)
    means: dict[int, torch.Tensor] = {}
    if replace == "mean" and by_layer:
        layers = sorted(by_layer)
        means = reference if isinstance(reference, dict) else mean_head_outputs(handle, reference, layers)
    planner = _Planner(handle)
    for layer in sorted(by_layer):
        layer_means = means[layer].reshape(-1, handle.n_heads, handle.d_head).mean(0) if layer in means else None
        planner.layer(layer, by_layer[layer], layer_means)
    model = copy.deepcopy(handle.model)
    apply_layout(model, planner.layout)
    state = {name: t.to(dtype=handle.dtype) for name, t in planner.tensors.items()}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name])
    new = wrap_model(model, handle.tokenizer, spec=f"{handle.spec}+pruned", model_hash="")
    result = PruneResult(
        heads=tuple(str(h) for h in pruned), replace=replace, kv_heads_removed=planner.kv_removed,
        kv_heads_total=handle.n_layers * handle.n_kv_heads,
        empty_layers=tuple(planner.empty),
        bias_added_layers=tuple(planner.bias_added),
        attn_params_before=attention_params(handle), attn_params_after=attention_params(new),
        total_params_before=handle.n_params, total_params_after=new.n_params,
        n_heads_total=handle.n_layers * handle.n_heads,
    )
    model.config.cortexmap_pruning = {**planner.layout, "result": result.to_dict()}
    if result.bias_added_layers:
        log.info("added an output-projection bias in %d layers to hold the mean of pruned heads",
                 len(result.bias_added_layers))
    log.info("pruned %d heads (%d KV heads), %d parameters", len(pruned), result.kv_heads_removed,
             result.total_params_removed)
    return new
