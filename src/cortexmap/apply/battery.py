"""The task-battery column of a pruning curve: how much of the battery's behaviour a pruned model keeps.

The score is the mean over tasks of each task's mean metric on the clean prompts
(:func:`~cortexmap.tasks.evaluate_task`: the logit difference, the log-probability difference of
multi-token answers, or an answer set's probability difference), each divided by the unpruned
model's mean on the same task. Tasks measure in different units (logits, probabilities), so each
counts as the share of its clean margin the model keeps and every task weighs the same, whatever
its number of usable pairs; the unpruned model scores 1. Tasks the unpruned model gets wrong on
average (mean <= 0: no margin to keep, e.g. a task at chance) are left out, and logged. The curve
reports the score beside the unpruned model's, so ``task_delta_pct`` reads as "battery
performance lost".

Prompts are drawn with their own seed (default 1): a map run uses seed 0, and ranking heads by a
map and then scoring the pruned model on the same prompts would favour the map.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from cortexmap.models import ModelHandle
from cortexmap.tasks import MIN_PAIRS, Task, build_task, evaluate_task, tasks_for

log = logging.getLogger(__name__)

BATTERY_SEED = 1


def battery_scorer(
    handle: ModelHandle,
    tasks: str | Sequence[str | Task] = "all",
    n_prompts: int = 16,
    seed: int = BATTERY_SEED,
    batch_size: int = 32,
) -> Callable[[ModelHandle], float] | None:
    """Build the tasks once for ``handle``'s tokenizer and return ``score(model) -> float``.

    Args:
        handle: the unpruned model (its tokenizer is shared by every pruned copy).
        tasks: a selection spec (``"all"``, a level, names; see
            :func:`~cortexmap.tasks.tasks_for`) or a sequence of names and built tasks.
        n_prompts: pairs per built-in task.
        seed: task-generation seed.
        batch_size: most prompts per forward pass.

    Returns:
        The scorer (the unpruned model's per-task means are measured here, once), or None when no
        task has enough usable pairs for this tokenizer (logged).
    """
    items = tasks_for(tasks) if isinstance(tasks, str) else list(tasks)
    built = [t if isinstance(t, Task) else build_task(t, handle.tokenizer, n=n_prompts, seed=seed, min_pairs=0)
             for t in items]
    usable = [t for t in built if len(t.pairs) >= min(MIN_PAIRS, n_prompts)]
    if not usable:
        log.warning("no task of the battery fits this tokenizer; the curve's task_score is left empty")
        return None
    if len(usable) < len(built):
        log.info("task battery: %d of %d tasks fit this tokenizer", len(usable), len(built))

    def means(model: ModelHandle) -> np.ndarray:
        return np.array([evaluate_task(model, task, batch_size)["score"].mean() for task in usable])

    base = means(handle)
    kept = base > 0
    if not kept.any():
        log.warning("the unpruned model is wrong on average on every task; the curve's task_score is left empty")
        return None
    if not kept.all():
        log.info("task battery: %s left out (no clean margin to keep)",
                 ", ".join(t.name for t, k in zip(usable, kept) if not k))
    usable = [t for t, k in zip(usable, kept) if k]
    base = base[kept]

    def score(model: ModelHandle) -> float:
        values = base if model is handle else means(model)
        return float(np.mean(values / base))

    return score
