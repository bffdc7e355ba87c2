"""Tests of cortexmap.analysis.findings and list_findings: every stated number is a field of its record."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pandas as pd
import pytest

from cortexmap.analysis import (
    KINDS,
    AtlasOptions,
    Finding,
    build_atlas,
    list_findings,
    summarize_findings,
)
from cortexmap.analysis.findings import PARENT_OF, ci, num
from cortexmap.analysis.regulation import regulation_test
from cortexmap.analysis.mistakes import edge_rows, error_contrasts, error_summary, head_rows
from cortexmap.errors import UnknownHeadError

from .conftest import N_HEADS, N_LAYERS
from tests.circuits.test_regulation import planted_regulation_table

from .test_mistakes import planted_error_effects

AUDIT = {"audited": 16, "important": 1, "unverified": 300, "rate": 0.0625, "ci_low": 0.0016, "ci_high": 0.30,
         "missed_estimate": 18.75, "missed_ci_low": 0.47, "missed_ci_high": 90.8}


@pytest.fixture(scope="module")
def variants(banded: tuple[pd.DataFrame, pd.DataFrame], patterns: pd.DataFrame, influence: pd.DataFrame,
             null_effects: pd.DataFrame) -> dict[str, dict]:
    """Findings dicts that together state every kind of finding and both sides of each verdict."""
    effects, prompt_effects = banded
    pairs = pd.DataFrame({"task": "ioi", "head_a": ["L1H0", "L2H0"], "head_b": ["L3H0", "L4H0"],
                          "effect_a": [-0.1, -0.3], "effect_b": [-0.1, -0.2], "effect_ab": [-0.6, -0.3]})
    _, full = build_atlas(effects, shape=(N_LAYERS, N_HEADS), patterns=patterns, influence=influence, pairs=pairs,
                                  prompt_effects=prompt_effects, options=AtlasOptions(n_boot=100, n_perm=200, seed=0))
    _, null = build_atlas(null_effects, shape=(N_LAYERS, N_HEADS), options=AtlasOptions(n_boot=50, n_perm=200))
    two = planted_error_effects(24, 8, planted=1.5, heads=((1, 0), (1, 1)))  # two heads differ: a headline + a detail
    differs, _ = error_contrasts(head_rows(two, "zero")[0], seed=0)
    edges = planted_error_effects(24, 8, planted=0.0, seed=5).assign(sender="L0H1", receiver="L2KV0", kind="k")
    same, _ = error_contrasts(edge_rows(edges[edges["layer"] == 0]), seed=0)
    regulation = [regulation_test(planted_regulation_table(0.15), n_boot=200),
                  regulation_test(planted_regulation_table(0.0, n_random=0), n_boot=200)]  # supported; no baseline
    full = {**full, "audit": AUDIT, "errors": error_summary(differs, "head") + error_summary(same, "edge"),
            "regulation": regulation}
    flipped = copy.deepcopy(full)  # no regulator candidate, a contrast that differs, no task that leans
    for row in flipped["regulators"]["top"]:
        row["candidate"] = False
    flipped["regulators"]["contrasts"][0]["q_value"] = 0.01
    for row in flipped["adaptivity"]:
        if row["lean"] in ("early", "late"):
            row["lean"] = "neither"
    return {"full": full, "flipped": flipped, "null": null}


def _intervals(finding: Finding) -> list[tuple]:
    """The record's intervals: its own, then each secondary ``x_ci_low`` / ``x_ci_high`` of ``stats``."""
    out = [(finding.ci_low, finding.ci_high)] if (finding.ci_low, finding.ci_high) != (None, None) else []
    return out + [(v, finding.stats[k.removesuffix("_low") + "_high"]) for k, v in finding.stats.items()
                  if k.endswith("_ci_low")]


def test_every_kind_is_stated(variants: dict[str, dict]) -> None:
    kinds = {f.kind for findings in variants.values() for f in list_findings(findings)}
    assert kinds == set(KINDS)
    verdicts = {f.verdict for findings in variants.values() for f in list_findings(findings)}
    assert {"supported", "not evaluated", "passes", "no head passes", "candidate", "no candidate", "differs",
            "no difference", "leans early", "leans late"} <= verdicts


def test_every_stated_interval_effect_and_baseline_is_a_field(variants: dict[str, dict]) -> None:
    for findings in variants.values():
        for f in list_findings(findings):
            assert f.text.count("95% CI") == len(_intervals(f)), f
            if f.effect is None:
                assert (f.ci_low, f.ci_high, f.baseline) == (None, None, None), f
                continue
            assert any(num(f.effect, d) in f.text for d in (0, 1, 2, 3)), f
            if (f.ci_low, f.ci_high) != (None, None):  # groups: the silhouette has a null, not an interval
                assert any(ci(f.ci_low, f.ci_high, d) in f.text for d in (1, 2, 3)), f
            if f.kind != "audit":  # the miss rate is an estimate without a baseline
                assert f.baseline is not None and f.baseline_label, f
            if f.p_value is not None and "p = " in f.text:
                assert any(f"p = {num(f.p_value, d)}" in f.text for d in (3, 4)), f


def test_verdicts_and_heads_match_the_sentences(variants: dict[str, dict]) -> None:
    for findings in variants.values():
        for f in list_findings(findings):
            if f.verdict in ("supported", "not supported", "not evaluated", "no head passes", "leans early", "leans late"):
                assert f.verdict in f.text.lower(), f
            if f.head is not None:
                assert f.head in f.text, f
    roles = [f for f in list_findings(variants["full"]) if f.kind == "role"]
    sink = next(f for f in roles if f.subject == "attention_sink")
    assert sink.verdict == "no head passes" and sink.head is not None and sink.method == "probe"
    assert sink.baseline_label == "threshold" and sink.effect < sink.baseline
    regulator = next(f for f in list_findings(variants["full"]) if f.kind == "regulator")
    assert (regulator.head, regulator.verdict) == ("L1H2", "candidate") and regulator.ci_low > regulator.baseline


def test_details_follow_their_headline(variants: dict[str, dict]) -> None:
    findings = list_findings(variants["full"])
    for i, f in enumerate(findings):
        if f.parent is not None:
            headline = next(g for g in reversed(findings[:i]) if g.parent is None)
            assert headline.kind == f.parent == PARENT_OF[f.kind], f
    bands = [f for f in findings if f.kind == "band"]
    header = next(f for f in findings if f.kind == "layer_bands")
    assert len(bands) == header.stats["n_bands"] == len(variants["full"]["bands"]["segmentation"])


def test_lines_are_the_texts_with_details_indented(variants: dict[str, dict]) -> None:
    findings = list_findings(variants["full"])
    assert summarize_findings(variants["full"]) == [("  " if f.parent else "") + f.text for f in findings]


def test_findings_round_trip_through_json(variants: dict[str, dict]) -> None:
    findings = list_findings(variants["flipped"])
    records = json.loads(json.dumps([f.to_dict() for f in findings], allow_nan=False))
    assert [Finding.from_dict(r) for r in records] == findings
    assert {r["parent"] for r in records} == {None, *PARENT_OF.values()}
    assert list_findings(json.loads(json.dumps(variants["flipped"]))) == findings
    assert len(set(findings)) == len(findings)  # hashable although ``stats`` is a dict


def test_finding_refuses_unknown_kinds_verdicts_and_heads() -> None:
    with pytest.raises(ValueError, match="unknown finding kind"):
        Finding(kind="headline", text="x")
    with pytest.raises(ValueError, match="unknown verdict"):
        Finding(kind="role", text="x", verdict="maybe")
    with pytest.raises(UnknownHeadError):
        Finding(kind="role", text="x", head="head 3")
    f = Finding(kind="role", text="x", head="L3H5")
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.kind = "note"  # type: ignore[misc]


def test_num_and_ci() -> None:
    assert [num(None), num(math.nan), num(math.inf), num("L3H5"), num(True)] == ["n/a", "n/a", "n/a", "L3H5", "True"]
    assert [num(0.123), num(0.123, 3), num(-0.004), num(0.0), num(3), num(2.5e5)] == [
        "0.12", "0.123", "-4.0e-03", "0.00", "3.00", "2.5e+05"]
    assert num(0.4, 0) == "0" and num(18.75, 0) == "19"
    assert ci(0.1, None) == "[95% CI 0.10, n/a]" and ci(1, 2.25, 1) == "[95% CI 1.0, 2.2]"
