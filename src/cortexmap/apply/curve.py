"""Pruning curves: held-out loss (and an optional task score) against the fraction of heads pruned.

For each importance method, pruning fraction and replacement mode, the least important heads
are physically pruned (:func:`~cortexmap.apply.prune_heads`), the pruned copy is evaluated on
held-out text, and optionally healed (:func:`~cortexmap.apply.heal.heal`) and evaluated again.
Fractions count query heads; parameters removed are measured on the pruned models.

A method's importance is either a table (one-shot pruning) or a *scorer* ``scorer(pruned, means)
-> table`` that is called again after each fraction with the heads pruned so far (iterative
pruning; :func:`gradient_scorer` builds one). Heads are pruned cumulatively, so the head set at
fraction 0.2 contains the set at 0.1.

Mean replacement uses head means over the first chunks of the *training* split, never the
held-out text the curve is evaluated on.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Mapping, Sequence, Union

import pandas as pd
import torch

from cortexmap.errors import CortexmapError
from cortexmap.heads import HeadId
from cortexmap.interventions import mean_head_outputs
from cortexmap.models import ModelHandle
from cortexmap.apply.corpus import Chunks, token_chunks
from cortexmap.apply.heal import heal
from cortexmap.apply.importance import head_importance, heads_for_fraction, select_heads
from cortexmap.apply.prune import REPLACE_MODES, prune_heads, pruning_result

log = logging.getLogger(__name__)

Scorer = Callable[[list[HeadId], Union[dict, None]], pd.DataFrame]
Importance = Union[pd.DataFrame, Scorer]
COLUMNS = [
    "method", "replace", "healed", "fraction", "heads_pruned", "kv_heads_removed", "attn_params_removed",
    "attn_params_removed_frac", "total_params_removed", "total_params_removed_frac", "heldout_loss", "heldout_ppl",
    "loss_delta_pct", "ppl_delta_pct", "task_score", "task_delta_pct", "seconds",
]


@torch.no_grad()
def heldout_loss(handle: ModelHandle, chunks: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over every predicted token of ``chunks`` ``[n, seq]``."""
    total, count = 0.0, 0
    for start in range(0, chunks.shape[0], batch_size):
        ids = chunks[start:start + batch_size].to(handle.device)
        logits = handle.model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        target = ids[:, 1:]
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                         reduction="sum"))
        count += target.numel()
    return total / count


def gradient_scorer(handle: ModelHandle, chunks: torch.Tensor, batch_size: int = 1, iterative: bool = True,
                    progress: Callable[[str], None] | None = None) -> Scorer:
    """Gradient importance matched to the replacement mode (zero, or mean when the curve passes means).

    Args:
        handle: the unpruned model.
        chunks: training token ids ``[n, seq]``.
        batch_size: rows per backward pass.
        iterative: re-score after each pruning step with the pruned heads masked; otherwise score
            once per replacement mode and reuse the table.
        progress: passed to :func:`~cortexmap.apply.head_importance`.

    Returns:
        A scorer ``scorer(pruned, means) -> importance table`` for :func:`pruning_curve`.
    """
    cache: dict[bool, pd.DataFrame] = {}

    def score(pruned: list[HeadId], means: dict | None) -> pd.DataFrame:
        if iterative:
            return head_importance(handle, chunks, batch_size=batch_size, pruned=pruned, means=means, progress=progress)
        key = means is None  # one table per replacement mode (the curve passes the same means each time)
        if key not in cache:
            cache[key] = head_importance(handle, chunks, batch_size=batch_size, means=means, progress=progress)
        return cache[key]

    return score


def _ids(text: Chunks | torch.Tensor | None, handle: ModelHandle, split: str, n_chunks: int, seq_len: int) -> torch.Tensor:
    if text is None:
        return token_chunks(handle.tokenizer, split, seq_len, n_chunks).ids
    return text.ids if isinstance(text, Chunks) else text


def heals(method: str, replace: str, heal_methods: Sequence[str] | None) -> bool:
    """Whether ``heal_methods`` (names ``method`` or ``method/replace``; None: all) selects this curve."""
    return heal_methods is None or method in heal_methods or f"{method}/{replace}" in heal_methods


def select_cumulative(importance: Importance, n_total: int, fractions: Sequence[float], means: dict | None = None
                      ) -> list[tuple[float, list[HeadId]]]:
    """Nested head sets to prune at each fraction, in increasing order of fraction.

    Args:
        importance: an importance table, or a scorer re-run after each step (iterative pruning).
        n_total: number of query heads of the model.
        fractions: fractions of heads to prune.
        means: passed to a scorer (``None``: zero ablation).

    Returns:
        ``[(fraction, heads)]``; each head set contains the previous one.
    """
    chosen: list[HeadId] = []
    out = []
    for fraction in sorted(fractions):
        count = heads_for_fraction(n_total, fraction)
        table = importance(list(chosen), means) if callable(importance) else importance
        chosen = chosen + select_heads(table, count - len(chosen), exclude=chosen) if count > len(chosen) else chosen
        out.append((fraction, list(chosen)))
    return out


def pruning_curve(
    handle: ModelHandle,
    importances: Mapping[str, Importance],
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4),
    replace: Sequence[str] = ("zero", "mean"),
    heal_steps: int = 0,
    heal_methods: Sequence[str] | None = None,
    text: Chunks | torch.Tensor | None = None,
    train_text: Chunks | torch.Tensor | None = None,
    task_score: Callable[[ModelHandle], float] | None = None,
    n_chunks: int = 32,
    seq_len: int = 128,
    heal_kwargs: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Evaluate pruned copies of ``handle`` for each method, fraction and replacement mode.

    Args:
        handle: the unpruned model (never modified).
        importances: method name -> importance table or iterative scorer (see module docstring).
        fractions: fractions of query heads to prune.
        replace: replacement modes (``zero``, ``mean``).
        heal_steps: distillation steps after pruning (0: no healing).
        heal_methods: curves to heal, as ``method`` or ``method/replace`` (default: all); the
            unhealed row is always kept.
        text: held-out token ids (default: ``n_chunks`` x ``seq_len`` of the corpus held-out split).
        train_text: token ids for means, healing and scorers (default: the corpus train split).
        task_score: optional ``task_score(handle) -> float``, higher is better (e.g.
            :func:`~cortexmap.apply.battery.battery_scorer`); ``task_delta_pct`` is its change
            relative to the unpruned model's.
        n_chunks: held-out chunks when ``text`` is not given.
        seq_len: chunk length when ``text`` / ``train_text`` are not given.
        heal_kwargs: extra arguments of :func:`~cortexmap.apply.heal.heal` (``lr``, ``batch_size``...).
        progress: called with one line per evaluated model.

    Returns:
        One row per (method, replace, healed, fraction) plus a ``method="none"`` baseline row; columns
        ``method, replace, healed, fraction, heads_pruned, kv_heads_removed, attn_params_removed(_frac),
        total_params_removed(_frac), heldout_loss, heldout_ppl, loss_delta_pct, ppl_delta_pct, task_score,
        task_delta_pct, seconds`` (the task columns NaN without ``task_score``).
    """
    bad = [r for r in replace if r not in REPLACE_MODES]
    if bad or not importances:
        raise CortexmapError(f"pruning_curve needs importance methods and replace modes in {REPLACE_MODES}, got {bad}")
    say = progress or log.info
    eval_ids = _ids(text, handle, "heldout", n_chunks, seq_len)
    train_ids = _ids(train_text, handle, "train", None, seq_len) if (heal_steps or "mean" in replace) else None
    start = time.perf_counter()
    base_loss = heldout_loss(handle, eval_ids)
    base_task = task_score(handle) if task_score else float("nan")
    base = (base_loss, base_task)
    rows = [_row("none", "none", False, 0.0, None, handle, base_loss, base_task, base, start)]
    say(f"baseline: {_change(rows[0])}")
    means = mean_head_outputs(handle, train_ids[:16]) if "mean" in replace else None
    n_total = handle.n_layers * handle.n_heads
    for method, importance in importances.items():
        for mode in replace:
            mode_means = means if mode == "mean" else None
            for fraction, heads in select_cumulative(importance, n_total, fractions, mode_means):
                start = time.perf_counter()
                pruned = prune_heads(handle, heads, replace=mode, reference=mode_means)
                loss = heldout_loss(pruned, eval_ids)
                score = task_score(pruned) if task_score else float("nan")
                rows.append(_row(method, mode, False, fraction, pruned, handle, loss, score, base, start))
                say(f"{method}/{mode} {fraction:.0%}: {_change(rows[-1])}")
                if heal_steps and heals(method, mode, heal_methods):
                    start = time.perf_counter()
                    heal(pruned, handle, train_ids, steps=heal_steps, **dict(heal_kwargs or {}))
                    loss = heldout_loss(pruned, eval_ids)
                    score = task_score(pruned) if task_score else float("nan")
                    rows.append(_row(method, mode, True, fraction, pruned, handle, loss, score, base, start))
                    say(f"{method}/{mode} {fraction:.0%} healed: {_change(rows[-1])}")
                del pruned
    return pd.DataFrame(rows, columns=COLUMNS)


def _change(row: dict[str, Any]) -> str:
    """One progress line's numbers: held-out loss and, when scored, the task battery."""
    text = f"loss {row['heldout_loss']:.4f} ({row['loss_delta_pct']:+.2f}%)"
    if math.isfinite(row["task_score"]):
        text += f", battery score {row['task_score']:.3f} ({row['task_delta_pct']:+.2f}%)"
    return text


def _pct_change(value: float, base: float) -> float:
    """Change of ``value`` relative to ``base`` in percent of ``|base|`` (NaN when base is 0 or NaN)."""
    return 100.0 * (value - base) / abs(base) if base and math.isfinite(base) else float("nan")


def _row(method: str, replace: str, healed: bool, fraction: float, pruned: ModelHandle | None, handle: ModelHandle,
         loss: float, score: float, base: tuple[float, float], start: float) -> dict[str, Any]:
    base_loss, base_score = base
    result = pruning_result(pruned) if pruned is not None else None
    attn_before = result.attn_params_before if result else 1
    total_before = result.total_params_before if result else handle.n_params
    return {
        "method": method, "replace": replace, "healed": healed, "fraction": fraction,
        "heads_pruned": len(result.heads) if result else 0,
        "kv_heads_removed": result.kv_heads_removed if result else 0,
        "attn_params_removed": result.attn_params_removed if result else 0,
        "attn_params_removed_frac": result.attn_params_removed / attn_before if result else 0.0,
        "total_params_removed": result.total_params_removed if result else 0,
        "total_params_removed_frac": result.total_params_removed / total_before if result else 0.0,
        "heldout_loss": loss, "heldout_ppl": math.exp(loss),
        "loss_delta_pct": 100.0 * (loss - base_loss) / base_loss,
        "ppl_delta_pct": 100.0 * (math.exp(loss - base_loss) - 1.0),
        "task_score": score, "task_delta_pct": _pct_change(score, base_score),
        "seconds": time.perf_counter() - start,
    }
