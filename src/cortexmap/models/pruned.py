"""The *dense view* of a pruned model: its weights put back at the original shapes, pruned heads zero.

A model pruned by :func:`cortexmap.apply.prune_heads` (and saved by ``save_pruned``) has
fewer heads in some layers; its config records the pruning as ``config.cortexmap_pruning``
(the layout of :mod:`cortexmap.apply.layout`, with the pruned heads under ``result``). The
sweep, the probes and every head tool address heads on a rectangular ``layers x heads`` grid, so
:func:`load_model <cortexmap.models.load_model>` loads a pruned model as a stock-shaped model
computing the same function:

* each surviving head keeps its original id ``L{layer}H{head}`` and its weights, placed back in
  its original rows / columns (:func:`head_slices`);
* a pruned head's query rows and output-projection columns are zero, so its output reaches
  nothing: every intervention on it has effect exactly zero. A key/value head is zero only
  when every query head of its group was pruned (as pruning removed it);
* the output-projection bias is the pruned model's (with ``replace="mean"`` it holds the
  pruned heads' mean contribution; a bias-free architecture gets a bias parameter for it).

Only the numbers of a dense view are the pruned model's; its parameter count is the original
one (``describe()`` reports the pruned heads beside it). Nothing is executed from the directory:
the stock transformers class is built from the config and the safetensors are read as tensors.
To get the compact model itself, use :func:`cortexmap.apply.load_pruned`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from cortexmap.errors import ModelLoadError
from cortexmap.heads import HeadId
from cortexmap.models.geometry import HeadGeometry, geometry_for, head_counts


def is_pruned(config: Any) -> bool:
    """Whether a config describes a model pruned by cortexmap (``config.cortexmap_pruning``)."""
    return bool(getattr(config, "cortexmap_pruning", None))


def pruned_heads(config: Any) -> tuple[HeadId, ...]:
    """The query heads a pruned model lost, read from ``config.cortexmap_pruning["result"]``.

    Raises:
        ModelLoadError: the config records a pruning without its head list.
    """
    result = (getattr(config, "cortexmap_pruning", None) or {}).get("result") or {}
    if "heads" not in result:
        raise ModelLoadError("the config records a pruning layout but not which heads were pruned; re-save it with save_pruned")
    return tuple(sorted(HeadId.parse(h) for h in result["heads"]))


def _blocks(width: int, keep: list[int]) -> torch.Tensor:
    """Indices of blocks ``keep`` in an axis made of blocks of ``width``."""
    if not keep:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(u * width, (u + 1) * width) for u in keep])


def head_slices(geometry: HeadGeometry, kept: list[int], n_heads: int, n_kv_heads: int,
                d_head: int) -> dict[str, tuple[int, torch.Tensor]]:
    """Where the kept heads of one layer sit in its attention parameters at the original shapes.

    Args:
        geometry: the architecture's row.
        kept: the query heads the layer keeps, ascending.
        n_heads: query heads of the unpruned layer.
        n_kv_heads: key/value heads of the unpruned layer.
        d_head: width of one head.

    Returns:
        Parameter name relative to the attention module -> ``(axis, index)``: the pruned tensor
        is the original one's ``index_select(axis, index)``. Parameters not listed keep their shape.
    """
    cols = _blocks(d_head, kept)
    out = geometry.out_proj
    slices = {f"{out}.weight": (0 if geometry.out_proj_is_conv1d else 1, cols)}  # Conv1D is [in, out]
    fused = geometry.qkv_fused
    if fused and geometry.out_proj_is_conv1d:  # GPT-2: q | k | v column blocks of width n_heads * d_head
        qkv = torch.cat([block * n_heads * d_head + cols for block in range(3)])
        slices.update({f"{fused}.weight": (1, qkv), f"{fused}.bias": (0, qkv)})
    elif fused:  # GPT-NeoX: rows [n_heads, 3, d_head]
        rows = _blocks(3 * d_head, kept)
        slices.update({f"{fused}.weight": (0, rows), f"{fused}.bias": (0, rows)})
    else:
        group = n_heads // n_kv_heads
        kv_rows = _blocks(d_head, sorted({h // group for h in kept}))
        for name, rows in ((geometry.q_proj, cols), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            slices.update({f"{name}.weight": (0, rows), f"{name}.bias": (0, rows)})
    return slices


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model directory (one file or an index of shards)."""
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in sorted(path.glob("*.safetensors"))]
    if not files:
        raise ModelLoadError(f"{path} has no safetensors weights; save the pruned model again with save_pruned")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(path / name)))
    return state


def dense_model(config: Any, state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> Any:
    """Build the dense view of a pruned model from its config and state dict (see the module docstring).

    Args:
        config: the pruned model's config (with ``cortexmap_pruning``); it is copied, not changed.
        state: the pruned model's tensors, by parameter name (``save_pruned`` writes these names).
        dtype: dtype of the result (default: that of the tensors).

    Returns:
        A stock transformers ``*ForCausalLM`` in eval mode whose config keeps ``cortexmap_pruning``.

    Raises:
        ModelLoadError: the tensors do not match the recorded pruning.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = copy.deepcopy(config)
    if hasattr(config, "auto_map"):  # it points at the compact class; a dense view is stock-shaped
        del config.auto_map
    geometry = geometry_for(config)
    n_layers, n_heads, n_kv, d_head = head_counts(config, geometry)
    gone: dict[int, set[int]] = {}
    for head in pruned_heads(config):
        gone.setdefault(head.layer, set()).add(head.head)
    dtype = dtype or next(iter(state.values())).dtype
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config).to(dtype)
    slices: dict[str, tuple[int, torch.Tensor]] = {}
    with torch.no_grad():
        for layer, heads in gone.items():
            prefix = f"{geometry.layers}.{layer}.{geometry.attn}."
            for name, param in model.named_parameters():
                if name.startswith(prefix):
                    param.zero_()  # what the state does not fill belongs to pruned heads
            kept = [h for h in range(n_heads) if h not in heads]
            slices.update({prefix + k: v for k, v in head_slices(geometry, kept, n_heads, n_kv, d_head).items()})
        target = model.state_dict(keep_vars=True)
        for name, value in state.items():
            _place(model, target, slices, name, value.to(dtype))
    loaded = {target[name].data_ptr() for name in state if name in target}
    missing = [n for n, t in target.items() if n not in state and t.data_ptr() not in loaded
               and not any(n.startswith(f"{geometry.layers}.{l}.{geometry.attn}.") for l in gone)]
    if missing:
        raise ModelLoadError(f"the pruned weights lack {missing[0]} ({len(missing)} tensors); the directory is incomplete")
    return model.eval()


def _place(model: Any, target: dict[str, torch.Tensor], slices: dict[str, tuple[int, torch.Tensor]],
           name: str, value: torch.Tensor) -> None:
    if name not in target:
        module_path, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_path) if module_path else model
        if leaf == "bias" and getattr(module, "bias", 0) is None:  # mean pruning added an out-projection bias
            module.bias = torch.nn.Parameter(value.clone(), requires_grad=module.weight.requires_grad)
            target[name] = module.bias
            return
        raise ModelLoadError(f"the pruned weights hold {name}, which a {model.config.model_type} model does not have")
    param = target[name]
    if name in slices:
        axis, index = slices[name]
        if value.shape[axis] != len(index):
            raise ModelLoadError(f"{name} has {value.shape[axis]} rows where the recorded pruning keeps {len(index)}")
        param.index_copy_(axis, index.to(param.device), value.to(param.device))
    elif value.shape != param.shape:
        raise ModelLoadError(f"{name} is {tuple(value.shape)}, expected {tuple(param.shape)}: not a cortexmap pruning")
    else:
        param.copy_(value)


def load_dense(path: Path, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """The dense view of a directory written by ``save_pruned``, and its tokenizer (or None).

    Raises:
        ModelLoadError: an unreadable config, weights or tokenizer, or weights that do not match
            the recorded pruning.
    """
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path)
        model = dense_model(config, read_safetensors(path), dtype)
        tokenizer = AutoTokenizer.from_pretrained(path) if (path / "tokenizer_config.json").exists() else None
    except ModelLoadError:
        raise
    except Exception as exc:  # safetensors and transformers raise many kinds on damaged files
        first = f"{type(exc).__name__}: {exc}".split("\n")[0]
        raise ModelLoadError(f"{path} is a damaged pruned model directory ({first}); save it again with save_pruned") from None
    return model, tokenizer


def dir_is_pruned(path: Path) -> bool:
    """Whether ``path/config.json`` records a cortexmap pruning (read as JSON: nothing is built)."""
    try:
        return bool(json.loads((path / "config.json").read_text()).get("cortexmap_pruning"))
    except (OSError, ValueError):
        return False
