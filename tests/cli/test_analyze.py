"""`cortexmap analyze`: the atlas of a finished run, the model-side measurements, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from cortexmap.sweep import SweepConfig, run_sweep
from tests.cli.invoke import assert_ok, assert_one_line_error, invoke


def test_analyze_writes_the_atlas_and_prints_findings(small_run: Path, tmp_path: Path) -> None:
    run = shutil.copytree(small_run, tmp_path / "run")
    out = assert_ok(invoke("analyze", run, "--permutations", 200))
    atlas = pd.read_parquet(run / "atlas.parquet")
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(atlas) == manifest["model"]["n_layers"] * manifest["model"]["n_heads"]
    assert json.loads((run / "atlas.json").read_text())
    assert sum(line.startswith("• ") for line in out.splitlines()) >= 3
    assert f"wrote {run}/atlas.parquet ({len(atlas)} heads)" in out


def test_analyze_measures_regulators_and_redundancy_with_the_model(tiny, tmp_path: Path) -> None:  # noqa: ANN001
    model, tasks, _ = tiny
    run = tmp_path / "run"
    run_sweep(SweepConfig(model=str(model), task_file=str(tasks), interventions=["zero"], method="exact",
                          probes=False), run)
    out = assert_ok(invoke("analyze", run, "--regulators", "--redundancy", "--permutations", 100))
    influence = pd.read_parquet(run / "influence.parquet")
    assert "screen" in set(influence["condition"])  # every head screened, then the candidates per condition
    assert {c.split(":")[0] for c in influence["condition"]} >= {"reasoning", "ambiguity", "length"}
    assert (run / "pairs.parquet").exists() and "regulator" in out


def test_analyze_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    assert_one_line_error(invoke("analyze", tmp_path / "nope"), "is not a cortexmap run")
