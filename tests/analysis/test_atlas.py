"""Tests of cortexmap.analysis.atlas: the one-call analysis, its per-head table and its printed lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd

from cortexmap.analysis import ATLAS_COLUMNS, AtlasOptions, AtlasRecords, build_atlas, summarize_findings

from .conftest import N_HEADS, N_LAYERS
from .synthetic import make_effects, plant_bands


def _counterfactual(planted: dict, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    parts = [make_effects(N_LAYERS, N_HEADS, planted, seed=seed + i, intervention=iv) for i, iv in enumerate(("patch", "mean"))]
    return (pd.concat([p[0] for p in parts], ignore_index=True), pd.concat([p[1] for p in parts], ignore_index=True))


def _assert_every_finding_has_an_interval(records: AtlasRecords) -> None:
    """Every result states an interval, unless it is a heading, a note, or not evaluated / not tested."""
    for f in records.findings():
        if f.kind in ("not_evaluated", "note", "layer_bands", "role", "critical", "groups", "conservation") or \
                f.verdict in ("not evaluated", "underpowered") or "not evaluated" in f.text:
            continue
        assert "95% CI" in f.text, f


def test_atlas_table_and_findings(patterns: pd.DataFrame, influence: pd.DataFrame) -> None:
    effects, prompts = _counterfactual(plant_bands(N_LAYERS, N_HEADS, structured=True, seed=0), seed=100)
    before = effects.copy(), patterns.copy(), influence.copy()
    atlas, records = build_atlas(effects, shape=(N_LAYERS, N_HEADS),
                                 tables={"patterns": patterns, "influence": influence, "prompt_effects": prompts},
                                 options=AtlasOptions(n_boot=100, n_perm=500, seed=0))
    pd.testing.assert_frame_equal(effects, before[0])
    pd.testing.assert_frame_equal(patterns, before[1])
    pd.testing.assert_frame_equal(influence, before[2])
    assert len(atlas) == N_LAYERS * N_HEADS and atlas["head_id"].is_unique
    assert list(atlas.columns[: len(ATLAS_COLUMNS)]) == list(ATLAS_COLUMNS)
    assert "probe:induction" in atlas.columns
    assert records.interventions == ("patch", "mean") and records.counterfactual
    table = atlas.set_index("head_id")
    assert "previous_token" in table.loc["L1H0", "roles"].split(";")
    assert "induction" not in table.loc["L5H1", "roles"]  # attention alone: induction needs copy evidence too
    critical = table[table["critical_for"] != ""]
    assert len(critical) and (critical["top_significant"] | (critical["critical_for"] != "")).all()
    assert table["regulator_score"].idxmax() == "L1H2"
    assert records.depth_order.verdict == "supported" and records.depth_order.detectable_step is not None
    lines = summarize_findings(records)
    assert any(l.startswith("Interventions patch and mean") for l in lines)
    assert any(l.startswith("Depth order") and "supported" in l and "p = " in l for l in lines)
    assert any("critical for" in l and "no mechanism named" in l for l in lines)
    _assert_every_finding_has_an_interval(records)
    data = json.loads(json.dumps(records.to_dict(), allow_nan=False))
    assert summarize_findings(AtlasRecords.from_dict(data)) == lines


def test_atlas_without_optional_inputs(null_effects: pd.DataFrame) -> None:
    atlas, records = build_atlas(null_effects, shape=(N_LAYERS, N_HEADS), options=AtlasOptions(n_boot=50, n_perm=200))
    assert atlas["regulator_score"].isna().all()
    assert records.regulators.scores is None and records.redundancy.verdict == "not evaluated"
    assert records.depth_order.verdict != "supported"
    assert not records.counterfactual  # null_effects is a zero-ablation table: every claim says so
    lines = summarize_findings(records)
    assert any("zero ablation only" in l for l in lines)
    assert any("not evaluated" in l for l in lines)
    _assert_every_finding_has_an_interval(records)
    json.dumps(records.to_dict(), allow_nan=False)


def test_analysis_never_imports_torch() -> None:
    code = "import sys, cortexmap.analysis, cortexmap.analysis.run; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": "src"}, cwd=__file__.rsplit("/tests/", 1)[0])
    assert out.stdout.strip() == "False"


def test_regulator_candidates_are_judged_against_the_screen_of_every_head(null_effects: pd.DataFrame) -> None:
    """As `analyze --regulators` stores them: a screen of every head, then a few heads on the conditions."""
    from .synthetic import make_influence

    screen = make_influence(N_LAYERS, N_HEADS, regulator=(1, 2), strength={"screen": 0.4}, n_prompts=4, seed=2)
    measured = make_influence(N_LAYERS, N_HEADS, regulator=(1, 2), n_prompts=8, seed=3)
    few = {(1, 2), (0, 0), (2, 3)}
    keep = [(l, h) in few for l, h in zip(measured["source_layer"], measured["source_head"])]
    influence = pd.concat([screen, measured[keep]], ignore_index=True)
    _, records = build_atlas(null_effects, shape=(N_LAYERS, N_HEADS), tables={"influence": influence},
                             options=AtlasOptions(n_boot=100, n_perm=200))
    regulators = records.regulators
    assert regulators.n_sources == (N_LAYERS - 1) * N_HEADS  # every head with later heads was screened
    assert regulators.scores.iloc[0]["head_id"] == "L1H2" and bool(regulators.scores.iloc[0]["candidate"])
    assert set(regulators.contrasts["head_id"]) <= {"L1H2", "L0H0", "L2H3"}  # contrasts from the measured heads only
