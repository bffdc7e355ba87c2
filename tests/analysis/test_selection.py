"""Tests of cortexmap.analysis.selection: row choice, importance, activity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cortexmap.analysis.selection import (
    active_heads,
    effect_arrays,
    head_grid,
    important_mask,
    select_effects,
)
from cortexmap.errors import ResultsError

from .conftest import N_HEADS, N_LAYERS


def test_head_grid_names_and_depth() -> None:
    grid = head_grid(3, 2)
    assert list(grid.index) == ["L0H0", "L0H1", "L1H0", "L1H1", "L2H0", "L2H1"]
    assert grid["rel_depth"].tolist() == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    with pytest.raises(ResultsError):
        head_grid(0, 4)


def test_prefers_zero_and_exact(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    effects = banded[0]
    other = effects.assign(intervention="mean", effect=0.0, effect_normalized=0.0)
    attribution = effects.assign(method="attribution", effect=1.0, effect_normalized=0.5)
    both = pd.concat([other, attribution, effects], ignore_index=True)
    chosen = select_effects(both)
    assert chosen.attrs["selection"]["intervention"] == "zero"
    assert chosen.attrs["selection"]["method"] == "exact"
    assert len(chosen) == len(effects)
    assert select_effects(other).attrs["selection"]["intervention"] == "mean"


def test_importance_is_harm_over_clean() -> None:
    row = {"model": "m", "task": "t", "level": "lexical", "intervention": "zero", "alpha": np.nan, "method": "exact",
           "layer": 0, "head": 0, "head_id": "L0H0", "n_prompts": 10, "clean": -4.0, "intervened": -6.0,
           "effect": -2.0, "effect_normalized": -0.5, "ci_low": -2.5, "ci_high": -1.5}
    helpful = dict(row, head=1, head_id="L0H1", effect=1.0, effect_normalized=0.25, ci_low=0.5, ci_high=1.5)
    chosen = select_effects(pd.DataFrame([row, helpful]))
    assert chosen["importance"].tolist() == pytest.approx([0.5, 0.0])
    assert chosen["se_normalized"].iloc[0] == pytest.approx(1.0 / (2 * 1.959964) / 4.0, rel=1e-5)


def test_rejects_bad_tables(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    effects = banded[0]
    with pytest.raises(ResultsError, match="models"):
        select_effects(pd.concat([effects, effects.assign(model="other")]))
    with pytest.raises(ResultsError, match="lacks columns"):
        select_effects(effects.drop(columns=["clean"]))
    with pytest.raises(ResultsError, match="not in effects"):
        select_effects(effects, intervention="patch")
    with pytest.raises(ResultsError, match="outside"):
        effect_arrays(select_effects(effects), N_LAYERS - 1, N_HEADS)


def test_important_and_active_rules() -> None:
    effect = np.array([[-0.5, 0.0], [-0.01, 0.0], [0.4, 0.0], [-0.08, 0.0]])
    se = np.full_like(effect, 0.02)
    assert important_mask(effect, se).tolist() == [[True, False], [False, False], [False, False], [True, False]]
    # active: |effect| >= 0.05 and |z| >= 3, either sign
    assert active_heads(effect, se).tolist() == [True, False, True, True]


def test_does_not_mutate_input(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    effects = banded[0]
    before = effects.copy()
    select_effects(effects)
    pd.testing.assert_frame_equal(effects, before)
