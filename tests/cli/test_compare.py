"""`cortexmap compare`: the printed summary and compare.json of two synthetic runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.cli.invoke import assert_ok, assert_one_line_error, invoke


def test_compare_prints_statistics_and_writes_records(rich_runs: tuple[Path, Path], tmp_path: Path) -> None:
    run_a, run_b = (shutil.copytree(r, tmp_path / r.name) for r in rich_runs)
    out = assert_ok(invoke("compare", run_a, run_b))
    assert "Cross-model conservation, synthetic-a vs synthetic-b" in out and "p = " in out
    assert "scale comparison" in out
    saved = json.loads((run_a / "compare.json").read_text())
    comp = saved["comparisons"][0]
    assert comp["model_b"] == "synthetic-b" and 0 <= comp["p_value"] <= 1 and comp["n_perm"] >= 1000
    assert comp["matches"]["rows"] and {"head_a", "head_b", "similarity"} <= set(comp["matches"]["columns"])
    scale = saved["scale"]
    assert {row["model"] for row in scale["rows"]} == {"synthetic-b", comp["model_a"]}


def test_compare_needs_two_runs(rich_runs: tuple[Path, Path]) -> None:
    assert_one_line_error(invoke("compare", rich_runs[0]), "at least two run directories")


def test_compare_refuses_a_directory_that_is_not_a_run(rich_runs: tuple[Path, Path], tmp_path: Path) -> None:
    assert_one_line_error(invoke("compare", rich_runs[0], tmp_path), "is not a cortexmap run")
