"""The one place head outputs are rewritten: a forward pre-hook on the attention output projection.

Per layer, a :class:`LayerEdit` rewrites the out-projection input ``z`` viewed as
``[batch, seq, n_heads, d_head]``::

    z' = where(replace_mask, replace, z * scale)      # then kept only at ``positions``

``scale`` is ``[rows, n_heads]`` (rows = batch or 1): zero ablation is scale 0, amplification
``1 + alpha``. ``replace`` is ``[rows, seq or 1, n_heads, d_head]`` with ``replace_mask``
``[rows, n_heads]``: mean / resample ablation and activation patching. Rows let one forward pass
edit a different head in each batch row (the batched sweep).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from cortexmap.errors import InterventionError


@dataclass
class LayerEdit:
    """How to rewrite one layer's head outputs; see the module docstring for shapes."""

    scale: torch.Tensor | None = None
    replace: torch.Tensor | None = None
    replace_mask: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # [seq] bool, or list of ints resolved at call time

    def apply(self, z: torch.Tensor, n_heads: int) -> torch.Tensor:
        batch, seq, width = z.shape
        heads = z.view(batch, seq, n_heads, width // n_heads)  # [batch, seq, n_heads, d_head]
        new = heads
        if self.scale is not None:
            new = new * self.scale.to(device=new.device, dtype=new.dtype)[:, None, :, None]
        if self.replace is not None:
            replace = self.replace
            if replace.shape[1] not in (1, seq):
                raise InterventionError(
                    f"the replacement activations cover {replace.shape[1]} positions but the input has {seq}: "
                    "source and base prompts must tokenize to the same length"
                )
            if replace.shape[0] not in (1, batch):
                raise InterventionError(
                    f"the replacement activations have {replace.shape[0]} rows but the batch has {batch}"
                )
            mask = self.replace_mask.to(new.device)[:, None, :, None]
            new = torch.where(mask, replace.to(device=new.device, dtype=new.dtype), new)
        if self.positions is not None:
            keep = _position_mask(self.positions, seq, z.device)
            new = torch.where(keep[None, :, None, None], new, heads)
        return new.reshape(batch, seq, width)


def _position_mask(positions: Any, seq: int, device: torch.device) -> torch.Tensor:
    if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        if positions.shape[0] != seq:
            raise InterventionError(f"position mask has {positions.shape[0]} entries for {seq} positions")
        return positions.to(device)
    mask = torch.zeros(seq, dtype=torch.bool, device=device)
    for pos in positions:
        if not -seq <= int(pos) < seq:
            raise InterventionError(f"position {pos} is outside a sequence of {seq} tokens")
        mask[int(pos)] = True
    return mask


def edit_hook(edit: LayerEdit, n_heads: int) -> Callable[..., Any]:
    """A forward pre-hook for the out-projection applying ``edit`` to its input."""

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (edit.apply(args[0], n_heads),) + tuple(args[1:]), kwargs
        key = next(iter(kwargs))
        kwargs = dict(kwargs)
        kwargs[key] = edit.apply(kwargs[key], n_heads)
        return args, kwargs

    return hook


def register_edits(handle: Any, edits: dict[int, LayerEdit]) -> list[Any]:
    """Register pre-hooks for ``edits`` (layer -> edit) and return their removable handles."""
    hooks = []
    try:
        for layer, edit in edits.items():
            module = handle.out_proj(layer)
            hooks.append(module.register_forward_pre_hook(edit_hook(edit, handle.n_heads), with_kwargs=True))
    except Exception:
        for h in hooks:
            h.remove()
        raise
    return hooks
