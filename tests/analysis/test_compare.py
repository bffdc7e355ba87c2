"""Tests of cortexmap.analysis.compare: conserved functions are detected, unrelated models are not."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cortexmap.analysis.compare import compare_models, conservation_test, match_heads, scale_comparison
from cortexmap.analysis.profiles import head_profiles

from .conftest import N_HEADS, N_LAYERS
from .synthetic import TASKS, make_effects


def _random_model(seed: int, n_active: int = 40) -> dict:
    rng = np.random.default_rng(seed)
    heads = rng.permutation(N_LAYERS * N_HEADS)[:n_active]
    return {divmod(int(h), N_HEADS): {t: -abs(rng.normal(0, 0.4)) if rng.random() < 0.4 else 0.0 for t in TASKS}
            for h in heads}


def _layer_permuted_copy(planted: dict, seed: int) -> tuple[dict, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(N_LAYERS)
    return {(int(perm[layer]), head): effs for (layer, head), effs in planted.items()}, perm


def test_permuted_noisy_copy_is_conserved() -> None:
    planted_a = _random_model(1)
    planted_b, perm = _layer_permuted_copy(planted_a, 9)
    effects_a, _ = make_effects(N_LAYERS, N_HEADS, planted_a, seed=2, model="A")
    effects_b, _ = make_effects(N_LAYERS, N_HEADS, planted_b, seed=3, model="B")
    result = compare_models(effects_a, effects_b, (N_LAYERS, N_HEADS), (N_LAYERS, N_HEADS), n_perm=100, seed=0)
    assert result["p_value"] < 0.05
    assert result["conservation"] > result["null_p95"]
    # layers were shuffled, so depth is not conserved: the interval must include 0
    assert result["depth_ci_low"] < 0 < result["depth_ci_high"]
    matches = result["matches"]
    expected = {f"L{layer}H{head}": f"L{perm[layer]}H{head}" for layer, head in planted_a}
    confident = matches[matches["similarity"] > 0.8]
    hits = [expected.get(a) == b for a, b in zip(confident["head_a"], confident["head_b"])]
    assert len(hits) >= 20 and np.mean(hits) > 0.9


def test_independent_models_are_not_conserved() -> None:
    effects_a, _ = make_effects(N_LAYERS, N_HEADS, _random_model(1), seed=2, model="A")
    p_values = []
    for seed in range(5):
        effects_c, _ = make_effects(N_LAYERS, N_HEADS, _random_model(50 + seed), seed=60 + seed, model="C")
        p_values.append(compare_models(effects_a, effects_c, (N_LAYERS, N_HEADS), (N_LAYERS, N_HEADS),
                                       n_perm=100, seed=seed)["p_value"])
    assert sum(p < 0.05 for p in p_values) <= 1


def test_matching_is_one_to_one_across_sizes(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    profiles_a = head_profiles(banded[0], None, N_LAYERS, N_HEADS)
    small = banded[0][banded[0]["layer"] < 6]
    profiles_b = head_profiles(small, None, 6, N_HEADS)
    matches = match_heads(profiles_a, profiles_b)
    assert len(matches) == 6 * N_HEADS
    assert matches["head_a"].is_unique and matches["head_b"].is_unique
    self_match = conservation_test(profiles_a, profiles_a, n_perm=20)
    assert self_match["conservation"] == 1.0 or abs(self_match["conservation"] - 1.0) < 1e-9


def test_scale_table(banded: tuple[pd.DataFrame, pd.DataFrame], null_effects: pd.DataFrame) -> None:
    effects = pd.concat([banded[0].assign(model="big"), null_effects.assign(model="noise")])
    pairs = {"big": pd.DataFrame({"task": "ioi", "head_a": ["L1H0"], "head_b": ["L2H0"], "effect_a": [-0.1],
                                  "effect_b": [-0.1], "effect_ab": [-0.5]})}
    table = scale_comparison(effects, {"big": (N_LAYERS, N_HEADS), "noise": (N_LAYERS, N_HEADS)}, pairs=pairs,
                             n_boot=100).set_index("model")
    assert table.loc["big", "active_share"] > table.loc["noise", "active_share"] + 0.2
    assert table.loc["big", "fraction_redundant"] == 1.0
    assert np.isnan(table.loc["noise", "fraction_redundant"])
    assert table.loc["big", "n_heads_total"] == N_LAYERS * N_HEADS
