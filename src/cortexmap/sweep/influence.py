"""Measurements behind the regulator-head and redundancy analyses (the model side).

*Influence* of a source head on a later target head: zero-ablate the source and measure, per
prompt, the target's relative output change ``||z' - z|| / ||z||`` (over positions and features)
and the KL divergence of its attention rows (clean || ablated, mean over query positions).
The prefix-reuse engine runs every source of a layer on the batch axis, starting at its layer.

Affordability: a *screen* measures every source head on a few prompts; the top candidates by
breadth x strength are then measured on every prompt of every condition.

*Pairs*: joint zero ablation of the strongest heads of a task, two at a time, for redundancy.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch

from cortexmap.heads import HeadId
from cortexmap.interventions.capture import recording
from cortexmap.interventions.context import intervene
from cortexmap.models.hooks import eager_attention
from cortexmap.sweep.engine import clean_cache, head_block_edit, run_from_layer


@contextmanager
def attention_weights(handle: Any, layers: range) -> Iterator[dict[int, torch.Tensor]]:
    """Collect each listed layer's attention weights ``[rows, n_heads, q, k]`` (eager attention)."""
    store: dict[int, torch.Tensor] = {}
    hooks = []

    def make(layer: int):  # noqa: ANN202
        def hook(module: Any, args: Any, output: Any) -> None:
            if isinstance(output, tuple) and len(output) > 1 and output[1] is not None:
                store[layer] = output[1].detach()

        return hook

    try:
        for layer in layers:
            hooks.append(handle.attention(layer).register_forward_hook(make(layer)))
        yield store
    finally:
        for h in hooks:
            h.remove()


def _group_by_length(handle: Any, prompts: list[str]) -> list[torch.Tensor]:
    groups: dict[int, list[torch.Tensor]] = {}
    for text in prompts:
        ids = handle.tokenizer(text, return_tensors="pt")["input_ids"][0]
        groups.setdefault(len(ids), []).append(ids)
    return [torch.stack(v).to(handle.device) for _, v in sorted(groups.items())]


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, mean over query positions: ``[..., q, k] -> [...]``."""
    eps = 1e-10
    return (p * ((p + eps).log() - (q + eps).log())).sum(-1).mean(-1)


@torch.no_grad()
def _influence_group(handle: Any, ids: torch.Tensor, sources: dict[int, list[int]], rows_per_pass: int,
                     condition: str, prompt_offset: int) -> list[pd.DataFrame]:
    n_l, n_h = handle.n_layers, handle.n_heads
    later_all = range(n_l)
    with attention_weights(handle, later_all) as clean_attn:
        cache = clean_cache(handle, ids)
    clean_z, clean_attn = cache.z, dict(clean_attn)
    batch = ids.shape[0]
    frames = []
    for layer, heads in sorted(sources.items()):
        later = range(layer + 1, n_l)
        if not later:
            continue
        step = max(1, rows_per_pass // batch)
        for start in range(0, len(heads), step):
            chunk = heads[start:start + step]
            k = len(chunk)
            edit = head_block_edit(n_h, chunk, batch, "zero")
            with attention_weights(handle, later) as attn, recording(handle, list(later)) as z:
                run_from_layer(handle, cache, layer, edit, k)
            for target_layer in later:
                base_z = clean_z[target_layer].repeat(k, 1, 1, 1)  # [k*b, s, h, d]
                diff = (z[target_layer] - base_z).pow(2).sum((1, 3)).sqrt()
                change = (diff / base_z.pow(2).sum((1, 3)).sqrt().clamp_min(1e-12)).view(k, batch, n_h)
                if target_layer in attn and target_layer in clean_attn:
                    kl = _kl(clean_attn[target_layer].repeat(k, 1, 1, 1), attn[target_layer]).view(k, batch, n_h)
                else:
                    kl = torch.full_like(change, float("nan"))
                src, prm, tgt = np.meshgrid(np.array(chunk), np.arange(batch), np.arange(n_h), indexing="ij")
                frames.append(pd.DataFrame({
                    "condition": condition, "prompt": prompt_offset + prm.ravel(),
                    "source_layer": layer, "source_head": src.ravel(),
                    "target_layer": target_layer, "target_head": tgt.ravel(),
                    "out_change": change.float().cpu().numpy().ravel(), "attn_kl": kl.float().cpu().numpy().ravel()}))
    return frames


def measure_influence(handle: Any, prompts: dict[str, list[str]], sources: list[tuple[int, int]] | None = None,
                      rows_per_pass: int = 128, progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Influence of each source head on every later head, per condition and prompt.

    Args:
        prompts: condition label (e.g. ``"reasoning:multi_step"``) -> prompts.
        sources: ``(layer, head)`` source heads (default: all).

    Returns:
        The influence table of :mod:`cortexmap.analysis.regulators` (condition, prompt,
        source_layer, source_head, target_layer, target_head, out_change, attn_kl).
    """
    wanted = sources if sources is not None else [(l, h) for l in range(handle.n_layers) for h in range(handle.n_heads)]
    by_layer: dict[int, list[int]] = {}
    for layer, head in wanted:
        by_layer.setdefault(layer, []).append(head)
    frames = []
    with eager_attention(handle):
        for condition, texts in prompts.items():
            if progress:
                progress(f"influence: {condition} ({len(texts)} prompts, {len(wanted)} source heads)")
            offset = 0
            for ids in _group_by_length(handle, texts):
                frames += _influence_group(handle, ids, by_layer, rows_per_pass, condition, offset)
                offset += ids.shape[0]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def screen_sources(influence: pd.DataFrame, top: int) -> list[tuple[int, int]]:
    """The ``top`` source heads by breadth x strength of their screened influence."""
    per_source = influence.groupby(["source_layer", "source_head", "target_layer", "target_head"])["out_change"].mean()
    threshold = per_source.quantile(0.95)
    grouped = per_source.groupby(level=[0, 1])
    score = grouped.apply(lambda s: (s > threshold).mean() * s.mean())
    return [tuple(int(v) for v in idx) for idx in score.sort_values(ascending=False).index[:top]]


@torch.no_grad()
def measure_pairs(handle: Any, batches: list[Any], task_name: str, heads: list[tuple[int, int]]) -> pd.DataFrame:
    """Joint zero ablation of every pair of ``heads`` on a task (mean metric change over prompts)."""

    def effect(ablate: list[tuple[int, int]]) -> float:
        deltas = []
        for b in batches:
            with intervene(handle, ablate=ablate):
                logits = handle.model(input_ids=b.input_ids, use_cache=False, logits_to_keep=1).logits[:, -1]
            deltas.append((b.metric(logits) - b.metric(b.cache.last_logits)).cpu().numpy())
        return float(np.concatenate(deltas).mean())

    single = {h: effect([h]) for h in heads}
    rows = []
    for i, a in enumerate(heads):
        for b in heads[i + 1:]:
            rows.append({"task": task_name, "head_a": str(HeadId(*a)), "head_b": str(HeadId(*b)),
                         "effect_a": single[a], "effect_b": single[b], "effect_ab": effect([a, b])})
    return pd.DataFrame(rows)
