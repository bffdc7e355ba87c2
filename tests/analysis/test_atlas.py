"""Tests of cortexmap.analysis.atlas and summary: the one-call analysis and its printed lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd

from cortexmap.analysis import (
    ATLAS_COLUMNS,
    AtlasOptions,
    build_atlas,
    list_findings,
    summarize_findings,
)

from .conftest import N_HEADS, N_LAYERS


def _assert_every_finding_has_an_interval(findings: dict) -> None:
    """Every finding states an interval, or says it is not evaluated, or is a settings note or a band heading."""
    for finding in list_findings(findings):
        if finding.kind in ("not_evaluated", "note", "layer_bands") or "not evaluated" in finding.text:
            continue
        assert "95% CI" in finding.text, finding


def test_atlas_table_and_findings(banded: tuple[pd.DataFrame, pd.DataFrame], patterns: pd.DataFrame,
                                  influence: pd.DataFrame) -> None:
    effects, prompt_effects = banded
    before = effects.copy(), patterns.copy(), influence.copy()
    pairs = pd.DataFrame({"task": "ioi", "head_a": ["L1H0", "L2H0"], "head_b": ["L3H0", "L4H0"],
                          "effect_a": [-0.1, -0.3], "effect_b": [-0.1, -0.2], "effect_ab": [-0.6, -0.3]})
    atlas, findings = build_atlas(effects, shape=(N_LAYERS, N_HEADS), patterns=patterns, influence=influence, pairs=pairs,
                                  prompt_effects=prompt_effects, options=AtlasOptions(n_boot=100, n_perm=500, seed=0))
    pd.testing.assert_frame_equal(effects, before[0])
    pd.testing.assert_frame_equal(patterns, before[1])
    pd.testing.assert_frame_equal(influence, before[2])
    assert len(atlas) == N_LAYERS * N_HEADS and atlas["head_id"].is_unique
    assert list(atlas.columns[: len(ATLAS_COLUMNS)]) == list(ATLAS_COLUMNS)
    assert "probe:induction" in atlas.columns
    atlas = atlas.set_index("head_id")
    assert "induction" in atlas.loc["L5H1", "roles"].split(";")
    assert atlas["regulator_score"].idxmax() == "L1H2"
    json.dumps(findings, allow_nan=False)
    assert findings["bands"]["hypothesis"]["verdict"] == "supported"
    assert findings["regulators"]["top"][0]["head_id"] == "L1H2"
    assert any("number_date" in note for note in findings["not_evaluated"])

    lines = summarize_findings(findings)
    assert lines[0].startswith("Depth order") and "supported" in lines[0] and "CI" in lines[0] and "p =" in lines[0]
    _assert_every_finding_has_an_interval(findings)
    assert any(l.startswith("Role attention_sink: no head passes") and "closest" in l for l in lines)
    assert any(l.startswith("Regulator candidate L1H2") for l in lines)
    assert summarize_findings(json.loads(json.dumps(findings))) == lines


def test_atlas_without_optional_inputs(null_effects: pd.DataFrame) -> None:
    atlas, findings = build_atlas(null_effects, shape=(N_LAYERS, N_HEADS), options=AtlasOptions(n_boot=50, n_perm=200))
    assert atlas["regulator_score"].isna().all()
    assert findings["regulators"] is None and findings["redundancy"] is None
    assert findings["bands"]["hypothesis"]["verdict"] != "supported"
    notes = " ".join(findings["not_evaluated"])
    assert "regulator" in notes and "redundancy" in notes and "induction" in notes
    lines = summarize_findings(findings)
    assert any(l.startswith("Not evaluated") for l in lines)
    _assert_every_finding_has_an_interval(findings)
    json.dumps(findings, allow_nan=False)


def test_analysis_never_imports_torch() -> None:
    code = "import sys, cortexmap.analysis; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": "src"}, cwd=__file__.rsplit("/tests/", 1)[0])
    assert out.stdout.strip() == "False"


def test_regulator_candidates_are_judged_against_the_screen_of_every_head(null_effects: pd.DataFrame) -> None:
    """As `analyze --regulators` stores them: a screen of every head, then a few heads on the conditions.

    Against the measured few alone the planted regulator would be its own baseline; against the
    screen of all heads it must stand out.
    """
    from .synthetic import make_influence

    screen = make_influence(N_LAYERS, N_HEADS, regulator=(1, 2), strength={"screen": 0.4}, n_prompts=4, seed=2)
    measured = make_influence(N_LAYERS, N_HEADS, regulator=(1, 2), n_prompts=8, seed=3)
    few = {(1, 2), (0, 0), (2, 3)}
    keep = [(l, h) in few for l, h in zip(measured["source_layer"], measured["source_head"])]
    influence = pd.concat([screen, measured[keep]], ignore_index=True)
    _, findings = build_atlas(null_effects, shape=(N_LAYERS, N_HEADS), influence=influence, options=AtlasOptions(n_boot=100, n_perm=200))
    regulators = findings["regulators"]
    assert regulators["n_sources"] == (N_LAYERS - 1) * N_HEADS  # every head with later heads was screened
    top = regulators["top"][0]
    assert top["head_id"] == "L1H2" and top["candidate"]
    assert not any(r["candidate"] for r in regulators["top"][1:])
    contrasted = {c["head_id"] for c in regulators["contrasts"]}
    assert contrasted <= {"L1H2", "L0H0", "L2H3"}  # contrasts come from the measured heads only
    assert any(c["head_id"] == "L1H2" and c["q_value"] < 0.05 for c in regulators["contrasts"])
