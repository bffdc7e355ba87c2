"""Per-prompt metrics of every head intervention on one task: the numbers a sweep unit stores.

A *unit* is one (task, intervention). Its result is a matrix ``[n_prompts, n_layers * n_heads]``
of the metric under each single-head intervention (column ``layer * n_heads + head``), plus the
clean metric per prompt. ``exact_matrix`` computes it with the prefix-reuse engine;
``attribution_matrix`` estimates it to first order from one forward and one backward pass. The
metric is the task's (:mod:`cortexmap.tasks.metrics`), read at the batch's read positions: the
last prompt position, or each answer token of a teacher-forced multi-token answer.

An intervention acts at every position of a row, the teacher-forced answer tokens included (what
editing the head's output-projection columns in the weights does). Replacement activations per kind:
    mean      the head's mean output over every prompt token of every prompt of the task (each
              prompt counted once, answer tokens and pads left out);
    resample  the head's output on another prompt of the same prompt length in the batch (a
              seeded cyclic derangement inside each length group, followed by the row's own answer
              tokens; prompts alone in their group get NaN);
    patch     the head's output on the pair's corrupt prompt followed by the row's answer tokens,
              at the aligned positions (:mod:`cortexmap.tasks.alignment`: every position when the
              lengths agree; otherwise the shared prefix and the shared suffix, the differing span
              keeping its clean output), noising: effect = damage done; only the positions after
              the prefix clean and corrupt rows share are rerun.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from cortexmap.errors import InterventionError
from cortexmap.interventions.capture import head_outputs
from cortexmap.interventions.context import derangement
from cortexmap.models.hooks import register_head_hooks
from cortexmap.tasks.core import EncodedBatch
from cortexmap.tasks.evaluate import logits_at
from cortexmap.sweep.engine import (
    CleanCache,
    clean_cache,
    head_block_edit,
    run_joined,
    shared_prefix_length,
    suffix_cache,
)

log = logging.getLogger(__name__)

Tick = Callable[[float], None]  # progress callback: units of work just finished (heads x prompts / prompts)


@dataclass
class TaskBatch(EncodedBatch):
    """An encoded batch on the model's device, with its clean cache (and, for patching, the corrupt run's)."""

    cache: CleanCache | None = None
    corrupt_z: dict[int, torch.Tensor] | None = None  # per layer, aligned to the clean rows' positions
    patch_positions: torch.Tensor | None = None  # [rows, seq] bool: aligned positions (None: all)
    suffix: CleanCache | None = None  # for patching: the clean run past the prefix shared with the corrupt one


_FIELDS = ("readout", "lengths", "source_lengths", "source_map", "row_prompt", "prompt_lengths")


def _aligned(z: dict[int, torch.Tensor], source_map: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Source head outputs gathered at each clean position's aligned source position, and where one exists."""
    where = source_map >= 0  # [rows, seq]
    index = source_map.clamp_min(0)
    rows = torch.arange(index.shape[0])[:, None].expand_as(index)
    return {layer: v[rows.to(v.device), index.to(v.device)] for layer, v in z.items()}, where


def _first_read(tb: TaskBatch) -> int:
    reads = tb.reads()
    return tb.input_ids.shape[1] - 1 if reads is None else int(reads[1].min())


def prepare(handle: Any, batches: list[Any], need_corrupt: bool) -> list[TaskBatch]:
    """Run the clean pass (and corrupt pass for patching) of every batch once."""
    prepared = []
    for b in batches:
        tb = TaskBatch(input_ids=b.input_ids.to(handle.device),
                       corrupt_ids=None if b.corrupt_ids is None else b.corrupt_ids.to(handle.device),
                       target_ids=b.target_ids, foil_ids=b.foil_ids, indices=list(b.indices),
                       **{name: getattr(b, name, None) for name in _FIELDS})
        reads = tb.reads()
        tb.cache = clean_cache(handle, tb.input_ids, reads)
        if need_corrupt:
            if tb.corrupt_ids is None:
                raise InterventionError("activation patching needs corrupt prompts, and this task has none")
            tb.corrupt_z = head_outputs(handle, tb.corrupt_ids)
            if tb.source_map is not None:
                tb.corrupt_z, tb.patch_positions = _aligned(tb.corrupt_z, tb.source_map)
            elif tb.corrupt_z[0].shape[1] != tb.input_ids.shape[1]:
                raise InterventionError("corrupt prompts of another length need a source_map aligning them")
            prefix = shared_prefix_length(tb.input_ids, tb.corrupt_ids, _first_read(tb))
            if prefix > 0:
                tb.suffix = suffix_cache(handle, tb.input_ids, prefix, reads)
        prepared.append(tb)
    return prepared


def n_prompts(batches: list[TaskBatch]) -> int:
    return sum(len(b.indices) for b in batches)


def clean_metrics(batches: list[TaskBatch]) -> np.ndarray:
    """Clean metric per prompt, in task pair order."""
    out = np.full(n_prompts(batches), np.nan)
    for b in batches:
        out[b.indices] = b.metric(b.cache.logits).cpu().numpy()
    return out


def _prompt_tokens(b: TaskBatch) -> torch.Tensor | None:
    """``[rows, seq]`` bool: the prompt tokens of each prompt's first row (None: every position of every row)."""
    if b.row_prompt is None and b.prompt_lengths is None:
        return None
    rows = b.prompt_rows()
    first = torch.ones(len(rows), dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    lengths = torch.full((len(b.indices),), b.input_ids.shape[1]) if b.prompt_lengths is None else b.prompt_lengths
    return first[:, None] & (torch.arange(b.input_ids.shape[1])[None] < lengths[rows][:, None])


def task_means(batches: list[TaskBatch]) -> dict[int, torch.Tensor]:
    """Mean head output over all prompt tokens of all prompts: ``{layer: [1, 1, n_heads, d_head]}``."""
    masks = [_prompt_tokens(b) for b in batches]
    tokens = sum(b.input_ids.numel() if m is None else int(m.sum()) for b, m in zip(batches, masks))
    layers = batches[0].cache.z.keys()

    def total(b: TaskBatch, m: torch.Tensor | None, layer: int) -> torch.Tensor:
        z = b.cache.z[layer]
        if m is None:
            return z.sum((0, 1), keepdim=True)
        return z[m.to(z.device)].sum(0)[None, None]

    return {l: sum(total(b, m, l) for b, m in zip(batches, masks)) / tokens for l in layers}


def resample_partners(tb: TaskBatch, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order [batch], alone [batch])``: each prompt's partner and the prompts without one.

    Partners are a seeded derangement within each group of prompts of one prompt length.
    """
    n = len(tb.indices)
    lengths = [tb.input_ids.shape[1]] * n if tb.prompt_lengths is None else tb.prompt_lengths.tolist()
    order = torch.arange(n)
    alone = torch.zeros(n, dtype=torch.bool)
    groups: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        groups.setdefault(int(length), []).append(i)
    for members in groups.values():
        index = torch.tensor(members)
        if len(members) < 2:
            alone[index] = True
            continue
        order[index] = index[derangement(len(members), seed)]
    return order, alone


def _resample_source(handle: Any, tb: TaskBatch, layer: int, order: torch.Tensor) -> torch.Tensor:
    """Head outputs at ``layer`` of each row's source: its partner's prompt followed by the row's own answer tokens."""
    rows = tb.prompt_rows()
    seq = tb.input_ids.shape[1]
    row_lengths = torch.full((tb.n_rows,), seq) if tb.lengths is None else tb.lengths
    prompt_lengths = torch.full((len(tb.indices),), seq) if tb.prompt_lengths is None else tb.prompt_lengths
    if tb.n_rows == len(tb.indices) and bool((row_lengths == prompt_lengths).all()):
        return tb.cache.z[layer][order.to(tb.cache.z[layer].device)]  # rows are the prompts: partners' clean runs
    lengths = prompt_lengths.tolist()
    ids = tb.input_ids.clone()
    for r, b in enumerate(rows.tolist()):
        partner = int(order[b])
        first = int((rows == partner).nonzero()[0])
        ids[r, :lengths[b]] = tb.input_ids[first, :lengths[partner]]  # same prompt length: the answer tokens stay
    return head_outputs(handle, ids, [layer])[layer]


def replacement(kind: str, tb: TaskBatch, layer: int, means: dict[int, torch.Tensor] | None,
                seed: int, handle: Any = None) -> torch.Tensor | None:
    """Replacement activations ``[rows or 1, seq or 1, n_heads, d_head]`` for one layer.

    ``resample`` returns None when no prompt of the batch has a partner; a batch with several
    rows per prompt needs ``handle`` to run its partners' rows.
    """
    if kind == "mean":
        return means[layer]
    if kind == "patch":
        return tb.corrupt_z[layer]
    if kind == "resample":
        order, alone = resample_partners(tb, seed)
        if bool(alone.all()):
            return None
        return _resample_source(handle, tb, layer, order)
    return None


def replaced_positions(kind: str, tb: TaskBatch) -> torch.Tensor | None:
    """``[rows, seq]`` where a replacement applies (patching from a corrupt prompt of another length), else None."""
    return tb.patch_positions if kind == "patch" else None


def unserved(kind: str, tb: TaskBatch, seed: int, layer: int) -> torch.Tensor | None:
    """``[batch]`` prompts the intervention cannot measure (resample: alone in their length group), else None."""
    if kind != "resample":
        return None
    alone = resample_partners(tb, seed + layer)[1]
    return alone if bool(alone.any()) else None


def _run_chunk(handle: Any, tb: TaskBatch, chunk: list[tuple[int, int]], kind: str, alpha: float,
               repls: dict[int, torch.Tensor | None]) -> torch.Tensor:
    """Metric ``[len(chunk), batch]`` of one pass over the ``(layer, head)`` items of ``chunk`` (sorted by layer)."""
    cache = tb.suffix if kind == "patch" and tb.suffix is not None else tb.cache
    where = replaced_positions(kind, tb)
    if where is not None and cache.prefix:
        where = where[:, cache.prefix:]
    groups = []
    for layer in sorted({layer for layer, _ in chunk}):
        heads = [head for l, head in chunk if l == layer]
        repl = repls[layer]
        if cache.prefix:
            repl = repl[:, cache.prefix:]  # patching at the shared prefix changes nothing
        groups.append((layer, head_block_edit(handle.n_heads, heads, tb.n_rows, kind, alpha, repl, where), len(heads)))
    return tb.metric(run_joined(handle, cache, groups, tb.reads())).view(len(chunk), -1)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _chunk_size(todo: list[tuple[int, int]], rows_per_pass: int, batch: int, one_layer: bool) -> int:
    k = max(1, min(len(todo), rows_per_pass // batch))
    if one_layer:
        k = min(k, sum(1 for layer, _ in todo if layer == todo[0][0]))
    return k


def exact_matrix(handle: Any, batches: list[TaskBatch], kind: str, alpha: float = 0.0, *,
                 rows_per_pass: int = 256, heads: list[tuple[int, int]] | None = None, seed: int = 0,
                 tick: Tick | None = None, mix_layers: bool = True,
                 means: dict[int, torch.Tensor] | None = None) -> np.ndarray:
    """Metric under each single-head intervention, exactly: ``[n_prompts, n_layers * n_heads]``.

    Each pass holds up to ``rows_per_pass`` rows (batch rows x heads), heads of several layers
    together (:func:`~cortexmap.sweep.engine.run_joined`), past a shared prefix too.

    Args:
        heads: restrict to these ``(layer, head)`` pairs (other columns stay NaN).
        rows_per_pass: prompt rows x heads per forward pass; halved on out-of-memory.
        tick: called with the number of head interventions finished (fractions as batches finish).
        mix_layers: False keeps one layer per pass (the earlier engine; ``bench/engine_fill.py``
            compares the two).
        means: mean ablation's replacement per layer (:func:`task_means` of the reference prompts);
            None uses ``batches``' own prompts.
    """
    n_h = handle.n_heads
    out = np.full((n_prompts(batches), handle.n_layers * n_h), np.nan)
    every = [(l, h) for l in range(handle.n_layers) for h in range(n_h)]
    items = sorted(set(every if heads is None else [(int(l), int(h)) for l, h in heads]))
    if kind == "mean" and means is None:
        means = task_means(batches)
    total = n_prompts(batches)
    for tb in batches:
        batch, rows = len(tb.indices), tb.n_rows
        layers = sorted({l for l, _ in items})
        repls = {layer: replacement(kind, tb, layer, means, seed + layer, handle) for layer in layers}
        if kind == "resample" and any(r is None for r in repls.values()):
            if tick:
                tick(len(items) * batch / total)
            continue
        skip = {layer: unserved(kind, tb, seed, layer) for layer in layers}
        one_layer = not mix_layers
        todo = items
        while todo:
            k = _chunk_size(todo, rows_per_pass, rows, one_layer)
            try:
                values = _run_chunk(handle, tb, todo[:k], kind, alpha, repls)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if not _is_oom(exc) or rows_per_pass <= rows and k == 1:
                    raise
                rows_per_pass = max(1, rows_per_pass // 2)
                log.warning("out of memory: halving the batch to %d rows and retrying", rows_per_pass)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            for i, (layer, head) in enumerate(todo[:k]):
                column = values[i].cpu().numpy()
                if skip[layer] is not None:
                    column[skip[layer].numpy()] = np.nan
                out[tb.indices, layer * n_h + head] = column
            todo = todo[k:]
            if tick:
                tick(k * batch / total)
    return out


def attribution_matrix(handle: Any, batches: list[TaskBatch], kind: str, alpha: float = 0.0, *,
                       seed: int = 0) -> np.ndarray:
    """First-order estimate of :func:`exact_matrix` from one forward and one backward pass per batch.

    The estimate for head ``h`` at layer ``l`` is ``clean + sum((z' - z) * dM/dz)`` over its
    positions (of every row of the prompt) and ``d_head`` features, with ``z'`` the replacement
    (0 for zero ablation, ``(1 + alpha) z`` for amplification; the clean value where a patch does
    not reach). Each layer's head output is made a leaf so one backward pass gives every ``dM/dz``.
    """
    n_h = handle.n_heads
    out = np.full((n_prompts(batches), handle.n_layers * n_h), np.nan)
    means = task_means(batches) if kind == "mean" else None
    for tb in batches:
        leaves: dict[int, torch.Tensor] = {}
        hooks = []

        def make(layer: int):  # noqa: ANN202
            def leaf(heads: torch.Tensor) -> torch.Tensor:  # the head outputs become leaves to differentiate
                leaves[layer] = heads.detach().requires_grad_(True)
                return leaves[layer]

            return leaf

        params = [p for p in handle.model.parameters() if p.requires_grad]
        try:
            for p in params:  # gradients are wanted w.r.t. the head outputs only
                p.requires_grad_(False)
            hooks += register_head_hooks(handle, {layer: make(layer) for layer in range(handle.n_layers)})
            with torch.enable_grad():
                metric = tb.metric(logits_at(handle.model, tb.input_ids, tb.reads()))
                inputs = [leaves[l] for l in range(handle.n_layers)]
                grads = torch.autograd.grad(metric.sum(), inputs, allow_unused=True)  # unused: a hook cut the path
                grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
        finally:
            for h in hooks:
                h.remove()
            for p in params:
                p.requires_grad_(True)
        clean = metric.detach()
        rows = tb.prompt_rows().to(clean.device)
        for layer, g in enumerate(grads):  # [rows, seq, n_heads, d_head]
            z = leaves[layer].detach()
            if kind in ("zero", "amplify"):
                delta = -z if kind == "zero" else alpha * z
            else:
                repl = replacement(kind, tb, layer, means, seed + layer, handle)
                if repl is None:
                    continue
                delta = repl.to(z.dtype) - z
                where = replaced_positions(kind, tb)
                if where is not None:
                    delta = delta * where.to(delta.device)[:, :, None, None]
            per_row = (delta * g).sum((1, 3)).float()  # [rows, n_heads]
            estimate = per_row.new_zeros(len(tb.indices), n_h).index_add_(0, rows, per_row) + clean[:, None]
            column = estimate.cpu().numpy()
            skip = unserved(kind, tb, seed, layer)
            if skip is not None:
                column[skip.numpy()] = np.nan
            out[tb.indices, layer * n_h:(layer + 1) * n_h] = column
    return out
