"""Tests of cortexmap.analysis.compare: conserved heads are found, shared task scales and generic heads are not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment

from cortexmap.analysis.compare import (
    Conservation,
    compare,
    compare_models,
    conservation_null,
    conservation_test,
    match_heads,
    scale_comparison,
)
from cortexmap.analysis.profiles import head_profiles
from cortexmap.analysis.view import build_view
from cortexmap.errors import ResultsError
from cortexmap.stats import permutation_p

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


def _two_interventions(planted: dict, seed: int, model: str) -> pd.DataFrame:
    """Effects under patch and mean ablation (each with its own prompt noise) of one planted model."""
    patch, _ = make_effects(N_LAYERS, N_HEADS, planted, seed=seed, model=model, intervention="patch")
    mean, _ = make_effects(N_LAYERS, N_HEADS, planted, seed=seed + 1000, model=model, intervention="mean")
    return pd.concat([patch, mean], ignore_index=True)


def test_permuted_noisy_copy_is_conserved() -> None:
    planted_a = _random_model(1)
    planted_b, perm = _layer_permuted_copy(planted_a, 9)
    effects_a, _ = make_effects(N_LAYERS, N_HEADS, planted_a, seed=2, model="A")
    effects_b, _ = make_effects(N_LAYERS, N_HEADS, planted_b, seed=3, model="B")
    result = compare_models(effects_a, effects_b, (N_LAYERS, N_HEADS), (N_LAYERS, N_HEADS), n_perm=200, seed=0)
    assert result["p_value"] < 0.05 and result["verdict"] == "conserved"
    assert result["conservation"] > result["null_p95"]
    # layers were shuffled, so depth is not conserved: the interval must include 0
    assert result["depth_ci_low"] < 0 < result["depth_ci_high"]
    matches = result["matches"]
    expected = {f"L{layer}H{head}": f"L{perm[layer]}H{head}" for layer, head in planted_a}
    confident = matches[matches["correlation"] > 0.8]
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


def test_compare_views_with_both_counterfactual_interventions() -> None:
    planted_a = _random_model(3)
    planted_b, _ = _layer_permuted_copy(planted_a, 4)
    view_a = build_view(_two_interventions(planted_a, 5, "A"), (N_LAYERS, N_HEADS))
    view_b = build_view(_two_interventions(planted_b, 6, "B"), (N_LAYERS, N_HEADS))
    record = compare(view_a, view_b)
    assert record.interventions == ("patch", "mean") and record.counterfactual
    assert record.n_columns == 2 * len(TASKS) and record.n_tasks == len(TASKS)
    assert record.n_perm >= 2000 and record.verdict == "conserved"
    # no permutation reaches a planted copy: p sits at the resolution limit and is printed as a bound
    assert record.p_value == pytest.approx(1 / (record.n_perm + 1))
    (finding,) = record.findings()
    assert finding.kind == "conservation" and finding.verdict == "conserved"
    assert finding.effect == record.conservation and finding.baseline == record.null_mean
    assert "p < 0.0005" in finding.text and "permuted within each task" in finding.text
    again = Conservation.from_dict(record.to_dict())
    assert again.findings()[0].text == finding.text and again.matches.equals(record.matches)
    unrelated = build_view(_two_interventions(_random_model(70), 8, "C"), (N_LAYERS, N_HEADS))
    other = compare(view_a, unrelated, n_perm=300)
    assert other.verdict == "not conserved" and "sample size" in other.findings()[0].text


def test_compare_needs_a_shared_intervention() -> None:
    view_a = build_view(_two_interventions(_random_model(3), 5, "A"), (N_LAYERS, N_HEADS))
    zero, _ = make_effects(N_LAYERS, N_HEADS, _random_model(4), seed=1, model="Z")
    with pytest.raises(ResultsError, match="share no claim intervention"):
        compare(view_a, build_view(zero, (N_LAYERS, N_HEADS)))


def test_matching_is_one_to_one_across_sizes(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    profiles_a = head_profiles(banded[0], None, N_LAYERS, N_HEADS)
    small = banded[0][banded[0]["layer"] < 6]
    profiles_b = head_profiles(small, None, 6, N_HEADS)
    matches = match_heads(profiles_a, profiles_b)
    assert len(matches) == 6 * N_HEADS
    assert matches["head_a"].is_unique and matches["head_b"].is_unique
    self_match = conservation_test(profiles_a, profiles_a, n_perm=20)
    assert (self_match.matches["head_a"] == self_match.matches["head_b"]).all()
    # against itself, the score is the mean variance of the centred z-profiles (independent computation)
    columns = [c for c in profiles_a.columns if ":" in c]
    values = profiles_a[columns].to_numpy(float)
    z = (values - values.mean(0)) / values.std(0)
    assert self_match.conservation == pytest.approx(np.mean(z.var(axis=1)))


# --- calibration: pairs of models with no conserved head --------------------------------------------------------

N_TASKS = 6
TASK_OF_COLUMN = np.tile(np.arange(N_TASKS), 2)  # patch columns, then mean columns


def _truth(rng: np.random.Generator, n_heads: int, n_generic: int, n_tasks: int = N_TASKS) -> np.ndarray:
    """Sparse harmful task-specific heads; the first ``n_generic`` harm every task about equally."""
    truth = np.where(rng.random((n_heads, n_tasks)) < 0.3, -np.abs(rng.normal(0, 0.4, (n_heads, n_tasks))), 0.0)
    if n_generic:
        level = -np.abs(rng.normal(0.3, 0.1, n_generic))
        truth[:n_generic] = level[:, None] + rng.normal(0, 0.02, (n_generic, n_tasks))
    return truth


def _measured(rng: np.random.Generator, truth: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Patch and mean columns: each intervention its own per-task gain and noise, both scaled by the task."""
    return np.concatenate([(truth * rng.uniform(0.7, 1.3, truth.shape[1]) + rng.normal(0, 0.05, truth.shape)) * scale
                           for _ in range(2)], axis=1)


def _null_pair(seed: int, shared_scale: bool, generic: bool, n_tasks: int = N_TASKS,
               conserved: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0, 1.0, n_tasks)) if shared_scale else np.ones(n_tasks)  # fragile tasks, both models
    n_generic = 8 if generic else 0
    truth_a, truth_b = _truth(rng, 24, n_generic, n_tasks), _truth(rng, 28, n_generic, n_tasks)
    if conserved:  # planted: B's heads n_generic.. do exactly what A's do
        truth_b[n_generic:n_generic + conserved] = truth_a[n_generic:n_generic + conserved]
    return _measured(rng, truth_a, scale), _measured(rng, truth_b, scale)


def _rejects(a: np.ndarray, b: np.ndarray, seed: int, n_perm: int = 99, **kwargs) -> bool:
    observed, null = conservation_null(a, b, n_perm=n_perm, seed=seed, **kwargs)
    return bool(permutation_p(observed, null) < 0.05)


def _naive_rejects(a: np.ndarray, b: np.ndarray, seed: int, n_perm: int = 99) -> bool:
    """The replaced test: cosine of raw profiles, B's task columns permuted."""
    def score(x: np.ndarray, y: np.ndarray) -> float:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
        sims = x @ y.T
        rows, cols = linear_sum_assignment(sims, maximize=True)
        return sims[rows, cols].mean()

    rng = np.random.default_rng(seed)
    null = np.array([score(a, b[:, rng.permutation(b.shape[1])]) for _ in range(n_perm)])
    return bool(permutation_p(score(a, b), null) < 0.05)


@pytest.mark.parametrize("shared_scale,generic", [(True, False), (False, True), (True, True)],
                         ids=["shared_task_scale", "generic_heads", "both"])
def test_calibration_without_conserved_heads(shared_scale: bool, generic: bool) -> None:
    """200 simulated model pairs with no conserved head: false-positive rate <= 7% at nominal 5%."""
    rate = np.mean([_rejects(*_null_pair(s, shared_scale, generic), s, tasks=TASK_OF_COLUMN) for s in range(200)])
    assert rate <= 0.07, rate


def test_the_calibration_nulls_break_the_naive_tests() -> None:
    """The generators are hard: each fools a test that skips one of the shipped test's choices."""
    seeds = range(40)
    # raw profiles with task columns permuted (the test this one replaces): a shared task scale reads as conserved
    assert np.mean([_naive_rejects(*_null_pair(s, True, False), s) for s in seeds]) > 0.5
    # z-profiles not centred: generic heads in both models read as conserved
    assert np.mean([_rejects(*_null_pair(s, False, True), s, tasks=TASK_OF_COLUMN, centre_rows=False)
                    for s in seeds]) > 0.5
    # heads permuted per intervention column rather than per task: any two models with task-specific heads match
    assert np.mean([_rejects(*_null_pair(s, False, False), s, tasks=None) for s in seeds]) > 0.5


def test_power_planted_conserved_heads_are_detected() -> None:
    """8 of 24 heads conserved, on a 20-task battery with shared task scales and generic heads."""
    tasks = np.tile(np.arange(20), 2)
    detected = [_rejects(*_null_pair(s, True, True, n_tasks=20, conserved=8), s, tasks=tasks) for s in range(40)]
    assert np.mean(detected) >= 0.8


def test_scale_table(banded: tuple[pd.DataFrame, pd.DataFrame], null_effects: pd.DataFrame) -> None:
    pairs = pd.DataFrame({"task": "ioi", "head_a": ["L1H0"], "head_b": ["L2H0"], "effect_a": [-0.1],
                          "effect_b": [-0.1], "effect_ab": [-0.5]})
    views = [build_view(banded[0].assign(model="big"), (N_LAYERS, N_HEADS), n_boot=100, tables={"pairs": pairs}),
             build_view(null_effects.assign(model="noise"), (N_LAYERS, N_HEADS), n_boot=100)]
    table = scale_comparison(views).set_index("model")
    assert table.loc["big", "active_share"] > table.loc["noise", "active_share"] + 0.2
    assert table.loc["big", "fraction_redundant"] == 1.0  # a means-only table: the tolerance rule
    assert table.loc["big", "mean_relative_interaction"] == pytest.approx(-1.5)
    assert np.isnan(table.loc["noise", "fraction_redundant"])
    assert table.loc["big", "n_heads_total"] == N_LAYERS * N_HEADS
