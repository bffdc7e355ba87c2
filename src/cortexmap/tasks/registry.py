"""The built-in task battery: names, levels, selection specs and :func:`build_task`.

A selection spec (CLI ``--tasks``) is a task name, a level name, a comma list of those, or
``all``; :func:`tasks_for` expands it to task names in battery order (level order, then file
order), without repeats. :func:`list_battery` lists everything a map and its analysis can
measure: these tasks, the mechanistic probes and the condition sets.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from cortexmap.errors import TaskError
from cortexmap.tasks.conditions import condition_descriptions
from cortexmap.tasks.core import LEVELS, MIN_PAIRS, Task, require_pairs, task_metric
from cortexmap.tasks.probes import PROBES
from cortexmap.tasks.templates import TaskSpec, builtin_specs, generate_pairs


def builtin_task_names() -> list[str]:
    """Names of every built-in task, in battery order."""
    return list(builtin_specs())


def _spec(name: str) -> TaskSpec:
    specs = builtin_specs()
    if name not in specs:
        raise TaskError(f"unknown task {name!r}; valid tasks: {', '.join(specs)}")
    return specs[name]


def task_level(name: str) -> str:
    """Level of a built-in task.

    Raises:
        TaskError: ``name`` is not a built-in task.
    """
    return _spec(name).level


def tasks_for(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand a task selection into built-in task names.

    Args:
        spec: a task name, a level name, ``all``, or a comma list (or sequence) of those.

    Returns:
        Task names in battery order, without repeats.

    Raises:
        TaskError: an item is neither a task, a level nor ``all``, or the selection is empty.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [item.strip() for item in items if item.strip()]
    specs = builtin_specs()
    if not items:
        raise TaskError("the task selection is empty; name tasks, levels or 'all'")
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            chosen.update(specs)
        elif item in specs:
            chosen.add(item)
        elif item in LEVELS:
            chosen.update(name for name, s in specs.items() if s.level == item)
        else:
            raise TaskError(
                f"unknown task or level {item!r}; valid levels: {', '.join(LEVELS)}, 'all'; "
                f"valid tasks: {', '.join(specs)}"
            )
    return [name for name in specs if name in chosen]


def build_task(name: str, tokenizer: Any, n: int = 64, seed: int = 0, min_pairs: int = MIN_PAIRS) -> Task:
    """Generate a built-in task for a tokenizer.

    Args:
        name: a built-in task name (see :func:`builtin_task_names`).
        tokenizer: the tokenizer of the model the task is for; corrupt prompts must align with
            their prompts *for this tokenizer* (:mod:`cortexmap.tasks.alignment`).
        n: number of pairs wanted (fewer come back when the templates run out).
        seed: sampling seed; the same seed gives the same pairs.
        min_pairs: raise when fewer usable pairs than this are found (0: never raise).

    Returns:
        The task, with ``dropped`` counting the rejected candidates by reason.

    Raises:
        TaskError: unknown name, ``n < 1``, or fewer than ``min_pairs`` usable pairs.
    """
    if n < 1:
        raise TaskError(f"n must be at least 1, got {n}")
    spec = _spec(name)
    pairs, dropped = generate_pairs(spec, tokenizer, n, seed)
    if min_pairs > 0:
        require_pairs(name, pairs, dropped, min(min_pairs, n))
    is_set = any(isinstance(v.target, tuple) for v in spec.variants)
    if pairs:
        metric = task_metric(pairs, tokenizer, spec.metric)
    else:
        metric = (spec.metric or "prob_diff") if is_set else "logit_diff"
    return Task(name=name, level=spec.level, description=spec.description, pairs=pairs, dropped=dropped,
                version=spec.version, metric=metric)


def list_tasks() -> pd.DataFrame:
    """The built-in battery as a table: ``name, level, description, has_corrupt, version, answers``.

    ``answers`` is ``pair`` (a target and a foil) or ``set`` (answer sets, scored by ``metric``).
    """
    rows = [
        {"name": s.name, "level": s.level, "description": s.description, "has_corrupt": s.has_corrupt,
         "version": s.version, "answers": "set" if any(isinstance(v.target, tuple) for v in s.variants) else "pair"}
        for s in builtin_specs().values()
    ]
    return pd.DataFrame(rows, columns=["name", "level", "description", "has_corrupt", "version", "answers"])


BATTERY_COLUMNS = ["kind", "name", "level", "description"]


def list_battery() -> pd.DataFrame:
    """Everything a map and its analysis can measure, one row each: tasks, probes, condition sets.

    Returns:
        Columns ``kind, name, level, description``: ``kind`` is ``task`` (a built-in task),
        ``probe`` (a mechanistic attention probe) or ``condition`` (a condition set of the
        regulator analysis); ``level`` is a task's level (empty otherwise); ``description`` is
        one line on what the row measures.
    """
    rows = [("task", s.name, s.level, s.description) for s in builtin_specs().values()]
    rows += [("probe", p.name, "", p.description) for p in PROBES.values()]
    rows += [("condition", name, "", text) for name, text in condition_descriptions().items()]
    return pd.DataFrame(rows, columns=BATTERY_COLUMNS)
