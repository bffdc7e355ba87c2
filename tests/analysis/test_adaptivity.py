"""Tests of cortexmap.analysis.adaptivity: tasks that recruit early or late heads are named (calibration:
tests/analysis/test_calibration.py)."""

from __future__ import annotations

import pandas as pd

from cortexmap.analysis.adaptivity import task_adaptivity
from cortexmap.analysis.view import build_view

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
    view = build_view(effects, (N_LAYERS, N_HEADS), n_boot=300, tables={"prompt_effects": prompt_effects})
    result = task_adaptivity(view)
    table = result.table.set_index("task")
    assert table.loc["past_tense", "lean"] == "early"
    assert table.loc["capitals", "lean"] == "late"
    assert table.loc["past_tense", "diff_ci_high"] < 0 < table.loc["capitals", "diff_ci_low"]
    middle = [t for t in TASKS if t not in ("past_tense", "capitals", "hypernyms")]
    assert (table.loc[middle, "lean"] != "early").all()
    assert table.loc["hypernyms", "lean"] == "not evaluated"  # one important head is too few
    evaluated = table[table["n_important"] > 0]
    assert ((evaluated["ci_low"] <= evaluated["mean_depth"]) & (evaluated["mean_depth"] <= evaluated["ci_high"])).all()
    texts = [f.text for f in result.findings()]
    assert any("past_tense leans early" in x for x in texts) and any("capitals leans late" in x for x in texts)


def test_noise_leans_nowhere(null_effects: pd.DataFrame) -> None:
    table = task_adaptivity(build_view(null_effects, (N_LAYERS, N_HEADS), n_boot=200)).table
    assert not table["lean"].isin(["early", "late"]).any()
