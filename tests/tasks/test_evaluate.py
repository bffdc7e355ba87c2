"""Tests of cortexmap/tasks/evaluate.py on a tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch

from cortexmap.errors import TaskError
from cortexmap.tasks import Pair, Task, build_task, check_tasks, evaluate_task
from cortexmap.tasks.evaluate import CHECK_COLUMNS, EVAL_COLUMNS


def test_evaluate_task_matches_a_direct_forward_pass(tiny):
    task = build_task("capitals", tiny.tokenizer, n=10, seed=0)
    scores = evaluate_task(tiny, task, batch_size=3)
    assert list(scores.columns) == EVAL_COLUMNS
    assert scores["pair"].tolist() == list(range(10))
    for row in scores.itertuples():
        pair = task.pairs[row.pair]
        ids = torch.tensor([tiny.tokenizer(pair.prompt)["input_ids"]])
        with torch.no_grad():
            logits = tiny.model(input_ids=ids).logits[0, -1]
        t = tiny.tokenizer(pair.target, add_special_tokens=False)["input_ids"][0]
        f = tiny.tokenizer(pair.foil, add_special_tokens=False)["input_ids"][0]
        assert row.metric == "logit_diff" and row.chance == 0.0
        assert row.score == pytest.approx((logits[t] - logits[f]).item(), abs=1e-4)
        assert row.p_target == pytest.approx(torch.softmax(logits, -1)[t].item(), rel=1e-4)
        assert row.correct == (row.score > 0)
        assert row.prompt == pair.prompt and row.task == "capitals" and row.level == "knowledge"


def test_check_tasks_table(tiny):
    table = check_tasks(tiny, "capitals,ioi", n=12, seed=0)
    assert list(table.columns) == CHECK_COLUMNS
    assert table["task"].tolist() == ["ioi", "capitals"]
    assert (table["usable"] == 12).all() and (table["chance_accuracy"] == 0.5).all() and (table["chance"] == 0).all()
    assert (table["error"] == "").all() and (table["metric"] == "logit_diff").all()
    for row in table.itertuples():
        assert row.ci_low <= row.mean <= row.ci_high
        assert row.above_chance == (row.ci_low > 0)
        assert 0.0 <= row.accuracy <= 1.0
    again = check_tasks(tiny, ["capitals"], n=12, seed=0)
    assert again.iloc[0].to_dict() == table.iloc[1].to_dict()


def test_check_tasks_reports_a_task_with_too_few_pairs(tiny):
    tiny_task = Task("mini", "custom", "", [Pair("The capital of France is", " Paris", " Rome")] * 2, {"x": 1})
    table = check_tasks(tiny, [tiny_task], n=12)
    row = table.iloc[0]
    assert row["usable"] == 2 and row["dropped"] == 1 and math.isnan(row["accuracy"])
    assert not row["above_chance"] and "only 2 usable pairs" in row["error"]


def test_check_tasks_rejects_unknown_names(tiny):
    with pytest.raises(TaskError, match="unknown task"):
        check_tasks(tiny, "capitalz")
