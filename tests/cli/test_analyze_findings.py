"""`cortexmap analyze`: the printed findings are the texts of the atlas's findings, in order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from cortexmap.analysis import AtlasRecords, summarize_findings
from cortexmap.cli import app


def test_analyze_prints_each_finding_text(rich_runs: tuple[Path, Path], tmp_path: Path) -> None:
    run = shutil.copytree(rich_runs[0], tmp_path / "run")
    for name in ("atlas.parquet", "atlas.json"):
        (run / name).unlink(missing_ok=True)
    result = CliRunner().invoke(app, ["analyze", str(run), "--permutations", "200"])
    assert result.exit_code == 0, result.output
    printed = [line.removeprefix("• ") for line in result.output.splitlines() if line.startswith("• ")]
    records = AtlasRecords.from_dict(json.loads((run / "atlas.json").read_text()))
    assert printed == summarize_findings(records)
    assert [line.strip() for line in printed] == [f.text for f in records.findings()]
    assert {"agreement", "regulator", "depth_order"} <= {f.kind for f in records.findings()}
