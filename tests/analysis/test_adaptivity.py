"""Tests of cortexmap.analysis.adaptivity: tasks that recruit early or late heads are named."""

from __future__ import annotations

import pandas as pd

from cortexmap.analysis.adaptivity import task_depths

from .conftest import N_HEADS, N_LAYERS
from .synthetic import TASKS, make_effects


def _planted() -> dict:
    planted: dict = {}
    for i, task in enumerate(TASKS):
        if task == "past_tense":
            layers = [0, 1, 1, 2]
        elif task == "capitals":
            layers = [9, 10, 11, 11]
        elif task == "hypernyms":
            layers = [5]
        else:
            layers = [3, 5, 6, 8]
        for j, layer in enumerate(layers):
            planted.setdefault((layer, (i + j) % N_HEADS), {})[task] = -0.4
    return planted


def test_early_and_late_tasks_are_named() -> None:
    effects, prompt_effects = make_effects(N_LAYERS, N_HEADS, _planted(), seed=11)
    table = task_depths(effects, N_LAYERS, N_HEADS, prompt_effects=prompt_effects, n_boot=300).set_index("task")
    assert table.loc["past_tense", "lean"] == "early"
    assert table.loc["capitals", "lean"] == "late"
    assert table.loc["past_tense", "diff_ci_high"] < 0 < table.loc["capitals", "diff_ci_low"]
    middle = [t for t in TASKS if t not in ("past_tense", "capitals", "hypernyms")]
    assert (table.loc[middle, "lean"] != "early").all()
    assert table.loc["hypernyms", "lean"] == "not evaluated"  # one important head is too few
    assert ((table["ci_low"] <= table["mean_depth"]) & (table["mean_depth"] <= table["ci_high"])).all()


def test_noise_leans_nowhere(null_effects: pd.DataFrame) -> None:
    table = task_depths(null_effects, N_LAYERS, N_HEADS, n_boot=200)
    assert not table["lean"].isin(["early", "late"]).any()
