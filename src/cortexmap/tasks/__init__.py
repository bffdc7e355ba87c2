"""The task battery: minimal-pair tasks, mechanistic probes and condition sets.

Tasks are prompts in, per-example scores out; see :mod:`cortexmap.tasks.core` for the pair
format and the logit-difference metric.
"""

from __future__ import annotations

from cortexmap.tasks.core import LEVELS, MIN_PAIRS, EncodedBatch, Pair, Task, encode_task, logit_diff
from cortexmap.tasks.evaluate import check_tasks, evaluate_task
from cortexmap.tasks.registry import build_task, builtin_task_names, list_tasks, task_level, tasks_for
from cortexmap.tasks.stats import bootstrap_ci

__all__ = [
    "LEVELS",
    "MIN_PAIRS",
    "EncodedBatch",
    "Pair",
    "Task",
    "bootstrap_ci",
    "build_task",
    "builtin_task_names",
    "check_tasks",
    "encode_task",
    "evaluate_task",
    "list_tasks",
    "logit_diff",
    "task_level",
    "tasks_for",
]
