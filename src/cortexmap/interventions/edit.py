"""The one description of a head-output rewrite, applied in a head-output pre-hook (:mod:`cortexmap.models.hooks`).

Per layer, a :class:`LayerEdit` rewrites the out-projection input ``z`` viewed as
``[batch, seq, n_heads, d_head]``::

    z' = where(replace_mask, replace, z * scale)      # then kept only at ``positions``

``scale`` is ``[rows, n_heads]`` (rows = batch or 1): zero ablation is scale 0, amplification
``1 + alpha``. ``replace`` is ``[rows, seq or 1, n_heads, d_head]`` with ``replace_mask``
``[rows, n_heads]``: mean / resample ablation and activation patching. Rows let one forward pass
edit a different head in each batch row (the batched sweep). ``replace_positions`` (``[rows,
seq]`` bool, optional) limits the replacement to some positions of each row: patching from a
corrupt prompt of another length replaces only the aligned positions (:mod:`cortexmap.tasks.alignment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from cortexmap.errors import InterventionError
from cortexmap.models.hooks import head_pre_hook, register_head_hooks


@dataclass
class LayerEdit:
    """How to rewrite one layer's head outputs; see the module docstring for shapes."""

    scale: torch.Tensor | None = None
    replace: torch.Tensor | None = None
    replace_mask: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # [seq] bool, or list of ints resolved at call time
    replace_positions: torch.Tensor | None = None  # [rows, seq] bool: where each row is replaced

    def apply(self, heads: torch.Tensor) -> torch.Tensor:
        """The edited head outputs ``[batch, seq, n_heads, d_head]`` from the clean ones (same shape)."""
        batch, seq = heads.shape[:2]
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
            if self.replace_positions is not None:
                mask = mask & self.replace_positions.to(new.device)[:, :, None, None]
            new = torch.where(mask, replace.to(device=new.device, dtype=new.dtype), new)
        if self.positions is not None:
            keep = _position_mask(self.positions, seq, heads.device)
            new = torch.where(keep[None, :, None, None], new, heads)
        return new


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
    return head_pre_hook(n_heads, edit.apply)


def register_edits(handle: Any, edits: dict[int, LayerEdit]) -> list[Any]:
    """Register pre-hooks for ``edits`` (layer -> edit) and return their removable handles."""
    return register_head_hooks(handle, {layer: edit.apply for layer, edit in edits.items()})
