"""Clean-run scoring of tasks: per-prompt logit differences and the ``tasks check`` table.

``handle`` is a model handle with ``.model`` (a Hugging Face causal LM), ``.tokenizer`` and
``.device``. Every forward pass runs under :func:`torch.no_grad` on unpadded equal-length
batches from :func:`~cortexmap.tasks.core.encode_task`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from cortexmap.errors import TaskError
from cortexmap.tasks.core import MIN_PAIRS, Task, encode_task, logit_diff
from cortexmap.tasks.registry import build_task, tasks_for
from cortexmap.stats import bootstrap_ci

EVAL_COLUMNS = ["task", "level", "pair", "prompt", "target", "foil", "logit_diff", "p_target", "p_foil", "correct"]
CHECK_COLUMNS = [
    "task", "level", "usable", "dropped", "accuracy", "mean_logit_diff", "ci_low", "ci_high", "chance",
    "above_chance", "error",
]


def last_logits(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits at the last position of an unpadded batch, ``[batch, vocab]`` in float32."""
    kwargs: dict[str, Any] = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1  # the full [b, seq, vocab] tensor is large for big vocabularies
    out = model(input_ids=input_ids, **kwargs)
    return out.logits[:, -1, :].float()


def evaluate_task(handle: Any, task: Task, batch_size: int = 32) -> pd.DataFrame:
    """Score every pair of a task on the clean prompts.

    Args:
        handle: model handle with ``.model``, ``.tokenizer`` and ``.device``.
        task: a task built for ``handle.tokenizer``.
        batch_size: most prompts per forward pass.

    Returns:
        One row per pair, in task order, with columns ``task, level, pair, prompt, target,
        foil, logit_diff, p_target, p_foil, correct`` (``correct``: target logit > foil logit).

    Raises:
        TaskError: the task does not fit the handle's tokenizer.
    """
    rows: dict[int, dict[str, Any]] = {}
    with torch.no_grad():
        for batch in encode_task(task, handle.tokenizer, max_batch=batch_size):
            logits = last_logits(handle.model, batch.input_ids.to(handle.device))  # [b, vocab]
            diff = logit_diff(logits, batch.target_ids, batch.foil_ids).cpu()
            probs = torch.softmax(logits, dim=-1).cpu()
            b = torch.arange(len(batch))
            p_target, p_foil = probs[b, batch.target_ids], probs[b, batch.foil_ids]
            for j, index in enumerate(batch.indices):
                pair = task.pairs[index]
                rows[index] = {
                    "task": task.name, "level": task.level, "pair": index, "prompt": pair.prompt,
                    "target": pair.target, "foil": pair.foil, "logit_diff": float(diff[j]),
                    "p_target": float(p_target[j]), "p_foil": float(p_foil[j]), "correct": bool(diff[j] > 0),
                }
    return pd.DataFrame([rows[i] for i in sorted(rows)], columns=EVAL_COLUMNS)


def summarize(scores: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """Accuracy, mean logit difference and its 95% bootstrap interval of one task's scores."""
    diffs = scores["logit_diff"].to_numpy(dtype=float)
    low, high = bootstrap_ci(diffs, seed=seed)
    return {
        "accuracy": float(np.mean(scores["correct"])) if len(scores) else float("nan"),
        "mean_logit_diff": float(diffs.mean()) if len(diffs) else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "above_chance": bool(low > 0),
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
        One row per task: ``task, level, usable, dropped, accuracy, mean_logit_diff, ci_low,
        ci_high, chance, above_chance, error``. ``chance`` is the accuracy of guessing between
        two answers (0.5; the logit-difference chance level is 0). ``above_chance`` is true when
        the 95% interval of the mean logit difference lies above 0.

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
        row: dict[str, Any] = {"task": name, "chance": 0.5, "error": "", "accuracy": float("nan"),
                               "mean_logit_diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                               "above_chance": False}
        task = item if isinstance(item, Task) else build_task(item, handle.tokenizer, n=n, seed=seed, min_pairs=0)
        row.update(level=task.level, usable=len(task.pairs), dropped=int(sum(task.dropped.values())))
        if len(task.pairs) < min(MIN_PAIRS, n):
            row["error"] = f"only {len(task.pairs)} usable pairs for this tokenizer (dropped: {task.dropped})"
        else:
            row.update(summarize(evaluate_task(handle, task, batch_size=batch_size), seed=seed))
        rows.append(row)
    if not rows:
        raise TaskError("no tasks to check; name tasks, levels or 'all'")
    return pd.DataFrame(rows, columns=CHECK_COLUMNS)
