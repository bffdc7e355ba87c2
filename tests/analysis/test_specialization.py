"""Tests of cortexmap.analysis.specialization: the index, the model test, and its calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cortexmap.analysis.specialization import specialization, specialization_values
from cortexmap.analysis.view import build_view

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
    effects, prompts = make_effects(N_LAYERS, N_HEADS, planted, seed=2)
    view = build_view(effects, (N_LAYERS, N_HEADS), n_boot=200, tables={"prompt_effects": prompts})
    result = specialization(view)
    table = result.heads.set_index("head_id")
    assert table.loc["L2H1", "specialization"] > 0.6 and table.loc["L2H1", "top_task"] == "ioi"
    assert table.loc["L6H3", "specialization"] < table.loc["L2H1", "specialization"] - 0.3
    assert result.n_heads >= 6 and result.ci_low <= result.mean <= result.ci_high
    finding = result.findings()[0]
    assert finding.kind == "specialization" and finding.p_value is None and "not tested" in finding.text


def test_noise_has_no_active_head_to_describe(null_effects: pd.DataFrame) -> None:
    result = specialization(build_view(null_effects, (N_LAYERS, N_HEADS), n_boot=100))
    assert result.n_heads <= 2 and (result.mean is None or result.findings()[0].verdict == "not evaluated")
