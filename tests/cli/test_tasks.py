"""`cortexmap tasks list` and `cortexmap tasks check`."""

from __future__ import annotations

from importlib import resources

import pandas as pd
import yaml

from cortexmap.tasks.conditions import condition_descriptions
from cortexmap.tasks.probes import PROBES
from tests.cli.invoke import assert_ok, assert_one_line_error, invoke


def _yaml(name: str) -> dict:
    return yaml.safe_load((resources.files("cortexmap.tasks") / "data" / name).read_text(encoding="utf-8"))


def test_tasks_list_shows_every_task_probe_and_condition_set_with_what_it_measures():
    out = assert_ok(invoke("tasks", "list"))
    lines = out.splitlines()
    titles = [line.strip() for line in lines if ":" in line and "│" not in line and line.strip()]
    assert [t.split(":")[0] for t in titles] == ["tasks", "mechanistic probes", "condition sets"]
    rows: dict[str, list[list[str]]] = {}  # a row's first cell -> its lines' cells (long cells wrap onto more lines)
    for line in lines:
        if line.startswith("│"):
            cells = [c.strip() for c in line.split("│")[1:-1]]
            if cells[0]:
                name = cells[0]
            rows.setdefault(name, []).append(cells)

    def column(name: str, i: int) -> str:
        return " ".join(cells[i] for cells in rows[name] if cells[i])

    for level in ("lexical", "syntactic", "semantic", "pragmatic", "knowledge", "reasoning"):  # the data files
        for name in _yaml(f"{level}.yaml")["tasks"]:
            assert column(name, 1) == level, name
    for name, probe in PROBES.items():  # probes.py's own registry
        assert probe.description.strip() and column(name, 1) == " ".join(probe.description.split()), name
    descriptions = condition_descriptions()
    for name in _yaml("conditions.yaml")["sets"]:  # every set of the data file, with conditions.py's line
        assert descriptions[name].strip() and column(name, 1) == " ".join(descriptions[name].split()), name


def test_tasks_check_scores_the_chosen_tasks_and_writes_the_table(word_model, tmp_path):  # noqa: ANN001
    csv = tmp_path / "check.csv"
    out = assert_ok(invoke("tasks", "check", "--model", word_model, "--tasks", "ioi,capitals", "--prompts", 8,
                           "--out", csv))
    table = pd.read_csv(csv)
    assert table["task"].tolist() == ["ioi", "capitals"] and (table["usable"] == 8).all()
    assert f"{int(table['above_chance'].sum())}/2 tasks above chance" in out


def test_tasks_check_refuses_an_unknown_task_before_loading_the_model(tmp_path):  # noqa: ANN001
    assert_one_line_error(invoke("tasks", "check", "--model", tmp_path / "no-model", "--tasks", "ioi,nope"),
                          "unknown task or level 'nope'")
