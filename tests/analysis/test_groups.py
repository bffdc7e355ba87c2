"""Tests of cortexmap.analysis.groups: planted groups are recovered, noise is not grouped (calibration on a
correlated continuum: tests/analysis/test_calibration.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from cortexmap.analysis.groups import Groups, functional_groups
from cortexmap.analysis.view import build_view

from .conftest import N_HEADS, N_LAYERS


def test_planted_groups_are_recovered(grouped: tuple[pd.DataFrame, np.ndarray]) -> None:
    effects, truth = grouped
    result = functional_groups(build_view(effects, (N_LAYERS, N_HEADS), n_boot=30), n_boot=30, n_null=30)
    labels = result.assignments["group"].to_numpy()
    assert result.k == 3
    assert adjusted_rand_score(truth, labels) > 0.8
    # The PC-permutation null is conservative: clusters along principal axes partly survive it (power ~75%
    # on the planted set of test_calibration.py); three clean groups of 10 heads reach p ~ 0.1 here.
    assert result.p_value < 0.2
    assert result.stability_ari > 0.6  # normal scores blur the planted groups somewhat (0.71 here)
    assert result.stability_ci_low <= result.stability_ari <= result.stability_ci_high
    names = result.groups.set_index("group")["group_name"]
    assert names[0] == "G0 inert"
    dominant = set(result.groups["dominant_level"].dropna())
    assert dominant == {"lexical", "pragmatic", "reasoning"}
    assert Groups.from_dict(result.to_dict()).findings()[0].text == result.findings()[0].text


def test_kmeans_agrees(grouped: tuple[pd.DataFrame, np.ndarray]) -> None:
    effects, truth = grouped
    result = functional_groups(build_view(effects, (N_LAYERS, N_HEADS), n_boot=10), algorithm="kmeans", n_boot=0,
                               n_null=0)
    assert adjusted_rand_score(truth, result.assignments["group"]) > 0.8
    assert result.stability_ari is None and result.verdict == "not evaluated"


def test_noise_is_mostly_inert_and_not_significant(null_effects: pd.DataFrame) -> None:
    result = functional_groups(build_view(null_effects, (N_LAYERS, N_HEADS), n_boot=10), n_boot=10, n_null=30)
    assert result.n_inert >= 0.9 * N_LAYERS * N_HEADS
    if result.p_value is not None:
        assert result.p_value > 0.05


def test_all_zero_effects_are_one_inert_group(null_effects: pd.DataFrame) -> None:
    zero = null_effects.assign(effect=0.0, effect_normalized=0.0, ci_low=-0.1, ci_high=0.1)
    result = functional_groups(build_view(zero, (N_LAYERS, N_HEADS), n_boot=5), n_boot=5, n_null=5)
    assert result.k == 0
    assert (result.assignments["group"] == 0).all()
    assert result.groups["group_name"].tolist() == ["G0 inert"]
