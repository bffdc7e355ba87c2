"""The task-battery column of pruning curves, checked against hooked ablation and direct forward passes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import cortexmap
from cortexmap.apply import battery_scorer, pruning_curve, random_importance, select_heads
from cortexmap.tasks import Pair, Task
from tests.apply.chars import CharTokenizer
from tests.tiny import random_ids, tiny_handle


def char_tasks() -> list[Task]:
    """Two tasks of single-character answers (every prompt length differs, so batches vary)."""
    first = Task("first", "custom", "", [Pair("abc" * k, "d", "e") for k in range(1, 9)])
    second = Task("second", "custom", "", [Pair("xy" * k + "z", "r", "q") for k in range(1, 11)])
    return [first, second]


def direct_means(handle, tasks, heads=()):  # noqa: ANN001, ANN201
    """Per task, the mean last-position logit difference, one unbatched forward per prompt."""
    per_task = []
    with torch.no_grad(), cortexmap.intervene(handle, ablate=list(heads)):
        for task in tasks:
            diffs = []
            for pair in task.pairs:
                ids = torch.tensor([handle.tokenizer(pair.prompt)["input_ids"]])
                logits = handle.model(input_ids=ids).logits[0, -1]
                target, foil = (handle.tokenizer(a)["input_ids"][0] for a in (pair.target, pair.foil))
                diffs.append(float(logits[target] - logits[foil]))
            per_task.append(np.mean(diffs))
    return np.array(per_task)


def direct_score(handle, tasks, heads=()):  # noqa: ANN001, ANN201
    """Mean over tasks of each task's mean divided by the unpruned model's (every task here has a positive one)."""
    return float(np.mean(direct_means(handle, tasks, heads) / direct_means(handle, tasks)))


@pytest.fixture
def handle():  # noqa: ANN201
    h = tiny_handle("llama_gqa")
    h.tokenizer = CharTokenizer()
    return h


def test_battery_score_equals_direct_forward_passes(handle):  # noqa: ANN001
    score = battery_scorer(handle, char_tasks(), batch_size=3)
    assert score(handle) == pytest.approx(direct_score(handle, char_tasks()), abs=1e-5)


def test_curve_task_column_is_the_pruned_models_battery_score(handle):  # noqa: ANN001
    table = random_importance(handle, seed=2)
    score = battery_scorer(handle, char_tasks())
    curve = pruning_curve(handle, {"random": table}, fractions=[0.5], replace=["zero"],
                          text=random_ids(batch=2, seq=10, seed=4), task_score=score)
    base, row = curve.iloc[0], curve.iloc[1]
    assert base["task_score"] == pytest.approx(direct_score(handle, char_tasks()), abs=1e-5)
    assert row["task_score"] == pytest.approx(direct_score(handle, char_tasks(), select_heads(table, 6)), abs=1e-5)
    expected = 100 * (row["task_score"] - base["task_score"]) / abs(base["task_score"])
    assert row["task_delta_pct"] == pytest.approx(expected) and base["task_delta_pct"] == 0.0


def test_the_unpruned_model_scores_one_and_tasks_it_gets_wrong_are_left_out(handle):  # noqa: ANN001
    tasks = char_tasks()
    assert (direct_means(handle, tasks) > 0).all()
    assert battery_scorer(handle, tasks)(handle) == pytest.approx(1.0)
    wrong = Task("wrong", "custom", "", [Pair(p.prompt, p.foil, p.target) for p in tasks[0].pairs])
    with_wrong = battery_scorer(handle, tasks + [wrong])
    heads = [(0, 1), (2, 3)]
    with cortexmap.intervene(handle, ablate=heads):  # another handle on the same model: measured, not the cached base
        ablated = with_wrong(handle.__class__(handle.model, handle.tokenizer, "ablated", handle.geometry))
    assert ablated == pytest.approx(direct_score(handle, tasks, heads), abs=1e-5)


def test_no_task_fits_the_tokenizer_means_no_scorer(handle, caplog):  # noqa: ANN001
    empty = Task("empty", "custom", "", [])
    with caplog.at_level(logging.WARNING, logger="cortexmap.apply.battery"):
        assert battery_scorer(handle, [empty], n_prompts=8) is None
    assert "no task of the battery fits" in caplog.text
