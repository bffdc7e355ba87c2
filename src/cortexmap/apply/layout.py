"""Per-layer attention layouts: rebuild a stock transformers model with fewer heads per layer.

A pruned model keeps its stock transformers classes; only some submodules change shape. The
change is described by a *layout*, a JSON-able dict stored as ``config.cortexmap_pruning``::

    {"version": 1,
     "empty": {"model.layers.5.self_attn": {"out_proj": "o_proj", "layer_idx": 5}},
     "modules": {"model.layers.0.self_attn.q_proj": {"type": "linear", "in": 576, "out": 384, "bias": false},
                 "model.layers.0.self_attn.k_proj": {"type": "kv_expand", "in": 576, "out": 128,
                                                     "bias": false, "head_dim": 64, "index": [0, 1, 1]},
                 "transformer.h.0.attn.c_attn": {"type": "conv1d", "in": 32, "out": 72, "bias": true}},
     "attributes": {"model.layers.0.self_attn": {"num_key_value_groups": 1}}}

``apply_layout(model, layout)`` replaces each listed module by an uninitialised one of the
recorded shape (on the device and dtype of the one it replaces) and sets the listed attributes, so
that the state dict of the pruned model loads into it. Three module kinds exist:

* ``linear`` / ``conv1d``: ``nn.Linear`` or GPT-2's ``Conv1D`` (weight ``[in, out]``) of a new size.
* ``kv_expand``: a key/value projection of the kept KV heads whose output is gathered to one KV
  head per *group of query heads* (``index``). Transformers' attention repeats each KV head for a
  fixed number of query heads (``num_key_value_groups``); after pruning some query heads of a
  group the groups are uneven, so the few kept KV heads are gathered instead. Parameters stay
  those of the kept KV heads; only the activations (and KV cache) are wider.
* an ``empty`` attention: every head of the layer is pruned. :class:`EmptyAttention` keeps only the
  output projection (zero input width, so its output is its bias) and writes a one-channel
  placeholder into the KV cache so cached generation still counts positions.

This file imports only torch and transformers: :func:`cortexmap.apply.save_pruned` copies it
verbatim next to the weights as ``cortexmap_pruned.py``, where a three-line subclass of the stock
``*ForCausalLM`` class calls :func:`apply_layout` in ``__init__``. That makes the saved directory
load with ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

LAYOUT_VERSION = 1
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


class KVExpand(nn.Linear):
    """A key or value projection whose heads are gathered by ``index`` after projecting.

    The weight holds only the kept KV heads (``out = n_kept_kv * head_dim`` rows); the output
    has ``len(index)`` heads, head ``i`` being kept KV head ``index[i]``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, head_dim: int, index: list[int],
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.head_dim = int(head_dim)
        self.index = [int(i) for i in index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        heads = y.view(*y.shape[:-1], -1, self.head_dim)  # [..., n_kept_kv, head_dim]
        gathered = heads[..., torch.tensor(self.index, device=y.device), :]  # [..., len(index), head_dim]
        return gathered.reshape(*y.shape[:-1], len(self.index) * self.head_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, head_dim={self.head_dim}, index={self.index}"


class EmptyAttention(nn.Module):
    """The attention of a layer whose heads are all pruned: its output is the out-projection bias.

    The out projection is kept (zero input width) so the bias and the module path survive.
    """

    def __init__(self, out_proj_name: str, out_proj: nn.Module, layer_idx: int | None) -> None:
        super().__init__()
        self.out_proj_name = out_proj_name
        self.layer_idx = layer_idx
        self.add_module(out_proj_name, out_proj)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cache = next((kwargs[k] for k in _CACHE_KWARGS if kwargs.get(k) is not None), None)
        if cache is not None and self.layer_idx is not None and hasattr(cache, "update"):
            # One zero channel keeps this layer's cache length right (get_seq_length reads layer 0).
            batch, seq = hidden.shape[:2]
            placeholder = hidden.new_zeros(batch, 1, seq, 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        out_proj = getattr(self, self.out_proj_name)
        width = getattr(out_proj, "nf", None) or out_proj.out_features  # Conv1D or Linear
        out = hidden.new_zeros(*hidden.shape[:-1], width)
        if out_proj.bias is not None:
            out = out + out_proj.bias
        return out, None


def _resolve(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _set(root: Any, dotted: str, module: nn.Module) -> None:
    parent_path, _, name = dotted.rpartition(".")
    parent = _resolve(root, parent_path) if parent_path else root
    if name.isdigit():
        parent[int(name)] = module
    else:
        setattr(parent, name, module)


def build_module(spec: dict[str, Any], device: Any, dtype: Any) -> nn.Module:
    """An uninitialised projection of the shape ``spec`` records (see the module docstring)."""
    kind, n_in, n_out, bias = spec["type"], int(spec["in"]), int(spec["out"]), bool(spec["bias"])
    with torch.device(device), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")  # emptied projections
        if kind == "linear":
            module: nn.Module = nn.Linear(n_in, n_out, bias=bias, dtype=dtype)
        elif kind == "kv_expand":
            module = KVExpand(n_in, n_out, bias, spec["head_dim"], spec["index"], dtype=dtype)
        elif kind == "conv1d":
            from transformers.pytorch_utils import Conv1D

            module = Conv1D(n_out, n_in).to(dtype)
            if not bias:
                module.bias = None
        else:
            raise ValueError(f"unknown module type {kind!r} in a cortexmap pruning layout")
    return module


def apply_layout(model: nn.Module, layout: dict[str, Any] | None) -> nn.Module:
    """Reshape ``model`` in place to ``layout``; a missing layout leaves it unchanged.

    Args:
        model: a stock transformers causal LM built from the unpruned config.
        layout: the dict described in the module docstring (``config.cortexmap_pruning``).

    Returns:
        The same model object, with new (uninitialised) modules where the layout says.
    """
    if not layout:
        return model
    if int(layout.get("version", LAYOUT_VERSION)) != LAYOUT_VERSION:
        raise ValueError(f"cortexmap pruning layout version {layout.get('version')} is not {LAYOUT_VERSION}")
    reference = next(model.parameters())
    device, dtype = reference.device, reference.dtype
    for path, spec in layout.get("empty", {}).items():
        old = _resolve(model, path)
        placeholder = getattr(old, spec["out_proj"])
        _set(model, path, EmptyAttention(spec["out_proj"], placeholder, spec.get("layer_idx")))
    for path, spec in layout.get("modules", {}).items():
        old = _resolve(model, path)
        weight = getattr(old, "weight", None)
        _set(model, path, build_module(spec, weight.device if weight is not None else device,
                                       weight.dtype if weight is not None else dtype))
    for path, values in layout.get("attributes", {}).items():
        module = _resolve(model, path)
        for name, value in values.items():
            setattr(module, name, value)
    return model


def remote_code_stub(base_class: str) -> str:
    """Source appended to this file in a saved directory: the subclass ``auto_map`` points at."""
    return (
        f"\n\nfrom transformers import {base_class} as _Base\n\n\n"
        f"class CortexmapPruned{base_class}(_Base):\n"
        f'    """{base_class} with the per-layer heads recorded in ``config.cortexmap_pruning``."""\n\n'
        "    def __init__(self, config, *args, **kwargs):\n"
        "        super().__init__(config, *args, **kwargs)\n"
        '        apply_layout(self, getattr(config, "cortexmap_pruning", None))\n'
    )
