"""Simulated result tables under nulls that break a test's naive assumption (numpy and pandas only).

A statistical test of the atlas is trusted only after it has been run on data where its null is
true but its naive assumption is not, and has rejected at about its nominal rate. The generators
here draw such data in the run layout (docs/schema.md), so the shipped analysis runs on them
unchanged; the calibration tests (tests/analysis/test_calibration.py) and ``bench/calibration.py``
use them.

:func:`task_clustered_battery` is the null of every level claim: each task keeps its important
heads around a *task-specific* depth drawn independently of its level (heads are clustered by
task, as real circuits are), so level labels carry no depth information although depth varies a
lot between tasks. ``level_shift`` plants a depth difference of that size (in relative depth) per
level ordinal, for power.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

Z95 = 1.959963984540054

# The built-in battery's tasks per level (the hypothesis ordinal of each level is in analysis.levels).
BATTERY_LEVELS: dict[str, int] = {"lexical": 5, "syntactic": 5, "semantic": 4, "pragmatic": 4, "knowledge": 2,
                                  "reasoning": 5}


@dataclass(frozen=True)
class SimulatedRun:
    """A simulated run: its effects and per-prompt effects tables, and the truth behind them."""

    effects: pd.DataFrame
    prompt_effects: pd.DataFrame
    shape: tuple[int, int]
    truth: np.ndarray  # [heads, tasks] true effect_normalized
    task_depth: np.ndarray  # [tasks] the depth each task's heads were drawn around


def run_tables(truth: np.ndarray, tasks: list[str], levels: list[str], n_heads: int, rng: np.random.Generator, *,
               n_prompts: int = 32, noise_sd: float = 0.3, clean: float = 2.0, model: str = "simulated",
               interventions: tuple[str, ...] = ("patch", "mean"), method: str = "exact") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Effects and per-prompt tables of ``truth`` [heads, tasks] (normalized effects) under each intervention.

    Per-prompt effects are ``(truth + Normal(0, noise_sd)) * clean``; the effects table reports their
    mean and a normal 95% interval, as the sweep reports a bootstrap interval. Each intervention
    gets its own noise on the same truth.
    """
    n_total = truth.shape[0]
    layer = np.arange(n_total) // n_heads
    head = np.arange(n_total) % n_heads
    head_id = [f"L{a}H{b}" for a, b in zip(layer, head)]
    frames, prompt_frames = [], []
    for iv in interventions:
        noise = rng.normal(0.0, noise_sd, (n_prompts, n_total, len(tasks)))
        per_prompt = (truth[None] + noise) * clean  # [prompts, heads, tasks]
        mean = per_prompt.mean(axis=0)
        half = Z95 * per_prompt.std(axis=0, ddof=1) / np.sqrt(n_prompts)
        for j, (task, level) in enumerate(zip(tasks, levels)):
            frames.append(pd.DataFrame({
                "model": model, "task": task, "level": level, "intervention": iv, "alpha": np.nan, "method": method,
                "layer": layer, "head": head, "head_id": head_id, "n_prompts": n_prompts, "clean": clean,
                "intervened": clean + mean[:, j], "effect": mean[:, j], "effect_normalized": mean[:, j] / clean,
                "ci_low": mean[:, j] - half[:, j], "ci_high": mean[:, j] + half[:, j]}))
            prompt_frames.append(pd.DataFrame({
                "task": task, "intervention": iv, "alpha": np.nan, "method": method,
                "layer": np.tile(layer, n_prompts), "head": np.tile(head, n_prompts),
                "prompt": np.repeat(np.arange(n_prompts), n_total), "effect": per_prompt[:, :, j].ravel(),
                "clean": clean}))
    return pd.concat(frames, ignore_index=True), pd.concat(prompt_frames, ignore_index=True)


def task_clustered_battery(rng: np.random.Generator, *, n_layers: int = 30, n_heads: int = 9,
                           tasks_per_level: Mapping[str, int] | None = None, level_order: Mapping[str, int] | None = None,
                           level_shift: float = 0.0, heads_per_task: tuple[int, int] = (3, 9),
                           spread_layers: float = 2.0, effect_range: tuple[float, float] = (0.1, 0.5),
                           n_prompts: int = 32, noise_sd: float = 0.3,
                           interventions: tuple[str, ...] = ("patch", "mean"),
                           common_depth: float | None = None) -> SimulatedRun:
    """A battery whose tasks keep their heads at task-specific depths unrelated to their level (module docstring).

    Args:
        rng: the generator.
        n_layers: layers.
        n_heads: heads per layer.
        tasks_per_level: tasks of each level (default: the built-in battery's :data:`BATTERY_LEVELS`).
        level_order: level -> hypothesis ordinal, used only with ``level_shift`` (default: lexical 0,
            syntactic / semantic / pragmatic 1, knowledge / reasoning 2).
        level_shift: depth added per ordinal step to each task's centre (0: the null).
        heads_per_task: range of important heads per task (inclusive).
        spread_layers: sd, in layers, of a task's heads around its centre.
        effect_range: range of the planted harms (normalized effects are their negatives).
        n_prompts: prompts per task.
        noise_sd: per-prompt noise sd, in units of the clean metric.
        interventions: interventions to simulate (same truth, independent noise).
        common_depth: every task's centre (no task-specific depth: the null of per-task adaptivity).
    """
    per_level = dict(BATTERY_LEVELS if tasks_per_level is None else tasks_per_level)
    order = dict({"lexical": 0, "syntactic": 1, "semantic": 1, "pragmatic": 1, "knowledge": 2, "reasoning": 2}
                 if level_order is None else level_order)
    levels = [lev for lev, n in per_level.items() for _ in range(n)]
    tasks = [f"{lev}_{i}" for lev, n in per_level.items() for i in range(n)]
    base = rng.uniform(0.15, 0.85 - 2 * max(level_shift, 0.0), len(tasks)) if level_shift else rng.uniform(0.1, 0.9, len(tasks))
    centre = base + level_shift * np.array([order.get(lev, 0) for lev in levels])
    if common_depth is not None:
        centre = np.full(len(tasks), float(common_depth))
    truth = np.zeros((n_layers * n_heads, len(tasks)))
    for j, c in enumerate(centre):
        k = int(rng.integers(heads_per_task[0], heads_per_task[1] + 1))
        layers = np.clip(np.rint(rng.normal(c * (n_layers - 1), spread_layers, k)), 0, n_layers - 1).astype(int)
        cols = layers * n_heads + rng.integers(0, n_heads, k)
        truth[cols, j] = -rng.uniform(*effect_range, k)
    effects, prompts = run_tables(truth, tasks, levels, n_heads, rng, n_prompts=n_prompts, noise_sd=noise_sd,
                                  interventions=interventions)
    return SimulatedRun(effects, prompts, (n_layers, n_heads), truth, centre)
