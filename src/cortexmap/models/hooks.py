"""The two ways cortexmap reaches inside a model: head-output pre-hooks and the eager-attention switch.

Head outputs. The input of a layer's attention output projection (``out_proj`` of its
:class:`~cortexmap.models.HeadGeometry` row) is the per-head outputs concatenated head-major.
:func:`register_head_hooks` registers a forward pre-hook there that hands a function ``fn(z)`` the
input viewed as ``z [batch, seq, n_heads, d_head]``. ``fn`` may return ``None`` (it only reads)
or a tensor of the same shape that replaces the input (it edits); the hook flattens it back.
Transformers calls the projection positionally; a keyword call is handled too. Code that reads
or edits head outputs registers through here, so the view and the argument handling exist once.

Eager attention. Attention weights exist only with ``attn_implementation="eager"``.
:func:`eager_attention` switches a model to eager for a ``with`` block and restores the previous
implementation afterwards, on error too: whatever the block did, the model leaves it with the
implementation it entered with (an unset ``None`` is left alone).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import torch

from cortexmap.errors import CortexmapError

HeadFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def head_pre_hook(n_heads: int, fn: HeadFn) -> Callable[..., Any]:
    """The raw forward pre-hook (``with_kwargs=True``) that calls ``fn`` on the head view of the input."""

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = None if args else next(iter(kwargs))
        flat = args[0] if args else kwargs[key]
        batch, seq, width = flat.shape
        new = fn(flat.view(batch, seq, n_heads, width // n_heads))  # [batch, seq, n_heads, d_head]
        if new is None:
            return None
        new = new.reshape(batch, seq, width)
        if args:
            return (new,) + tuple(args[1:]), kwargs
        return args, {**kwargs, key: new}

    return hook


def register_head_hooks(handle: Any, fns: Mapping[int, HeadFn]) -> list[Any]:
    """Register one head-output pre-hook per layer and return the removable hook handles.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle`.
        fns: layer -> ``fn(z [batch, seq, n_heads, d_head]) -> None | replacement``.

    Returns:
        The hook handles, in the order of ``fns``; call ``.remove()`` on each to undo. If one
        registration fails, the ones already made are removed before the error propagates.

    Raises:
        CortexmapError: a layer narrower than ``n_heads`` heads (a compact pruned model).
    """
    hooks: list[Any] = []
    try:
        for layer, fn in fns.items():
            module = handle.out_proj(layer)
            width = module.weight.shape[0 if handle.geometry.out_proj_is_conv1d else 1]
            if width != handle.n_heads * handle.d_head:
                raise CortexmapError(
                    f"layer {layer} of {handle.spec} holds {width // handle.d_head} of {handle.n_heads} heads: "
                    "a compact pruned model; intervene on its dense view, cortexmap.load_model(handle.model)"
                )
            hooks.append(module.register_forward_pre_hook(head_pre_hook(handle.n_heads, fn), with_kwargs=True))
    except BaseException:
        for h in hooks:
            h.remove()
        raise
    return hooks


@contextmanager
def head_hooks(handle: Any, fns: Mapping[int, HeadFn]) -> Iterator[None]:
    """:func:`register_head_hooks` for the duration of a ``with`` block (removed on exit, on error too)."""
    hooks = register_head_hooks(handle, fns)
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Run a ``with`` block with eager attention (attention weights are returned), then restore.

    Args:
        model: a Hugging Face model or a :class:`~cortexmap.models.ModelHandle`.
    """
    model = model if hasattr(model, "set_attn_implementation") else model.model  # a handle: its HF model
    previous = getattr(model.config, "_attn_implementation", None)
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous is not None and model.config._attn_implementation != previous:
            model.set_attn_implementation(previous)
