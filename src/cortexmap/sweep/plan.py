"""Sizing a sweep: rows per forward pass, and the forward-pass count and memory of a planned run."""

from __future__ import annotations

from typing import Any

import torch


def bytes_per_row(handle: Any, seq: int) -> int:
    """Rough peak activation bytes of one prompt row through one block (attention scores + MLP)."""
    config = handle.model.config
    d_model = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))
    d_ff = int(getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None) or 4 * d_model)
    width = 8 * d_model + 3 * d_ff + 2 * handle.n_heads * seq
    return seq * width * torch.finfo(handle.dtype).bits // 8


def auto_rows(handle: Any, seq: int, budget_bytes: int | None = None) -> int:
    """Rows (prompts x heads) per forward pass for ``--batch-size auto``.

    On a GPU a quarter of the free memory goes to activations; on a CPU 256 rows, where larger
    batches stop paying off.
    """
    if budget_bytes is None:
        if handle.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(handle.device)
            budget_bytes = free // 4
        else:
            return 256
    return max(1, min(8192, budget_bytes // max(1, bytes_per_row(handle, seq))))


def forward_equivalents(n_layers: int, n_heads: int, n_prompts: int, rows_per_pass: int) -> float:
    """Full forward passes (of ``n_prompts`` prompts) an exact sweep of one unit costs.

    Head ``(l, h)`` runs ``n_layers - l`` of ``n_layers`` blocks, so a unit costs about
    ``n_heads * (n_layers + 1) / 2`` full passes, plus the clean pass.
    """
    del n_prompts, rows_per_pass
    return n_heads * (n_layers + 1) / 2 + 1
