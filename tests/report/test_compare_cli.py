"""`cortexmap compare`: the printed summary and compare.json of two synthetic runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from cortexmap.cli import app


def test_compare_prints_statistics_and_writes_records(rich_runs: tuple[Path, Path], tmp_path: Path) -> None:
    run_a, run_b = (shutil.copytree(r, tmp_path / r.name) for r in rich_runs)
    result = CliRunner().invoke(app, ["compare", str(run_a), str(run_b)])
    assert result.exit_code == 0, result.output
    assert "profile conservation" in result.output and "p = " in result.output and "95% CI" in result.output
    assert "scale comparison" in result.output
    saved = json.loads((run_a / "compare.json").read_text())
    comp = saved["comparisons"][0]
    assert comp["b"] == "synthetic-b" and 0 <= comp["p_value"] <= 1
    assert comp["matches"] and {"head_a", "head_b", "similarity"} <= set(comp["matches"][0])
    assert {row["model"] for row in saved["scale"]} == {"synthetic-b", comp["a"]}


def test_compare_needs_two_runs(rich_runs: tuple[Path, Path]) -> None:
    result = CliRunner().invoke(app, ["compare", str(rich_runs[0])])
    assert result.exit_code == 1 and "at least two run directories" in result.output
