"""Joint interventions on pairs of heads, per prompt: the measurement behind redundancy.

For one task and a few heads, every head is intervened on alone and every pair of them together, on
every prompt, with the same replacement activations as the map's sweep
(:func:`cortexmap.sweep.compute.replacement`): ``patch`` takes both heads' outputs from the pair's
corrupt prompt (at the aligned positions), ``mean`` replaces them by their mean output over every
prompt token of the task's prompts, ``resample`` by their output on another prompt of the same
length; ``zero`` (off distribution) is accepted for comparison. An effect is the metric change
``intervened - clean`` (the task's metric, :mod:`cortexmap.tasks.metrics`; harm negative), so
``effect_a`` here equals the map's per-prompt effect of that head under the same intervention. The
sign convention of the interaction built from these rows is fixed in
:mod:`cortexmap.analysis.specialization`.

One forward pass runs ``k * rows`` rows, row ``i * rows + r`` holding configuration ``i`` (one
head, or a pair) on batch row ``r``; a pair may span two layers, so the passes are full forwards with
a per-row edit at every layer involved (no prefix reuse: a handful of heads per task is cheap).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from cortexmap.errors import InterventionError
from cortexmap.heads import HeadId
from cortexmap.interventions.edit import LayerEdit, register_edits
from cortexmap.sweep.compute import TaskBatch, replaced_positions, replacement, task_means, unserved
from cortexmap.tasks.evaluate import logits_at, tiled_reads

PAIR_KINDS = ("patch", "mean", "resample", "zero")
PAIR_TABLE_COLUMNS = ("task", "intervention", "head_a", "head_b", "prompt", "effect_a", "effect_b", "effect_ab",
                      "clean")

Config = tuple[tuple[int, int], ...]


def _configs(heads: list[tuple[int, int]]) -> list[Config]:
    """Every head alone, then every pair ``(heads[i], heads[j])``, ``i < j``."""
    singles = [(h,) for h in heads]
    pairs = [(a, b) for i, a in enumerate(heads) for b in heads[i + 1:]]
    return singles + pairs


def _edits(handle: Any, chunk: list[Config], batch: int, kind: str,
           repls: dict[int, torch.Tensor | None], where: torch.Tensor | None = None) -> dict[int, LayerEdit]:
    """Per layer, the edit of ``len(chunk) * batch`` rows: row ``i * batch + b`` edits the heads of ``chunk[i]``.

    ``where``: ``[batch, seq]`` positions a replacement applies at (None: all).
    """
    n_heads = handle.n_heads
    layers = sorted({layer for config in chunk for layer, _ in config})
    edits = {}
    for layer in layers:
        mask = torch.zeros(len(chunk), n_heads, dtype=torch.bool)
        for i, config in enumerate(chunk):
            for l, h in config:
                if l == layer:
                    mask[i, h] = True
        mask = mask.repeat_interleave(batch, dim=0)  # [rows, n_heads]
        if kind == "zero":
            edits[layer] = LayerEdit(scale=torch.where(mask, 0.0, 1.0))
            continue
        repl = repls[layer]  # [batch or 1, seq or 1, n_heads, d_head]
        rows = repl if repl.shape[0] == 1 else repl.repeat(len(chunk), 1, 1, 1)
        positions = None if where is None else where.repeat(len(chunk), 1)
        edits[layer] = LayerEdit(replace=rows, replace_mask=mask.to(repl.device), replace_positions=positions)
    return edits


@torch.no_grad()
def _metrics(handle: Any, tb: TaskBatch, chunk: list[Config], kind: str,
             repls: dict[int, torch.Tensor | None]) -> torch.Tensor:
    """Metric ``[len(chunk), batch]`` with each configuration of ``chunk`` applied to every prompt of ``tb``."""
    rows = tb.n_rows
    hooks = register_edits(handle, _edits(handle, chunk, rows, kind, repls, replaced_positions(kind, tb)))
    try:
        ids = tb.input_ids.repeat(len(chunk), 1)
        reads = tb.reads()
        logits = logits_at(handle.model, ids, None if reads is None else tiled_reads(reads, rows, len(chunk)))
    finally:
        for h in hooks:
            h.remove()
    return tb.metric(logits).view(len(chunk), len(tb.indices))


def measure_pairs(handle: Any, batches: list[TaskBatch], task: str, heads: Sequence[tuple[int, int]], kind: str, *,
                  rows_per_pass: int = 256, seed: int = 0) -> pd.DataFrame:
    """Every head of ``heads`` alone and every pair of them jointly, per prompt.

    Args:
        handle: the model's :class:`~cortexmap.models.ModelHandle`.
        batches: the task's batches from :func:`cortexmap.sweep.compute.prepare` (with
            ``need_corrupt=True`` for ``patch``).
        task: the task's name (written to the rows).
        heads: ``(layer, head)`` of at least two distinct heads.
        kind: ``patch``, ``mean``, ``resample`` or ``zero`` (module docstring).
        rows_per_pass: prompt rows x configurations per forward pass.
        seed: seed of resample ablation, as the sweep's (``seed + layer`` per layer).

    Returns:
        One row per (pair, prompt), pairs in ``heads`` order: task, intervention, head_a, head_b
        (``"L3H5"``), prompt (the task's pair index), effect_a, effect_b, effect_ab (metric
        changes, harm negative) and clean (the clean metric). Prompts a resample ablation cannot
        serve (alone in their length bucket) have NaN effects.

    Raises:
        InterventionError: an unknown ``kind``, fewer than two distinct heads, a head outside the
            model, or ``patch`` without corrupt activations.
    """
    if kind not in PAIR_KINDS:
        raise InterventionError(f"unknown pair intervention {kind!r}: use one of {', '.join(PAIR_KINDS)}")
    heads = list(dict.fromkeys((int(l), int(h)) for l, h in heads))
    if len(heads) < 2:
        raise InterventionError(f"joint interventions need at least two distinct heads, got {len(heads)}")
    for l, h in heads:
        if not (0 <= l < handle.n_layers and 0 <= h < handle.n_heads):
            raise InterventionError(f"{HeadId(l, h)} does not exist: the model has {handle.n_layers} layers x "
                                    f"{handle.n_heads} heads")
    if kind == "patch" and any(tb.corrupt_z is None for tb in batches):
        raise InterventionError("patching pairs needs the corrupt run: prepare the batches with need_corrupt=True")
    configs = _configs(heads)
    position = {config: i for i, config in enumerate(configs)}
    means = task_means(batches) if kind == "mean" else None
    layers = sorted({l for l, _ in heads})
    frames = []
    for tb in batches:
        batch = len(tb.indices)
        clean = tb.metric(tb.cache.logits).cpu().numpy()
        metric = np.full((len(configs), batch), np.nan)
        repls = {l: None if kind == "zero" else replacement(kind, tb, l, means, seed + l, handle) for l in layers}
        if kind == "zero" or all(r is not None for r in repls.values()):
            step = max(1, rows_per_pass // tb.n_rows)
            for start in range(0, len(configs), step):
                chunk = configs[start:start + step]
                metric[start:start + len(chunk)] = _metrics(handle, tb, chunk, kind, repls).float().cpu().numpy()
            for l in layers:  # prompts a resample cannot serve (alone in their length group)
                skip = unserved(kind, tb, seed, l)
                if skip is not None:
                    metric[:, skip.numpy()] = np.nan
        effect = metric - clean[None]  # [configs, batch]
        for a, b in configs[len(heads):]:
            frames.append(pd.DataFrame({
                "task": task, "intervention": kind, "head_a": str(HeadId(*a)), "head_b": str(HeadId(*b)),
                "prompt": np.asarray(tb.indices, dtype=int), "effect_a": effect[position[(a,)]],
                "effect_b": effect[position[(b,)]], "effect_ab": effect[position[(a, b)]], "clean": clean}))
    table = pd.concat(frames, ignore_index=True)
    order = {(str(HeadId(*a)), str(HeadId(*b))): i for i, (a, b) in enumerate(configs[len(heads):])}
    table["_order"] = [order[(a, b)] for a, b in zip(table["head_a"], table["head_b"])]
    table = table.sort_values(["_order", "prompt"], kind="stable").drop(columns="_order").reset_index(drop=True)
    return table[list(PAIR_TABLE_COLUMNS)]
