"""Tests of cortexmap/stats.py: bootstrap intervals, permutation p, BH q, Clopper-Pearson, power."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cortexmap.errors import CortexmapError
from cortexmap.stats import bootstrap_ci, bootstrap_cis


def test_interval_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(1).normal(2.0, 1.0, size=200)
    low, high = bootstrap_ci(values, seed=3)
    assert (low, high) == bootstrap_ci(values, seed=3)
    assert (low, high) != bootstrap_ci(values, seed=4)
    assert low < values.mean() < high
    # about 2 standard errors each side
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert 3.0 * se < high - low < 5.0 * se


def test_level_widens_the_interval():
    values = np.arange(50.0)
    low90, high90 = bootstrap_ci(values, level=0.9)
    low99, high99 = bootstrap_ci(values, level=0.99)
    assert low99 < low90 and high99 > high90


def test_edge_cases():
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([1.5]) == (1.5, 1.5)
    for bad in ({"n_boot": 0}, {"level": 1.0}, {"level": 0.0}):
        with pytest.raises(CortexmapError):
            bootstrap_ci([1.0, 2.0], **bad)
    with pytest.raises(CortexmapError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


def test_columns_match_the_one_dimensional_version():
    values = np.random.default_rng(0).normal(size=(40, 3))
    low, high = bootstrap_cis(values, seed=5)
    for col in range(3):
        assert (low[col], high[col]) == pytest.approx(bootstrap_ci(values[:, col], seed=5))
    with pytest.raises(CortexmapError, match="2-D"):
        bootstrap_cis(np.zeros(3))
