"""Turn a unit's per-prompt metric matrix into tidy effect rows (schema in docs/schema.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from cortexmap.heads import HeadId
from cortexmap.stats import bootstrap_cis


def effect_rows(intervened: np.ndarray, clean: np.ndarray, meta: dict[str, Any], n_layers: int, n_heads: int,
                seed: int, n_boot: int = 1000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Summarise ``intervened [n_prompts, n_layers * n_heads]`` against ``clean [n_prompts]``.

    Columns that are all NaN (heads not measured) get no row; prompts with NaN in a column
    (e.g. resample prompts alone in their length bucket) are left out of that column.

    Returns:
        ``(effects, prompt_effects)``: one row per head, and one row per (head, prompt).
    """
    rows, prompt_rows = [], []
    delta = intervened - clean[:, None]
    measured = ~np.isnan(intervened)
    # Bootstrap all columns measured on the same prompts at once (same resampled prompts per head).
    groups: dict[bytes, list[int]] = {}
    for col in np.flatnonzero(measured.any(0)):
        groups.setdefault(measured[:, col].tobytes(), []).append(int(col))
    cis: dict[int, tuple[float, float]] = {}
    for mask_bytes, cols in groups.items():
        mask = np.frombuffer(mask_bytes, dtype=bool)
        low, high = bootstrap_cis(delta[mask][:, cols], n_boot=n_boot, seed=seed)
        cis.update({c: (float(l), float(h)) for c, l, h in zip(cols, low, high)})
    for col, (low, high) in sorted(cis.items()):
        mask = measured[:, col]
        layer, head = divmod(col, n_heads)
        clean_mean = float(clean[mask].mean())
        effect = float(delta[mask, col].mean())
        rows.append({**meta, "layer": layer, "head": head, "head_id": str(HeadId(layer, head)),
                     "n_prompts": int(mask.sum()), "clean": clean_mean, "intervened": float(intervened[mask, col].mean()),
                     "effect": effect, "effect_normalized": effect / abs(clean_mean) if clean_mean else math.nan,
                     "ci_low": low, "ci_high": high})
        prompts = np.flatnonzero(mask)
        prompt_rows.append(pd.DataFrame({"task": meta["task"], "intervention": meta["intervention"],
                                         "alpha": meta["alpha"], "method": meta["method"], "layer": layer,
                                         "head": head, "prompt": prompts,
                                         "effect": delta[prompts, col].astype(np.float32),
                                         "clean": clean[prompts].astype(np.float32)}))
    effects = pd.DataFrame(rows)
    prompt_effects = pd.concat(prompt_rows, ignore_index=True) if prompt_rows else pd.DataFrame()
    return effects, prompt_effects
