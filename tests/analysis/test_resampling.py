"""Tests of cortexmap.analysis.resampling: bootstrap draws of the effect table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cortexmap.analysis.resampling import bootstrap_effects
from cortexmap.stats import percentile_interval
from cortexmap.analysis.selection import effect_arrays, select_effects

from .conftest import N_HEADS, N_LAYERS


def test_normal_draws_match_reported_intervals(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    arrays = effect_arrays(select_effects(banded[0]), N_LAYERS, N_HEADS)
    draws = bootstrap_effects(arrays, n_boot=2000, seed=0)
    assert np.allclose(draws.mean(axis=0), arrays.effect, atol=4 * arrays.se.max() / np.sqrt(2000))
    assert np.allclose(draws.std(axis=0), arrays.se, rtol=0.1)


def test_prompt_bootstrap_is_centred_and_seeded(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    effects, prompt_effects = banded
    arrays = effect_arrays(select_effects(effects), N_LAYERS, N_HEADS)
    draws = bootstrap_effects(arrays, prompt_effects=prompt_effects, n_boot=400, seed=1)
    assert np.allclose(draws.mean(axis=0), arrays.effect, atol=0.02)
    # the synthetic interval is a normal one, so the bootstrap spread should agree with it
    assert np.median(draws.std(axis=0) / arrays.se) == pytest.approx(1.0, rel=0.15)
    again = bootstrap_effects(arrays, prompt_effects=prompt_effects, n_boot=400, seed=1)
    assert np.array_equal(draws, again)


def test_percentile_interval_ignores_nan() -> None:
    draws = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan]])
    low, high = percentile_interval(draws, level=0.5)
    assert low[0] == 1.5 and high[0] == 2.5
    assert np.isnan(low[1]) and np.isnan(high[1])
