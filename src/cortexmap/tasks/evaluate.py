"""Clean-run scoring of tasks: per-prompt metrics and the ``tasks check`` table.

``handle`` is a model handle with ``.model`` (a Hugging Face causal LM), ``.tokenizer`` and
``.device``. Every forward pass runs under :func:`torch.no_grad` on the batches of
:func:`~cortexmap.tasks.core.encode_task` (right-padded where prompts or answers differ in
length), and reads the logits at the task's read positions only (:func:`logits_at`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from cortexmap.errors import TaskError
from cortexmap.tasks.core import MIN_PAIRS, Task, answer_text, encode_task
from cortexmap.tasks.registry import build_task, tasks_for
from cortexmap.stats import bootstrap_ci

EVAL_COLUMNS = ["task", "level", "pair", "prompt", "target", "foil", "metric", "score", "p_target", "p_foil",
                "correct", "chance"]
CHECK_COLUMNS = [
    "task", "level", "metric", "usable", "dropped", "accuracy", "mean", "ci_low", "ci_high", "chance",
    "chance_accuracy", "above_chance", "error",
]


def _keeps_logits(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def last_logits(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits at the last position of an unpadded batch, ``[batch, vocab]`` in float32."""
    kwargs: dict[str, Any] = {"use_cache": False}
    if _keeps_logits(model):
        kwargs["logits_to_keep"] = 1  # the full [b, seq, vocab] tensor is large for big vocabularies
    out = model(input_ids=input_ids, **kwargs)
    return out.logits[:, -1, :].float()


def tiled_reads(reads: tuple[torch.Tensor, torch.Tensor], n_rows: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reads of ``k`` copies of a batch of ``n_rows`` rows stacked on the batch axis (copy ``i`` from row ``i * n_rows``)."""
    rows, positions = reads
    return (torch.arange(k)[:, None] * n_rows + rows[None]).reshape(-1), positions.repeat(k)


def logits_at(model: Any, input_ids: torch.Tensor, reads: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Logits ``[n_reads, vocab]`` (float32) of one forward pass, at ``reads = (rows, positions)``.

    ``None`` reads the last position of every row (an unpadded batch of one row per prompt).
    Gradients flow when enabled. Only the read positions go through the unembedding.
    """
    if reads is None:
        return last_logits(model, input_ids)
    rows, positions = (r.to(input_ids.device) for r in reads)
    kwargs: dict[str, Any] = {"use_cache": False}
    if _keeps_logits(model):
        unique, inverse = torch.unique(positions, return_inverse=True)
        kwargs["logits_to_keep"] = unique
        return model(input_ids=input_ids, **kwargs).logits[rows, inverse].float()
    return model(input_ids=input_ids, **kwargs).logits[rows, positions].float()


def evaluate_task(handle: Any, task: Task, batch_size: int = 32) -> pd.DataFrame:
    """Score every pair of a task on the clean prompts.

    Args:
        handle: model handle with ``.model``, ``.tokenizer`` and ``.device``.
        task: a task built for ``handle.tokenizer``.
        batch_size: most prompts per forward pass.

    Returns:
        One row per pair, in task order, with columns ``task, level, pair, prompt, target, foil,
        metric`` (the task's metric), ``score`` (its value), ``p_target`` / ``p_foil`` (the
        probability of the target(s) / foil(s), teacher-forced), ``correct`` (the most probable
        candidate is a target) and ``chance`` (the score of a model indifferent among the
        candidates; :mod:`cortexmap.tasks.metrics`).

    Raises:
        TaskError: the task does not fit the handle's tokenizer.
    """
    rows: dict[int, dict[str, Any]] = {}
    with torch.no_grad():
        for batch in encode_task(task, handle.tokenizer, max_batch=batch_size):
            readout = batch.read()
            logits = logits_at(handle.model, batch.input_ids.to(handle.device), batch.reads())[None]
            score = readout.metric_of(logits)[0].cpu()
            correct = readout.correct(logits)[0].cpu()
            p_target, p_foil = (p[0].cpu() for p in readout.masses(logits))
            chance = readout.chance_metric(logits)[0].cpu()
            for j, index in enumerate(batch.indices):
                pair = task.pairs[index]
                rows[index] = {
                    "task": task.name, "level": task.level, "pair": index, "prompt": pair.prompt,
                    "target": answer_text(pair.target), "foil": answer_text(pair.foil), "metric": task.metric,
                    "score": float(score[j]), "p_target": float(p_target[j]), "p_foil": float(p_foil[j]),
                    "correct": bool(correct[j]), "chance": float(chance[j]),
                }
    return pd.DataFrame([rows[i] for i in sorted(rows)], columns=EVAL_COLUMNS)


def summarize(scores: pd.DataFrame, seed: int = 0, chance_accuracy: float = 0.5) -> dict[str, Any]:
    """Accuracy, mean score and its 95% bootstrap interval of one task's scores, against chance.

    ``above_chance`` is true when the 95% bootstrap interval of the mean of ``score - chance``
    (per prompt) lies above 0: for a pair's differences, when the interval of the mean score does.
    """
    values = scores["score"].to_numpy(dtype=float)
    low, high = bootstrap_ci(values, seed=seed)
    margin = values - scores["chance"].to_numpy(dtype=float)
    above = bootstrap_ci(margin, seed=seed)[0] > 0 if len(margin) else False
    return {
        "accuracy": float(np.mean(scores["correct"])) if len(scores) else float("nan"),
        "mean": float(values.mean()) if len(values) else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "chance": float(scores["chance"].mean()) if len(scores) else float("nan"),
        "chance_accuracy": chance_accuracy,
        "above_chance": bool(above),
    }


def check_tasks(
    handle: Any,
    names: str | Sequence[str | Task],
    n: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Build and score tasks on a model: can the model do them at all?

    A task with too few usable pairs for the tokenizer still gets a row (``usable`` counted,
    metrics NaN, the reason in ``error``), so one unusable task does not hide the others.

    Args:
        handle: model handle with ``.model``, ``.tokenizer`` and ``.device``.
        names: a selection spec (see :func:`~cortexmap.tasks.registry.tasks_for`), or a
            sequence of built-in names and/or already built :class:`Task` objects.
        n: pairs per built-in task.
        seed: seed of task generation and of the bootstrap.
        batch_size: most prompts per forward pass.
        progress: called with each task name before it runs.

    Returns:
        One row per task: ``task, level, metric, usable, dropped, accuracy, mean, ci_low,
        ci_high, chance, chance_accuracy, above_chance, error``. ``mean`` is the mean score with
        its 95% interval; ``chance`` the mean score of a model indifferent among the candidates
        (0 for a pair's differences); ``chance_accuracy`` the accuracy of a uniform guess among
        them (0.5 for pairs); ``above_chance`` is true when the 95% interval of the mean of score
        minus chance lies above 0.

    Raises:
        TaskError: an unknown task or level name.
    """
    items: list[str | Task]
    items = list(tasks_for(names)) if isinstance(names, str) else list(names)
    rows = []
    for item in items:
        name = item.name if isinstance(item, Task) else item
        if progress is not None:
            progress(name)
        row: dict[str, Any] = {"task": name, "chance": float("nan"), "chance_accuracy": 0.5, "error": "",
                               "accuracy": float("nan"), "mean": float("nan"), "ci_low": float("nan"),
                               "ci_high": float("nan"), "above_chance": False}
        task = item if isinstance(item, Task) else build_task(item, handle.tokenizer, n=n, seed=seed, min_pairs=0)
        row.update(level=task.level, metric=task.metric, usable=len(task.pairs),
                   dropped=int(sum(task.dropped.values())))
        if len(task.pairs) < min(MIN_PAIRS, n):
            row["error"] = f"only {len(task.pairs)} usable pairs for this tokenizer (dropped: {task.dropped})"
        else:
            sizes = [(len(p.targets), len(p.foils)) for p in task.pairs]
            guess = float(np.mean([t / (t + f) for t, f in sizes]))
            row.update(summarize(evaluate_task(handle, task, batch_size=batch_size), seed=seed, chance_accuracy=guess))
        rows.append(row)
    if not rows:
        raise TaskError("no tasks to check; name tasks, levels or 'all'")
    return pd.DataFrame(rows, columns=CHECK_COLUMNS)
