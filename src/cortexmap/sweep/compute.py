"""Per-prompt metrics of every head intervention on one task: the numbers a sweep unit stores.

A *unit* is one (task, intervention). Its result is a matrix ``[n_prompts, n_layers * n_heads]``
of the metric under each single-head intervention (column ``layer * n_heads + head``), plus the
clean metric per prompt. ``exact_matrix`` computes it with the prefix-reuse engine;
``attribution_matrix`` estimates it to first order from one forward and one backward pass.

Replacement activations per kind:
    mean      the head's mean output over every token of every prompt of the task;
    resample  the head's output on another prompt of the same token length (a seeded cyclic
              derangement inside each length bucket; prompts alone in their bucket get NaN);
    patch     the head's output on the pair's corrupt prompt (noising: effect = damage done);
              only the positions after the prefix clean and corrupt prompts share are rerun.
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
    corrupt_z: dict[int, torch.Tensor] | None = None
    suffix: CleanCache | None = None  # for patching: the clean run past the prefix shared with the corrupt one

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """Logit difference target - foil for ``[k * batch, vocab]`` logits, rows tiled per batch."""
        rows = logits.shape[0]
        k = rows // len(self.indices)
        target = self.target_ids.to(logits.device).repeat(k)
        foil = self.foil_ids.to(logits.device).repeat(k)
        picked = logits.float()
        return picked.gather(1, target[:, None])[:, 0] - picked.gather(1, foil[:, None])[:, 0]


def prepare(handle: Any, batches: list[Any], need_corrupt: bool) -> list[TaskBatch]:
    """Run the clean pass (and corrupt pass for patching) of every batch once."""
    prepared = []
    for b in batches:
        tb = TaskBatch(input_ids=b.input_ids.to(handle.device),
                       corrupt_ids=None if b.corrupt_ids is None else b.corrupt_ids.to(handle.device),
                       target_ids=b.target_ids, foil_ids=b.foil_ids, indices=list(b.indices))
        tb.cache = clean_cache(handle, tb.input_ids)
        if need_corrupt:
            if tb.corrupt_ids is None:
                raise InterventionError("activation patching needs corrupt prompts, and this task has none")
            tb.corrupt_z = head_outputs(handle, tb.corrupt_ids)
            prefix = shared_prefix_length(tb.input_ids, tb.corrupt_ids)
            if prefix > 0:
                tb.suffix = suffix_cache(handle, tb.input_ids, prefix)
        prepared.append(tb)
    return prepared


def n_prompts(batches: list[TaskBatch]) -> int:
    return sum(len(b.indices) for b in batches)


def clean_metrics(batches: list[TaskBatch]) -> np.ndarray:
    """Clean metric per prompt, in task pair order."""
    out = np.full(n_prompts(batches), np.nan)
    for b in batches:
        out[b.indices] = b.metric(b.cache.last_logits).cpu().numpy()
    return out


def task_means(batches: list[TaskBatch]) -> dict[int, torch.Tensor]:
    """Mean head output over all tokens of all prompts: ``{layer: [1, 1, n_heads, d_head]}``."""
    tokens = sum(b.input_ids.numel() for b in batches)
    layers = batches[0].cache.z.keys()
    return {l: sum(b.cache.z[l].sum((0, 1), keepdim=True) for b in batches) / tokens for l in layers}


def replacement(kind: str, tb: TaskBatch, layer: int, means: dict[int, torch.Tensor] | None,
                seed: int) -> torch.Tensor | None:
    """Replacement activations ``[batch or 1, seq or 1, n_heads, d_head]`` for one layer."""
    if kind == "mean":
        return means[layer]
    if kind == "patch":
        return tb.corrupt_z[layer]
    if kind == "resample":
        if len(tb.indices) < 2:  # a prompt alone in its length bucket has no partner
            return None
        return tb.cache.z[layer][derangement(len(tb.indices), seed).to(tb.cache.z[layer].device)]
    return None


def _run_chunk(handle: Any, tb: TaskBatch, chunk: list[tuple[int, int]], kind: str, alpha: float,
               repls: dict[int, torch.Tensor | None]) -> torch.Tensor:
    """Metric ``[len(chunk), batch]`` of one pass over the ``(layer, head)`` items of ``chunk`` (sorted by layer)."""
    cache = tb.suffix if kind == "patch" and tb.suffix is not None else tb.cache
    groups = []
    for layer in sorted({layer for layer, _ in chunk}):
        heads = [head for l, head in chunk if l == layer]
        repl = repls[layer]
        if cache.prefix:
            repl = repl[:, cache.prefix:]  # patching at the shared prefix changes nothing
        groups.append((layer, head_block_edit(handle.n_heads, heads, len(tb.indices), kind, alpha, repl), len(heads)))
    return tb.metric(run_joined(handle, cache, groups)).view(len(chunk), -1)


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

    Each pass holds up to ``rows_per_pass`` rows (prompts x heads), heads of several layers
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
        batch = len(tb.indices)
        repls = {layer: replacement(kind, tb, layer, means, seed + layer) for layer in {l for l, _ in items}}
        if kind == "resample" and any(r is None for r in repls.values()):
            if tick:
                tick(len(items) * batch / total)
            continue
        one_layer = not mix_layers
        todo = items
        while todo:
            k = _chunk_size(todo, rows_per_pass, batch, one_layer)
            try:
                values = _run_chunk(handle, tb, todo[:k], kind, alpha, repls)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if not _is_oom(exc) or rows_per_pass <= batch and k == 1:
                    raise
                rows_per_pass = max(1, rows_per_pass // 2)
                log.warning("out of memory: halving the batch to %d rows and retrying", rows_per_pass)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            for i, (layer, head) in enumerate(todo[:k]):
                out[tb.indices, layer * n_h + head] = values[i].cpu().numpy()
            todo = todo[k:]
            if tick:
                tick(k * batch / total)
    return out


def attribution_matrix(handle: Any, batches: list[TaskBatch], kind: str, alpha: float = 0.0, *,
                       seed: int = 0) -> np.ndarray:
    """First-order estimate of :func:`exact_matrix` from one forward and one backward pass per batch.

    The estimate for head ``h`` at layer ``l`` is ``clean + sum((z' - z) * dM/dz)`` over its
    positions and ``d_head`` features, with ``z'`` the replacement (0 for zero ablation,
    ``(1 + alpha) z`` for amplification). Each layer's head output is made a leaf so one
    backward pass gives every ``dM/dz``.
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
                logits = handle.model(input_ids=tb.input_ids, use_cache=False, logits_to_keep=1).logits[:, -1]
                metric = tb.metric(logits)
                inputs = [leaves[l] for l in range(handle.n_layers)]
                grads = torch.autograd.grad(metric.sum(), inputs, allow_unused=True)  # unused: a hook cut the path
                grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
        finally:
            for h in hooks:
                h.remove()
            for p in params:
                p.requires_grad_(True)
        clean = metric.detach()
        for layer, g in enumerate(grads):  # [batch, seq, n_heads, d_head]
            z = leaves[layer].detach()
            if kind in ("zero", "amplify"):
                delta = -z if kind == "zero" else alpha * z
            else:
                repl = replacement(kind, tb, layer, means, seed + layer)
                if repl is None:
                    continue
                delta = repl.to(z.dtype) - z
            estimate = (delta * g).sum((1, 3)).float() + clean[:, None]  # [batch, n_heads]
            out[tb.indices, layer * n_h:(layer + 1) * n_h] = estimate.cpu().numpy()
    return out
