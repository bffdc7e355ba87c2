"""The task battery: minimal-pair tasks, mechanistic probes and condition sets.

Tasks are prompts in, per-example scores out. :mod:`~cortexmap.tasks.core` fixes the pair
format (one target and one foil of any token length, or answer sets), :mod:`~cortexmap.tasks.metrics`
the metrics (the logit difference for one-token pairs, the teacher-forced log-probability
difference for longer answers, probability mass differences for sets), :mod:`~cortexmap.tasks.encoding`
the padded batches and :mod:`~cortexmap.tasks.alignment` how corrupt prompts of another length
line up; :func:`~cortexmap.tasks.core.cue_positions` says where a pair's cue words sit in its prompt;
built-in tasks come from the YAML templates in ``tasks/data``, user tasks from JSONL files.
Probes score heads from attention patterns alone; condition sets are matched prompt lists
for the regulator-head analysis.
"""

from __future__ import annotations

from cortexmap.tasks.conditions import condition_names, condition_sets
from cortexmap.tasks.core import (
    LEVEL_DESCRIPTIONS, LEVELS, MIN_PAIRS, EncodedBatch, Pair, Task, cue_positions, encode_task, logit_diff,
)
from cortexmap.tasks.metrics import METRICS, Readout
from cortexmap.tasks.custom import load_task_file
from cortexmap.tasks.evaluate import check_tasks, evaluate_task
from cortexmap.tasks.probes import probe_names, run_probes
from cortexmap.tasks.registry import build_task, builtin_task_names, list_tasks, task_level, tasks_for
from cortexmap.stats import bootstrap_ci, bootstrap_cis

__all__ = [
    "LEVELS",
    "LEVEL_DESCRIPTIONS",
    "METRICS",
    "MIN_PAIRS",
    "EncodedBatch",
    "Pair",
    "Readout",
    "Task",
    "bootstrap_ci",
    "bootstrap_cis",
    "build_task",
    "builtin_task_names",
    "check_tasks",
    "condition_names",
    "condition_sets",
    "cue_positions",
    "encode_task",
    "evaluate_task",
    "list_tasks",
    "load_task_file",
    "logit_diff",
    "probe_names",
    "run_probes",
    "task_level",
    "tasks_for",
]
