"""Measurements behind the regulator-head and redundancy analyses (the model side).

*Influence* of a source head on a later target head: ablate the source and measure, per prompt,
the target's relative output change ``||z' - z|| / ||z||`` (over positions and features) and the
KL divergence of its attention rows (clean || ablated, mean over query positions). The
prefix-reuse engine runs every source of a layer on the batch axis, starting at its layer
(:func:`~cortexmap.sweep.engine.head_block_edit`).

Conventions fixed here:

* **Ablation.** ``mean`` (the default, counterfactual): the source's output is replaced by its
  mean output over every token of every prompt of the call, pooled over all conditions (both
  sides of every contrast), so the replacement does not depend on the condition
  (:func:`condition_means`: :func:`~cortexmap.interventions.mean_head_outputs` over all of them;
  the same replacement as ``cortexmap.intervene(handle, mean_ablate=..., reference=means)``).
  ``zero`` sets the output to 0, a value the head never produces: an off-distribution input to
  everything downstream, kept for comparison with earlier runs.
* **Rows** carry ``ablation``, ``n_tokens`` (the prompt's token length) and ``prompt``, the
  prompt's index in its condition's list (so the ``i``-th prompts of matched conditions pair up).
* **Screen, layer-matched.** :func:`screen_sources` picks the heads that most consistently
  outrank the other heads of their own layer over the screen prompts (per prompt, breadth x
  strength, breadth counted against their layer's 95% quantile of pair influence): an early head
  influences more later heads by position alone, so it is compared with its own layer, as the
  candidate rule of :mod:`cortexmap.analysis.regulators` compares it.

Joint ablation of head pairs (redundancy) is :mod:`cortexmap.sweep.pairs`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch

from cortexmap.errors import InterventionError
from cortexmap.interventions.capture import recording
from cortexmap.models.hooks import eager_attention
from cortexmap.sweep.engine import clean_cache, head_block_edit, run_from_layer

ABLATIONS = ("mean", "zero")


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


def _group_by_length(handle: Any, prompts: list[str]) -> list[tuple[list[int], torch.Tensor]]:
    """Prompts grouped by token length: ``(indices into prompts, ids [group, seq])``, shortest first."""
    groups: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for i, text in enumerate(prompts):
        ids = handle.tokenizer(text, return_tensors="pt")["input_ids"][0]
        groups.setdefault(len(ids), []).append((i, ids))
    return [([i for i, _ in rows], torch.stack([r for _, r in rows]).to(handle.device))
            for _, rows in sorted(groups.items())]


@torch.no_grad()
def condition_means(handle: Any, prompts: dict[str, list[str]]) -> dict[int, torch.Tensor]:
    """Every head's mean output over every token of every prompt, pooled over all conditions.

    The same mean as :func:`~cortexmap.interventions.mean_head_outputs` over all the prompts,
    computed a length group at a time with last-position logits only.

    Returns:
        ``{layer: [1, 1, n_heads, d_head]}``, the form ``intervene(..., reference=...)`` takes.

    Raises:
        InterventionError: no prompt at all.
    """
    texts = [t for group in prompts.values() for t in group]
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for _, ids in _group_by_length(handle, texts):
        with recording(handle) as z:
            handle.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        for layer, heads in z.items():  # [batch, seq, n_heads, d_head]
            sums[layer] = sums.get(layer, 0) + heads.sum((0, 1), keepdim=True)
        count += int(ids.numel())
    if count == 0:
        raise InterventionError("mean ablation needs at least one prompt to take the mean over")
    return {layer: total / count for layer, total in sums.items()}


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, mean over query positions: ``[..., q, k] -> [...]``."""
    eps = 1e-10
    return (p * ((p + eps).log() - (q + eps).log())).sum(-1).mean(-1)


@torch.no_grad()
def _influence_group(handle: Any, ids: torch.Tensor, sources: dict[int, list[int]], rows_per_pass: int,
                     condition: str, indices: list[int], means: dict[int, torch.Tensor] | None) -> list[pd.DataFrame]:
    n_l, n_h = handle.n_layers, handle.n_heads
    with attention_weights(handle, range(n_l)) as clean_attn:
        cache = clean_cache(handle, ids)
    clean_z, clean_attn = cache.z, dict(clean_attn)
    norm = {t: z.pow(2).sum((1, 3)).sqrt().clamp_min(1e-12) for t, z in clean_z.items()}  # [b, h]
    batch = ids.shape[0]
    frames = []
    for layer, heads in sorted(sources.items()):
        later = list(range(layer + 1, n_l))
        if not later:
            continue
        step = max(1, rows_per_pass // batch)
        for start in range(0, len(heads), step):
            chunk = heads[start:start + step]
            k = len(chunk)
            if means is None:
                edit = head_block_edit(n_h, chunk, batch, "zero")
            else:
                edit = head_block_edit(n_h, chunk, batch, "mean", replacement=means[layer].to(ids.device))
            with attention_weights(handle, later) as attn, recording(handle, later) as z:
                run_from_layer(handle, cache, layer, edit, k)
            changes, kls = [], []
            for t in later:
                new = z[t].view(k, batch, *z[t].shape[1:])  # [k, b, s, h, d]
                changes.append((new - clean_z[t]).pow(2).sum((2, 4)).sqrt() / norm[t])  # [k, b, h]
                if t in attn and t in clean_attn:
                    kls.append(_kl(clean_attn[t], attn[t].view(k, batch, *attn[t].shape[1:])))
                else:
                    kls.append(torch.full_like(changes[-1], float("nan")))
            change, kl = torch.stack(changes, 2), torch.stack(kls, 2)  # [k, b, later, h]
            src, prm, tgt_layer, tgt = np.meshgrid(np.array(chunk), np.asarray(indices), np.array(later),
                                                   np.arange(n_h), indexing="ij")
            frames.append(pd.DataFrame({
                "condition": condition, "prompt": prm.ravel(), "source_layer": layer, "source_head": src.ravel(),
                "target_layer": tgt_layer.ravel(), "target_head": tgt.ravel(),
                "out_change": change.float().cpu().numpy().ravel(), "attn_kl": kl.float().cpu().numpy().ravel(),
                "ablation": "zero" if means is None else "mean", "n_tokens": int(ids.shape[1])}))
    return frames


def measure_influence(handle: Any, prompts: dict[str, list[str]], sources: list[tuple[int, int]] | None = None,
                      rows_per_pass: int = 128, progress: Callable[[str], None] | None = None, *,
                      ablation: str = "mean", means: dict[int, torch.Tensor] | None = None) -> pd.DataFrame:
    """Influence of each source head on every later head, per condition and prompt.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle`.
        prompts: condition label (e.g. ``"reasoning:multi_step"``) -> prompts.
        sources: ``(layer, head)`` source heads (default: all).
        rows_per_pass: rows of one batched pass (sources x prompts of one length).
        progress: called with a short note per condition.
        ablation: ``"mean"`` (counterfactual) or ``"zero"`` (off-distribution); module docstring.
        means: the mean replacement (:func:`condition_means`); None takes it over ``prompts``.

    Returns:
        The influence table of :mod:`cortexmap.analysis.regulators` (condition, prompt,
        source_layer, source_head, target_layer, target_head, out_change, attn_kl, ablation,
        n_tokens).

    Raises:
        InterventionError: an unknown ablation.
    """
    if ablation not in ABLATIONS:
        raise InterventionError(f"unknown ablation {ablation!r} for influence: use one of {', '.join(ABLATIONS)}")
    wanted = sources if sources is not None else [(l, h) for l in range(handle.n_layers) for h in range(handle.n_heads)]
    by_layer: dict[int, list[int]] = {}
    for layer, head in wanted:
        by_layer.setdefault(layer, []).append(head)
    if ablation == "mean" and means is None:
        means = condition_means(handle, prompts)
    frames = []
    with eager_attention(handle):
        for condition, texts in prompts.items():
            if progress:
                progress(f"influence: {condition} ({len(texts)} prompts, {len(wanted)} source heads, "
                         f"{ablation} ablation)")
            for indices, ids in _group_by_length(handle, texts):
                frames += _influence_group(handle, ids, by_layer, rows_per_pass, condition, indices,
                                           means if ablation == "mean" else None)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def screen_sources(influence: pd.DataFrame, top: int) -> list[tuple[int, int]]:
    """The ``top`` source heads that most consistently outrank the other heads of their own layer (module docstring).

    Per prompt, a head's score is breadth x strength of its out_change, breadth counted against its
    layer's 95% quantile of mean pair influence; heads are ordered by their mean rank within their
    layer over the prompts (0 last, 1 first), then by their score relative to their layer's mean.
    """
    keys = ["source_layer", "source_head", "target_layer", "target_head"]
    frame = influence[["condition", "prompt"] + keys + ["out_change"]].copy()
    pair_mean = frame.groupby(keys)["out_change"].transform("mean")
    frame["threshold"] = pair_mean.groupby(frame["source_layer"]).transform(lambda m: m.quantile(0.95))
    frame["above"] = frame["out_change"] > frame["threshold"]
    per_prompt = frame.groupby(["condition", "prompt", "source_layer", "source_head"]).agg(
        breadth=("above", "mean"), strength=("out_change", "mean")).reset_index()
    per_prompt["score"] = per_prompt["breadth"] * per_prompt["strength"]
    layer_rows = per_prompt.groupby(["condition", "prompt", "source_layer"])
    size = layer_rows["score"].transform("size")
    order = per_prompt.sort_values(["score", "strength"], kind="stable").groupby(
        ["condition", "prompt", "source_layer"]).cumcount()
    per_prompt["rank"] = (order.reindex(per_prompt.index) / (size - 1).where(size > 1)).fillna(0.0)
    per_source = per_prompt.groupby(["source_layer", "source_head"]).agg(rank=("rank", "mean"), score=("score", "mean"))
    layer_mean = per_source["score"].groupby(level=0).transform("mean")
    per_source["relative"] = (per_source["score"] / layer_mean.where(layer_mean > 0)).fillna(0.0)
    ranked = per_source.sort_values(["rank", "relative"], ascending=False, kind="stable")
    return [tuple(int(v) for v in idx) for idx in ranked.index[:top]]
