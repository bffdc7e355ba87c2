"""Save edited and pruned models so that plain transformers loads them.

* An *edited* model (:func:`cortexmap.apply.edit_model`) keeps every shape, so
  :func:`save_model` is ``save_pretrained`` and ``AutoModelForCausalLM.from_pretrained(path)``
  loads it.
* A *pruned* model has different head counts per layer, which no stock transformers config can
  express (attention modules size their projections from ``config.num_attention_heads`` in
  ``__init__`` and ``num_key_value_groups`` is one number per model). :func:`save_pruned` therefore
  writes, beside the safetensors and the unpruned config:

  - ``config.json`` with ``cortexmap_pruning`` (the per-layer layout of
    :mod:`cortexmap.apply.layout`) and ``auto_map`` pointing at
  - ``cortexmap_pruned.py``: a copy of :mod:`cortexmap.apply.layout` plus a subclass of the stock
    ``*ForCausalLM`` that reshapes itself to the layout in ``__init__``;
  - ``cortexmap_pruning.json``: the :class:`~cortexmap.apply.prune.PruneResult` and layout, for people.

  It loads with ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` (no
  cortexmap needed), or with :func:`load_pruned`, which applies cortexmap's own copy of the layout
  code and runs nothing from the directory. Without ``trust_remote_code`` transformers builds
  the unpruned shapes and refuses the weights with a size-mismatch error.
  ``cortexmap.load_model(path)`` (and ``cortexmap info`` / ``map --model path``) loads the
  *dense view* of :mod:`cortexmap.models.pruned` instead: the same function at the original
  shapes, pruned heads zero, so the pruned model can be mapped with its original head ids.

Both directories are written through :mod:`cortexmap.atomic`: they appear whole or not at all.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import torch

from cortexmap.atomic import write_with
from cortexmap.errors import ModelLoadError
from cortexmap.models import ModelHandle, wrap_model
from cortexmap.apply import layout as layout_module
from cortexmap.apply.layout import apply_layout, remote_code_stub

log = logging.getLogger(__name__)

REMOTE_FILE = "cortexmap_pruned.py"
PLAN_FILE = "cortexmap_pruning.json"


def _check_not_dense_view(handle: ModelHandle) -> None:
    if handle.pruned_heads:
        raise ModelLoadError(
            "this is the dense view of a pruned model (load_model of a pruned directory): copy that directory, "
            "or load the compact model with load_pruned(path) and save that"
        )


def save_model(handle: ModelHandle, out_dir: str | Path) -> Path:
    """Save a model of stock shapes (e.g. from :func:`~cortexmap.apply.edit_model`) with its tokenizer.

    Args:
        handle: the model to save.
        out_dir: target directory (replaced if it exists).

    Returns:
        The directory; ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads it.

    Raises:
        ModelLoadError: the model is pruned (use :func:`save_pruned`).
    """
    _check_not_dense_view(handle)
    if getattr(handle.model.config, "cortexmap_pruning", None):
        raise ModelLoadError("this model is pruned and has per-layer head counts; save it with save_pruned(handle, out_dir)")

    def write(tmp: Path) -> None:
        handle.model.save_pretrained(tmp)
        if handle.tokenizer is not None:
            handle.tokenizer.save_pretrained(tmp)

    return write_with(out_dir, write)


def save_pruned(handle: ModelHandle, out_dir: str | Path) -> Path:
    """Save a pruned model so it reloads with transformers (``trust_remote_code=True``) or :func:`load_pruned`.

    Args:
        handle: a model returned by :func:`~cortexmap.apply.prune_heads`.
        out_dir: target directory (replaced if it exists).

    Returns:
        The directory.

    Raises:
        ModelLoadError: the model is not pruned (use :func:`save_model`).
    """
    _check_not_dense_view(handle)
    config = handle.model.config
    layout = getattr(config, "cortexmap_pruning", None)
    if not layout:
        raise ModelLoadError("this model is not pruned; save it with save_model(handle, out_dir)")
    base = type(handle.model).__name__

    def write(tmp: Path) -> None:
        previous = getattr(config, "auto_map", None)
        config.auto_map = {"AutoModelForCausalLM": f"{REMOTE_FILE[:-3]}.CortexmapPruned{base}"}
        try:
            # Internal parameter names: the checkpoint renamings transformers keys by class name
            # (GPT-NeoX's embed_out -> lm_head) do not apply to the pruned subclasses on load.
            handle.model.save_pretrained(tmp, save_original_format=False)
        finally:
            if previous is None:
                del config.auto_map
            else:
                config.auto_map = previous
        (tmp / REMOTE_FILE).write_text(inspect.getsource(layout_module) + remote_code_stub(base))
        (tmp / PLAN_FILE).write_text(json.dumps({"model_class": base, **layout}, indent=1) + "\n")
        if handle.tokenizer is not None:
            handle.tokenizer.save_pretrained(tmp)

    return write_with(out_dir, write)


def load_pruned(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> ModelHandle:
    """Load a directory written by :func:`save_pruned` without running code from it.

    Builds the stock transformers class from the config, reshapes it with cortexmap's own
    :func:`~cortexmap.apply.layout.apply_layout` and loads the safetensors through transformers'
    ``from_pretrained`` (tied weights, dtype and shards handled there).

    Args:
        path: the saved directory.
        device: torch device for the model.
        dtype: load in this dtype (default: the saved one).

    Returns:
        A :class:`~cortexmap.models.ModelHandle` (the PruneResult is in ``config.cortexmap_pruning``).

    Raises:
        ModelLoadError: the directory is not a saved pruned model.
    """
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    path = Path(path)
    if not (path / "config.json").exists() or not (path / PLAN_FILE).exists():
        raise ModelLoadError(
            f"{path} is not a pruned model directory (no config.json or {PLAN_FILE}); save one with save_pruned"
        )
    config = AutoConfig.from_pretrained(path)
    if not getattr(config, "cortexmap_pruning", None):
        raise ModelLoadError(f"{path}/config.json has no cortexmap_pruning layout; was it written by save_pruned?")
    base = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]

    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, config, *args, **kwargs)
        apply_layout(self, config.cortexmap_pruning)

    # A subclass defined here, so the layout code that runs is cortexmap's, not the directory's.
    pruned_class = type(f"CortexmapPruned{base.__name__}", (base,), {"__init__": __init__})
    kwargs: dict[str, Any] = {"config": config}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = pruned_class.from_pretrained(path, **kwargs).to(device)
    tokenizer = None
    if (path / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(path)
    return wrap_model(model, tokenizer, spec=str(path))
