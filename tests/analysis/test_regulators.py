"""Tests of cortexmap.analysis.regulators: the planted regulator is ranked first and contrasted."""

from __future__ import annotations

import pandas as pd
import pytest

from cortexmap.analysis.regulators import (
    condition_contrasts,
    default_condition_pairs,
    influence_matrix,
    regulator_scores,
)
from cortexmap.errors import ResultsError

from .conftest import N_HEADS, N_LAYERS
from .synthetic import make_influence


def test_planted_regulator_ranks_first(influence: pd.DataFrame) -> None:
    scores = regulator_scores(influence, n_boot=200, seed=0)
    top = scores.iloc[0]
    assert top["head_id"] == "L1H2"
    assert top["breadth"] == 1.0
    assert top["candidate"] and top["p_top"] > 0.99
    assert top["ci_low"] > scores.iloc[1]["ci_high"]
    assert scores["candidate"].sum() == 1
    # every source head except last-layer ones, which have no later heads
    assert len(scores) == (N_LAYERS - 1) * N_HEADS


def test_condition_contrast_separates_regulator_from_null(influence: pd.DataFrame) -> None:
    contrasts = condition_contrasts(influence, n_boot=300, n_perm=500, seed=0).set_index("head_id")
    assert contrasts["condition_a"].iloc[0] == "reasoning:multi_step"
    assert contrasts["condition_b"].iloc[0] == "reasoning:easy"
    reg = contrasts.loc["L1H2"]
    assert reg["diff"] > 0 and reg["ci_low"] > 0 and reg["p_value"] < 0.01
    null_head = contrasts.loc["L3H5"]
    assert null_head["ci_low"] <= 0 <= null_head["ci_high"]
    others = contrasts.drop(index="L1H2")
    assert ((others["ci_low"] > 0) | (others["ci_high"] < 0)).mean() <= 0.1
    assert (others["q_value"] < 0.05).sum() <= 1


def test_no_regulator_no_candidate() -> None:
    influence = make_influence(6, 4, regulator=None, n_prompts=12, seed=5)
    scores = regulator_scores(influence, n_boot=100)
    assert scores["candidate"].sum() == 0
    contrasts = condition_contrasts(influence, n_boot=100, n_perm=300)
    assert (contrasts["q_value"] < 0.05).sum() == 0


def test_noise_floor_sets_threshold(influence: pd.DataFrame) -> None:
    scores = regulator_scores(influence, noise_floor=10.0, n_boot=10)
    assert (scores["breadth"] == 0).all() and (scores["threshold"] == 10.0).all()


def test_influence_matrix_means(influence: pd.DataFrame) -> None:
    matrix = influence_matrix(influence, condition="reasoning:easy")
    row = matrix[(matrix["source_id"] == "L1H2") & (matrix["target_id"] == "L2H0")].iloc[0]
    raw = influence.query("condition == 'reasoning:easy' and source_layer == 1 and source_head == 2 "
                          "and target_layer == 2 and target_head == 0")
    assert row["out_change"] == pytest.approx(raw["out_change"].mean())
    assert row["n_prompts"] == 12


def test_condition_pairs_table() -> None:
    pairs = default_condition_pairs(["all", "reasoning:easy", "reasoning:multi_step", "ambiguity:ambiguous",
                                     "ambiguity:clear", "length:long", "length:short", "style:a", "style:b"])
    assert set(pairs) == {("reasoning:multi_step", "reasoning:easy"), ("ambiguity:ambiguous", "ambiguity:clear"),
                          ("length:long", "length:short"), ("style:b", "style:a")}


def test_bad_influence_is_refused(influence: pd.DataFrame) -> None:
    bad = influence.copy()
    bad.loc[bad.index[0], "target_layer"] = bad.loc[bad.index[0], "source_layer"]
    with pytest.raises(ResultsError, match="later"):
        regulator_scores(bad)
    with pytest.raises(ResultsError, match="condition"):
        regulator_scores(influence, condition="nope")
    with pytest.raises(ResultsError, match="metric"):
        regulator_scores(influence, metric="loss")
