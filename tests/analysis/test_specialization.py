"""Tests of cortexmap.analysis.specialization: index, interactions, self-repair."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cortexmap.analysis.specialization import (
    pairwise_interactions,
    redundancy_summary,
    specialization_index,
    specialization_summary,
    specialization_values,
)

from .conftest import N_HEADS, N_LAYERS
from .synthetic import make_effects


def test_index_extremes() -> None:
    effect = np.array([[-0.5, 0.0, 0.0, 0.0], [-0.2, -0.2, 0.2, -0.2], [-0.4, -0.3, -0.2, -0.1], [0, 0, 0, 0]])
    values = specialization_values(effect)
    assert values[0] == pytest.approx(1.0)
    assert values[1] == pytest.approx(0.0)
    assert 0.0 < values[2] < 0.2
    assert np.isnan(values[3])


def test_index_per_head_and_summary() -> None:
    planted = {(2, 1): {"ioi": -0.6}, (6, 3): {t: -0.3 for t in ("ioi", "antonyms", "capitals", "arithmetic",
                                                                     "past_tense", "hypernyms")}}
    planted.update({(9, h): {"capitals": -0.5} for h in range(4)})
    effects, _ = make_effects(N_LAYERS, N_HEADS, planted, seed=2)
    table = specialization_index(effects, N_LAYERS, N_HEADS).set_index("head_id")
    assert table.loc["L2H1", "specialization"] > 0.6 and table.loc["L2H1", "top_task"] == "ioi"
    assert table.loc["L6H3", "specialization"] < table.loc["L2H1", "specialization"] - 0.3
    summary = specialization_summary(effects, N_LAYERS, N_HEADS, n_boot=200, n_perm=200)
    assert summary["heads"] == "active" and summary["n_heads"] >= 6
    assert summary["ci_low"] <= summary["mean"] <= summary["ci_high"]
    assert summary["mean"] > summary["null_p95"] and summary["p_value"] < 0.05


def test_summary_of_noise_is_not_significant(null_effects: pd.DataFrame) -> None:
    summary = specialization_summary(null_effects, N_LAYERS, N_HEADS, active_only=False, n_boot=100, n_perm=200)
    assert summary["p_value"] > 0.05


def test_interaction_signs() -> None:
    pairs = pd.DataFrame({"task": "ioi", "head_a": ["L1H0", "L2H0", "L3H0"], "head_b": ["L4H0", "L5H0", "L6H0"],
                          "effect_a": [-0.05, -0.4, -0.2], "effect_b": [-0.05, -0.4, -0.2],
                          "effect_ab": [-0.6, -0.45, -0.41]})
    table = pairwise_interactions(pairs)
    assert table["interaction"].tolist() == pytest.approx([-0.5, 0.35, -0.01])
    assert table["kind"].tolist() == ["redundant", "sub_additive", "additive"]
    assert "interaction" not in pairs.columns  # input untouched
    summary = redundancy_summary(pairs, n_boot=100)
    assert summary["fraction_redundant"] == pytest.approx(1 / 3)
