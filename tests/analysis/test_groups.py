"""Tests of cortexmap.analysis.groups: planted groups are recovered, noise is not grouped."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from cortexmap.analysis.groups import functional_groups

from .conftest import N_HEADS, N_LAYERS


def test_planted_groups_are_recovered(grouped: tuple[pd.DataFrame, np.ndarray]) -> None:
    effects, truth = grouped
    result = functional_groups(effects, N_LAYERS, N_HEADS, n_boot=30, n_null=30, seed=0)
    labels = result["assignments"]["group"].to_numpy()
    assert result["k"] == 3
    assert adjusted_rand_score(truth, labels) > 0.8
    assert result["silhouette_p_value"] < 0.05
    assert result["stability"]["ari_mean"] > 0.8
    assert result["stability"]["ci_low"] <= result["stability"]["ari_mean"] <= result["stability"]["ci_high"]
    names = result["groups"].set_index("group")["group_name"]
    assert names[0] == "G0 inert"
    dominant = set(result["groups"]["dominant_level"].dropna())
    assert dominant == {"lexical", "pragmatic", "reasoning"}


def test_kmeans_agrees(grouped: tuple[pd.DataFrame, np.ndarray]) -> None:
    effects, truth = grouped
    result = functional_groups(effects, N_LAYERS, N_HEADS, algorithm="kmeans", n_boot=0, n_null=0, seed=0)
    assert adjusted_rand_score(truth, result["assignments"]["group"]) > 0.8
    assert result["stability"]["ari_mean"] is None


def test_noise_is_mostly_inert_and_not_significant(null_effects: pd.DataFrame) -> None:
    result = functional_groups(null_effects, N_LAYERS, N_HEADS, n_boot=10, n_null=30, seed=0)
    assert result["n_inert"] >= 0.9 * N_LAYERS * N_HEADS
    if result["silhouette_p_value"] is not None:
        assert result["silhouette_p_value"] > 0.05


def test_all_zero_effects_are_one_inert_group(null_effects: pd.DataFrame) -> None:
    zero = null_effects.assign(effect=0.0, effect_normalized=0.0, ci_low=-0.1, ci_high=0.1)
    result = functional_groups(zero, N_LAYERS, N_HEADS, n_boot=5, n_null=5)
    assert result["k"] == 0
    assert (result["assignments"]["group"] == 0).all()
    assert result["groups"]["group_name"].tolist() == ["G0 inert"]
