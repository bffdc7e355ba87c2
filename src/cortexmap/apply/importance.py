"""Head importance scores for pruning: gradient sensitivity, sweep effects, and baselines.

Every scorer returns an *importance table*: a DataFrame with one row per head and columns
``layer, head, head_id, importance`` (higher = keep). :func:`select_heads` takes the lowest.

* :func:`head_importance`: expected sensitivity of Michel, Levy & Neubig (2019, "Are Sixteen Heads
  Really Better than One?"). Each head's output is multiplied by a mask variable ``m_h = 1``
  (a pre-hook on the out projection); the importance is the mean over batches of
  ``|dL/dm_h|`` for the language-model loss ``L`` on text, then L2-normalised within each layer
  as in the paper. With ``replace="mean"`` the mask interpolates to the head's mean output
  (``m z + (1 - m) mean``), the sensitivity of mean ablation.
* :func:`importance_from_effects`: from a sweep's ``effects.parquet`` (see ``docs/schema.md``):
  mean over tasks of ``|effect_normalized|`` of zero/mean ablation.
* :func:`random_importance` and :func:`layer_order_importance`: baselines (random order; whole layers
  from the top or the bottom of the stack).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from cortexmap.errors import CortexmapError, ResultsError
from cortexmap.heads import HeadId, HeadLike, as_heads
from cortexmap.models import ModelHandle
from cortexmap.models.hooks import head_hooks
from cortexmap.results.layout import EXACT

log = logging.getLogger(__name__)

COLUMNS = ["layer", "head", "head_id", "importance"]


def importance_table(scores: torch.Tensor | np.ndarray) -> pd.DataFrame:
    """An importance table from a ``[n_layers, n_heads]`` array."""
    values = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=float)
    layers, heads = np.meshgrid(np.arange(values.shape[0]), np.arange(values.shape[1]), indexing="ij")
    return pd.DataFrame({
        "layer": layers.ravel(), "head": heads.ravel(),
        "head_id": [str(HeadId(int(l), int(h))) for l, h in zip(layers.ravel(), heads.ravel())], "importance": values.ravel(),
    }, columns=COLUMNS)


@contextmanager
def head_masks(handle: ModelHandle, pruned: Iterable[HeadId] = (), means: dict[int, torch.Tensor] | None = None
               ) -> Iterator[torch.Tensor]:
    """Yield a ``[n_layers, n_heads]`` mask of ones (``requires_grad``) that scales every head's output.

    Heads in ``pruned`` are held at 0 (their gradient is 0). With ``means`` (``{layer: z mean}``),
    a head's output is ``m z + (1 - m) mean`` instead of ``m z``.
    """
    n, d = handle.n_heads, handle.d_head
    mask = torch.ones(handle.n_layers, n, device=handle.device, requires_grad=True)
    keep = torch.ones(handle.n_layers, n, device=handle.device)
    for head in pruned:
        keep[head.layer, head.head] = 0.0
    flat = {l: m.reshape(1, -1, n, d).mean(1, keepdim=True) for l, m in (means or {}).items()}  # [1, 1, n_heads, d_head]

    def make(layer: int) -> Any:
        def scale(heads: torch.Tensor) -> torch.Tensor:  # [batch, seq, n_heads, d_head]
            m = (mask[layer] * keep[layer]).to(heads.dtype)[None, None, :, None]  # [1, 1, n_heads, 1]
            new = heads * m
            return new + (1 - m) * flat[layer].to(heads.dtype) if layer in flat else new

        return scale

    with head_hooks(handle, {layer: make(layer) for layer in range(handle.n_layers)}):
        yield mask


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; half precision is upcast, float64 kept (exact gradient checks)."""
    logits = logits[:, :-1]  # [batch, seq - 1, vocab]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


@contextmanager
def _frozen(model: Any) -> Iterator[None]:
    """Parameters need no gradient while only the masks are differentiated."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def head_importance(handle: ModelHandle, chunks: torch.Tensor, batch_size: int = 1, normalize: bool = True,
                    pruned: Iterable[HeadLike] = (), means: dict[int, torch.Tensor] | None = None,
                    progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Gradient head importance (Michel et al. 2019): mean over batches of ``|dLoss/dm_h|``.

    Args:
        handle: the (unpruned) model.
        chunks: token ids ``[n, seq]`` of training text (e.g. ``token_chunks(tok, "train").ids``).
        batch_size: rows per backward pass; the paper takes ``|grad|`` per example (1).
        normalize: divide each layer's scores by their L2 norm (the paper's layer normalisation).
        pruned: heads already removed (held at 0; their importance is NaN), for iterative pruning.
        means: ``{layer: mean z}`` from ``mean_head_outputs``: score mean instead of zero ablation.
        progress: called with a line per batch.

    Returns:
        An importance table (``layer, head, head_id, importance``).
    """
    done = [handle.head(h) for h in as_heads(list(pruned))]
    if chunks.dim() != 2 or chunks.shape[1] < 2:
        raise CortexmapError("head_importance needs token ids of shape [n_chunks, seq_len >= 2]")
    total = torch.zeros(handle.n_layers, handle.n_heads)
    n_batches = 0
    with _frozen(handle.model), head_masks(handle, done, means) as mask:
        for start in range(0, chunks.shape[0], batch_size):
            ids = chunks[start:start + batch_size].to(handle.device)
            loss = lm_loss(handle.model(input_ids=ids, use_cache=False).logits, ids)
            (grad,) = torch.autograd.grad(loss, mask)
            total += grad.detach().abs().float().cpu()
            n_batches += 1
            if progress:
                progress(f"head importance: batch {n_batches}, loss {loss.item():.3f}")
    scores = total / max(n_batches, 1)
    if normalize:
        norms = scores.norm(dim=1, keepdim=True)
        scores = torch.where(norms > 0, scores / norms.clamp_min(1e-20), scores)
    for head in done:
        scores[head.layer, head.head] = float("nan")
    return importance_table(scores)


def importance_from_effects(effects: pd.DataFrame, interventions: Sequence[str] = ("zero", "mean"),
                          tasks: Sequence[str] | None = None, model: str | None = None,
                          shape: tuple[int, int] | None = None) -> pd.DataFrame:
    """Head importance from a sweep's effects table: mean over tasks of ``|effect_normalized|``.

    A head's exact effect is used where the run measured one; the other heads keep their screen
    value (a ``screen`` run: exact on the screen's subsample of prompts; ``attribution+verify``:
    the attribution estimate). Pruning must rank every head, the unimportant ones included.

    Args:
        effects: ``effects.parquet`` rows (columns ``layer, head, intervention, task,
            effect_normalized``; ``method`` and ``model`` are used when present).
        interventions: which ablations count (averaged together).
        tasks: restrict to these tasks (default all).
        model: restrict to this model spec when the table holds several.
        shape: ``(n_layers, n_heads)`` of the model (default: the largest indices in the table).

    Returns:
        An importance table; heads without effects get NaN, so they are never selected for pruning.

    Raises:
        ResultsError: missing columns or no matching rows.
    """
    needed = {"layer", "head", "intervention", "task", "effect_normalized"}
    missing = needed - set(effects.columns)
    if missing:
        raise ResultsError(f"the effects table lacks columns {sorted(missing)}; pass effects.parquet from a sweep run")
    rows = effects[effects["intervention"].isin(list(interventions))]
    if tasks is not None:
        rows = rows[rows["task"].isin(list(tasks))]
    if model is not None and "model" in rows.columns:
        rows = rows[rows["model"] == model]
    rows = rows.dropna(subset=["effect_normalized"])
    if "method" in rows.columns:  # exact where measured (the verified heads), else the screen
        rows = (rows.assign(_exact=rows["method"] == EXACT).sort_values("_exact", ascending=False, kind="stable")
                .drop_duplicates(["layer", "head", "task", "intervention"]).drop(columns="_exact"))
    if rows.empty:
        raise ResultsError(f"no {'/'.join(interventions)} ablation effects in the table; run a sweep with them")
    per_task = rows.assign(size=rows["effect_normalized"].abs()).groupby(["layer", "head", "task"])["size"].mean()
    per_head = per_task.groupby(["layer", "head"]).mean()
    n_layers, n_heads = shape or (int(effects["layer"].max()) + 1, int(effects["head"].max()) + 1)
    grid = np.full((n_layers, n_heads), np.nan)
    for (layer, head), value in per_head.items():
        grid[int(layer), int(head)] = value
    return importance_table(grid)


def random_importance(handle: ModelHandle, seed: int = 0) -> pd.DataFrame:
    """Baseline: a uniformly random order of heads (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    return importance_table(torch.rand(handle.n_layers, handle.n_heads, generator=gen))


def layer_order_importance(handle: ModelHandle, order: str = "last") -> pd.DataFrame:
    """Baseline by position only: prune whole layers from the top (``last``) or bottom (``first``).

    Within a layer, heads go in index order (``L29H0`` before ``L29H1``).
    """
    if order not in ("last", "first"):
        raise CortexmapError(f"unknown layer order {order!r}: use 'last' or 'first'")
    layers = torch.arange(handle.n_layers, dtype=torch.float64)[:, None]
    heads = torch.arange(handle.n_heads, dtype=torch.float64)[None, :] / (10 * handle.n_heads)
    rank = (handle.n_layers - layers if order == "last" else layers + 1) + heads
    return importance_table(rank)


def select_heads(importance: pd.DataFrame, count: int, exclude: Iterable[HeadLike] = ()) -> list[HeadId]:
    """The ``count`` least important heads (ties by layer, then head), skipping ``exclude`` and NaNs.

    Raises:
        CortexmapError: fewer heads left than asked for.
    """
    skip = {str(h) for h in as_heads(list(exclude))}
    table = importance[~importance["head_id"].isin(skip)].dropna(subset=["importance"])
    if count > len(table):
        raise CortexmapError(f"cannot select {count} heads: only {len(table)} are left to prune")
    ordered = table.sort_values(["importance", "layer", "head"], kind="stable").head(count)
    return [HeadId(int(l), int(h)) for l, h in zip(ordered["layer"], ordered["head"])]


def heads_for_fraction(n_total: int, fraction: float) -> int:
    """Number of heads a pruning fraction means (rounded to the nearest head)."""
    if not 0.0 <= fraction < 1.0:
        raise CortexmapError(f"pruning fraction {fraction} is outside [0, 1)")
    return int(round(fraction * n_total))
