"""Tests of cortexmap.analysis.profiles: the per-head profile table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cortexmap.analysis.profiles import effect_columns, head_profiles, probe_columns, standardize
from cortexmap.errors import ResultsError

from .conftest import N_HEADS, N_LAYERS
from .synthetic import TASKS


def test_profile_layout(banded: tuple[pd.DataFrame, pd.DataFrame], patterns: pd.DataFrame) -> None:
    profiles = head_profiles(banded[0], patterns, N_LAYERS, N_HEADS)
    assert len(profiles) == N_LAYERS * N_HEADS
    assert profiles.index[0] == "L0H0" and profiles.index[-1] == f"L{N_LAYERS - 1}H{N_HEADS - 1}"
    assert profiles["rel_depth"].min() == 0.0 and profiles["rel_depth"].max() == 1.0
    assert sorted(effect_columns(profiles)) == sorted(f"zero:{t}" for t in TASKS)
    assert "probe:induction" in probe_columns(profiles)
    row = banded[0].query("task == 'ioi' and layer == 3 and head == 2").iloc[0]
    assert profiles.loc["L3H2", "zero:ioi"] == pytest.approx(row["effect_normalized"])
    assert profiles.loc["L5H1", "probe:induction"] > 0.8


def test_several_interventions_and_missing_heads(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    effects = banded[0]
    mean = effects.assign(intervention="mean", effect_normalized=effects["effect_normalized"] / 2)
    partial = pd.concat([effects, mean[mean["layer"] < 6]])
    profiles = head_profiles(partial, None, N_LAYERS, N_HEADS, interventions=["zero", "mean"])
    assert "mean:ioi" in profiles.columns and "zero:ioi" in profiles.columns
    assert profiles.loc["L8H0", "mean:ioi"] != profiles.loc["L8H0", "mean:ioi"]  # NaN: not measured
    assert np.isfinite(profiles.loc["L2H0", "mean:ioi"])


def test_patterns_outside_grid_are_refused(patterns: pd.DataFrame, banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    with pytest.raises(ResultsError):
        head_profiles(banded[0], patterns, N_LAYERS, N_HEADS - 1)


def test_standardize_handles_constant_and_nan() -> None:
    values = np.array([[1.0, 5.0, np.nan], [3.0, 5.0, 2.0]])
    z = standardize(values)
    assert z[:, 0].tolist() == [-1.0, 1.0]
    assert z[:, 1].tolist() == [0.0, 0.0]
    assert z[0, 2] == 0.0
