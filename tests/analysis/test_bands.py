"""Tests of cortexmap.analysis.bands: planted bands are found, structureless data is not."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cortexmap.analysis.bands import band_hypothesis, layer_bands, level_depths, ordinal_depth_rho

from .conftest import N_HEADS, N_LAYERS
from .synthetic import TASKS, make_effects, plant_bands


def test_planted_bands_support_the_hypothesis(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    effects, prompt_effects = banded
    result = band_hypothesis(effects, N_LAYERS, N_HEADS, prompt_effects=prompt_effects, n_boot=200, seed=0)
    assert result["verdict"] == "supported"
    assert result["p_value"] < 0.01
    assert result["rho"] > result["null_p95"]
    assert 0 < result["ci_low"] <= result["rho"] <= result["ci_high"]
    assert set(result["levels_used"]) == set(TASKS.values())
    assert [step["ci_low"] > 0 for step in result["steps"]] == [True, True]


def test_reversed_bands_are_not_supported() -> None:
    planted = plant_bands(N_LAYERS, N_HEADS, structured=True, seed=4)
    flipped = {(N_LAYERS - 1 - layer, head): eff for (layer, head), eff in planted.items()}
    effects, _ = make_effects(N_LAYERS, N_HEADS, flipped, seed=5)
    result = band_hypothesis(effects, N_LAYERS, N_HEADS, n_boot=50, seed=0)
    assert result["verdict"] == "not supported"
    assert result["rho"] < 0
    assert all(step["diff"] < 0 for step in result["steps"])


def test_structureless_data_is_rarely_called_significant() -> None:
    # important heads at random layers, whatever their level: the null is true in every seed
    p_values = []
    for seed in range(20):
        planted = plant_bands(N_LAYERS, N_HEADS, structured=False, seed=1000 + seed)
        effects, _ = make_effects(N_LAYERS, N_HEADS, planted, seed=5000 + seed, n_prompts=20)
        p_values.append(band_hypothesis(effects, N_LAYERS, N_HEADS, n_perm=500, n_boot=10, seed=seed)["p_value"])
    p_values = np.array(p_values)
    assert (p_values < 0.05).sum() <= 3  # nominal 1 of 20; 4+ has probability < 2% under a valid test
    assert 0.3 < np.median(p_values) < 0.7


def test_noise_only_is_not_evaluated_or_not_supported(null_effects: pd.DataFrame) -> None:
    result = band_hypothesis(null_effects, N_LAYERS, N_HEADS, n_boot=20, seed=0)
    assert result["verdict"] in ("not supported", "not evaluated")


def test_single_level_cannot_be_tested(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    lexical = banded[0][banded[0]["level"] == "lexical"]
    result = band_hypothesis(lexical, N_LAYERS, N_HEADS, n_boot=10)
    assert result["verdict"] == "not evaluated"
    assert result["p_value"] is None


def test_level_depths_follow_the_plant(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    depths = level_depths(banded[0], N_LAYERS, N_HEADS, n_boot=200).set_index("level")
    assert depths.loc["lexical", "ci_high"] < depths.loc["reasoning", "ci_low"]
    assert depths.loc["lexical", "mean_depth"] < 0.4 < 0.6 < depths.loc["reasoning", "mean_depth"]
    assert (depths["ci_low"] <= depths["mean_depth"]).all() and (depths["mean_depth"] <= depths["ci_high"]).all()


def test_segmentation_recovers_three_bands(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    bands = layer_bands(banded[0], N_LAYERS, N_HEADS)
    assert len(bands) == 3
    assert bands["dominant_level"].iloc[0] == "lexical"
    assert bands["dominant_level"].iloc[-1] == "reasoning"
    assert abs(bands["layer_start"].iloc[1] - 4) <= 1 and abs(bands["layer_start"].iloc[2] - 8) <= 1


def test_band_enrichment_has_an_interval(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    effects, prompt_effects = banded
    bands = layer_bands(effects, N_LAYERS, N_HEADS, prompt_effects=prompt_effects, n_boot=200, seed=0)
    # the planted early and late bands are concentrated beyond doubt: their intervals clear 1
    assert bands["enrichment_ci_low"].iloc[0] > 1 and bands["enrichment_ci_low"].iloc[-1] > 1
    assert (bands["enrichment_ci_low"] <= bands["enrichment_ci_high"]).all()  # equal where a level is all in one band
    # the interval is of the dominant level's enrichment, whose observed value it brackets here
    for _, band in bands.iterrows():
        assert band["enrichment"] == band[f"enrichment:{band['dominant_level']}"]
        assert band["enrichment_ci_low"] <= band["enrichment"] <= band["enrichment_ci_high"]


def test_structureless_segmentation_stays_coarse() -> None:
    planted = plant_bands(N_LAYERS, N_HEADS, structured=False, seed=1001)
    effects, _ = make_effects(N_LAYERS, N_HEADS, planted, seed=5001)
    assert len(layer_bands(effects, N_LAYERS, N_HEADS)) <= 2


def test_rank_correlation_signs() -> None:
    ordinals = np.array([0, 1, 2])
    ordered = np.eye(3)  # level i lives only in layer i
    assert ordinal_depth_rho(ordered, ordinals) > 0.9
    assert ordinal_depth_rho(ordered[:, ::-1], ordinals) < -0.9
    assert abs(ordinal_depth_rho(np.full((3, 3), 1 / 3), ordinals)) < 1e-9
