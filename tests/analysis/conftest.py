"""Shared synthetic result tables (seeded) for the analysis tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from .synthetic import make_effects, make_influence, make_patterns, plant_bands

N_LAYERS, N_HEADS = 12, 8


@pytest.fixture(scope="session")
def banded() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Effects (and per-prompt effects) with lexical heads early, reasoning heads late."""
    return make_effects(N_LAYERS, N_HEADS, plant_bands(N_LAYERS, N_HEADS, structured=True, seed=0), seed=100)


@pytest.fixture(scope="session")
def grouped() -> tuple[pd.DataFrame, np.ndarray]:
    """Effects with three planted functional groups of 10 heads (labels 1..3, 0 = inert)."""
    rng = np.random.default_rng(1)
    profiles = {
        1: {"past_tense": -0.5, "plural_morphology": -0.4, "article_agreement": -0.3},
        2: {"ioi": -0.5, "pronoun_gender": -0.4},
        3: {"arithmetic": -0.5, "greater_than": -0.5, "capitals": -0.2},
    }
    truth = np.zeros(N_LAYERS * N_HEADS, dtype=int)
    planted = {}
    for i, idx in enumerate(rng.permutation(N_LAYERS * N_HEADS)[:30]):
        group = i % 3 + 1
        truth[idx] = group
        planted[divmod(int(idx), N_HEADS)] = {t: v * rng.uniform(0.8, 1.2) for t, v in profiles[group].items()}
    effects, _ = make_effects(N_LAYERS, N_HEADS, planted, seed=3)
    return effects, truth


@pytest.fixture(scope="session")
def null_effects() -> pd.DataFrame:
    """Effects with no planted head at all."""
    return make_effects(N_LAYERS, N_HEADS, {}, seed=7)[0]


@pytest.fixture(scope="session")
def patterns() -> pd.DataFrame:
    """Probe scores with planted induction and previous-token heads."""
    return make_patterns(N_LAYERS, N_HEADS, {"induction": [(5, 1), (6, 2)], "previous_token": [(1, 0)]}, seed=1)


@pytest.fixture(scope="session")
def influence() -> pd.DataFrame:
    """Influence with one regulator, L1H2, stronger under reasoning:multi_step."""
    return make_influence(N_LAYERS, N_HEADS, regulator=(1, 2), n_prompts=12, seed=1)
