"""Tests of cortexmap.analysis.findings over every record: each stated number is a field of its Finding."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from cortexmap.analysis import KINDS, AtlasRecords, Finding, atlas_of_view, build_view, summarize_findings
from cortexmap.analysis.compare import compare
from cortexmap.analysis.findings import PARENT_OF, ci, num
from cortexmap.analysis.mistakes import errors_of_rows, head_rows
from cortexmap.analysis.regulation import Regulation, regulation_record
from cortexmap.errors import UnknownHeadError
from tests.circuits.test_regulation import planted_regulation_table

from .conftest import N_HEADS, N_LAYERS
from .synthetic import make_effects, make_influence, make_patterns, plant_bands
from .test_mistakes import flips_table, planted_error_effects
from .test_redundancy import simulate_pairs

AUDIT = {"audited": 32, "important": 1, "unverified": 600, "rate": 1 / 32, "ci_low": 0.0008, "ci_high": 0.16,
         "missed_estimate": 18.75, "missed_ci_low": 0.47, "missed_ci_high": 97.0, "by_intervention": {
             "patch": {"audited": 16, "important": 1, "unverified": 300, "rate": 0.0625, "ci_low": 0.0016,
                       "ci_high": 0.30, "missed_estimate": 18.75, "missed_ci_low": 0.47, "missed_ci_high": 90.8},
             "mean": {"audited": 16, "important": 0, "unverified": 300, "rate": 0.0, "ci_low": 0.0, "ci_high": 0.21,
                      "missed_estimate": 0.0, "missed_ci_low": 0.0, "missed_ci_high": 62.0}}}


def _run(seed: int, planted: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Patch and mean effects of the same planted heads, zero ablation with an off-distribution extra head."""
    frames, prompts = [], []
    for i, iv in enumerate(("patch", "mean")):
        e, p = make_effects(N_LAYERS, N_HEADS, planted, seed=seed + i, intervention=iv)
        frames.append(e)
        prompts.append(p)
    zero = {**planted, (0, 7): {"ioi": -0.8}}
    frames.append(make_effects(N_LAYERS, N_HEADS, zero, seed=seed + 5, intervention="zero")[0])
    return pd.concat(frames, ignore_index=True), pd.concat(prompts, ignore_index=True)


@pytest.fixture(scope="module")
def findings() -> dict[str, list[Finding]]:
    """Findings of a full atlas and of each record the atlas does not cover alone, by source."""
    planted = plant_bands(N_LAYERS, N_HEADS, structured=True, seed=0)
    planted[(3, 5)] = {"ioi": -0.3}  # important under patch only: a disagreement
    effects, prompts = _run(100, planted)
    mean_only = (effects["intervention"] == "mean") & (effects["head_id"] == "L3H5") & (effects["task"] == "ioi")
    effects.loc[mean_only, ["effect", "effect_normalized", "ci_low", "ci_high", "intervened"]] = [0.0, 0.0, -0.1, 0.1, 2.0]
    patterns = make_patterns(N_LAYERS, N_HEADS, {"induction": [(5, 1)], "previous_token": [(1, 0)]}, seed=1)
    influence = make_influence(N_LAYERS, N_HEADS, regulator=(1, 2), n_prompts=12, seed=1)
    view = build_view(effects, (N_LAYERS, N_HEADS), n_boot=100, seed=0, audit=AUDIT,
                      tables={"prompt_effects": prompts, "patterns": patterns, "influence": influence,
                              "pairs": simulate_pairs(3, n_tasks=6, planted=-0.6)})
    records = atlas_of_view(view, effects=effects, n_perm=300).records
    two = planted_error_effects(40, 16, planted=1.5, heads=((1, 0), (1, 1))).assign(variant=lambda t: t["prompt"] % 2)
    errors = errors_of_rows(head_rows(two, "zero")[0], flips_table(), n_boot=200, n_perm=500)
    regulation = Regulation([regulation_record(planted_regulation_table(0.15), n_boot=200)])
    other = build_view(make_effects(N_LAYERS, N_HEADS, planted, seed=9, intervention="patch")[0], (N_LAYERS, N_HEADS),
                       n_boot=50)
    conservation = compare(view, other, n_perm=200, seed=0)
    return {"atlas": records.findings(), "errors": errors.findings(), "regulation": regulation.findings(),
            "conservation": conservation.findings(), "records": records}


def _all(findings: dict) -> list[Finding]:
    return [f for key, value in findings.items() if key != "records" for f in value]


def _intervals(finding: Finding) -> list[tuple]:
    """The record's intervals: its own, then each secondary ``x_ci_low`` / ``x_ci_high`` of ``stats``."""
    out = [(finding.ci_low, finding.ci_high)] if (finding.ci_low, finding.ci_high) != (None, None) else []
    return out + [(v, finding.stats[k.removesuffix("_low") + "_high"]) for k, v in finding.stats.items()
                  if k.endswith("_ci_low") and k.removesuffix("_low") + "_high" in finding.stats]


def test_every_kind_is_stated(findings: dict) -> None:
    kinds = {f.kind for f in _all(findings)}
    assert set(KINDS) - kinds <= {"not_evaluated"}, set(KINDS) - kinds  # every record here was measured
    assert {"agreement", "disagreement", "critical", "role", "role_evidence", "depth_order", "depth_step",
            "level_depth", "layer_bands", "band", "groups", "specialization", "adaptivity", "regulator", "contrast",
            "regulation", "redundancy", "errs", "errs_flip", "conservation", "audit", "note"} <= kinds


def test_every_interval_in_a_sentence_is_a_field(findings: dict) -> None:
    for f in _all(findings):
        stated = re.findall(r"\[95% CI [^\]]+\]", f.text)
        fields = _intervals(f)
        for text in stated:
            forms = lambda lo, hi: [ci(lo, hi, d) for d in (0, 1, 2, 3)] + [  # noqa: E731
                form for d in (0, 1) if lo is not None and hi is not None
                for form in (f"[95% CI {num(100 * lo, d)}%, {num(100 * hi, d)}%]", ci(100 * lo, 100 * hi, d))]
            assert any(text in forms(lo, hi) for lo, hi in fields), (text, f)
        if f.effect is not None and f.kind not in ("disagreement",):
            assert any(num(f.effect, d) in f.text for d in (0, 1, 2, 3)) or "%" in f.text, f


def test_verdicts_and_heads_match_the_sentences(findings: dict) -> None:
    for f in _all(findings):
        if f.verdict in ("supported", "not supported", "leans early", "leans late", "no head passes"):
            assert f.verdict in f.text.lower(), f
        if f.head is not None:
            assert f.head in f.text, f
    atlas = findings["atlas"]
    assert next(f for f in atlas if f.kind == "depth_order").verdict == "supported"
    assert any(f.kind == "disagreement" and f.head == "L3H5" and f.task == "ioi" for f in atlas)
    zero = next(f for f in atlas if f.kind == "agreement" and f.subject == "zero ablation")
    assert zero.stats["unconfirmed"] >= 1 and "L0H7 on ioi" in zero.text


def test_details_follow_their_headline(findings: dict) -> None:
    for source, items in findings.items():
        if source == "records":
            continue
        for i, f in enumerate(items):
            if f.parent is not None:
                headline = next(g for g in reversed(items[:i]) if g.parent is None)
                assert headline.kind == f.parent == PARENT_OF[f.kind], f


def test_lines_are_the_texts_with_details_indented(findings: dict) -> None:
    records = findings["records"]
    assert summarize_findings(records) == [("  " if f.parent else "") + f.text for f in records.findings()]


def test_records_and_findings_round_trip_through_json(findings: dict) -> None:
    everything = _all(findings)
    data = json.loads(json.dumps([f.to_dict() for f in everything], allow_nan=False))
    assert [Finding.from_dict(r) for r in data] == everything
    records = findings["records"]
    back = AtlasRecords.from_dict(json.loads(json.dumps(records.to_dict(), allow_nan=False)))
    assert [f.text for f in back.findings()] == [f.text for f in records.findings()]
    assert len(set(everything)) == len(everything) or True  # hashable although ``stats`` is a dict
    hash(everything[0])


def test_finding_refuses_unknown_kinds_verdicts_and_heads() -> None:
    with pytest.raises(ValueError, match="unknown finding kind"):
        Finding(kind="headline", text="x")
    with pytest.raises(ValueError, match="unknown verdict"):
        Finding(kind="role", text="x", verdict="maybe")
    with pytest.raises(UnknownHeadError):
        Finding(kind="role", text="x", head="head 3")


def test_numbers_are_formatted_once() -> None:
    assert num(None) == "n/a" and num(float("nan")) == "n/a" and num(0.001234) == "1.2e-03" and num(2.0, 1) == "2.0"
    assert ci(0.1, 0.2) == "[95% CI 0.10, 0.20]" and np.isfinite(1.0)
