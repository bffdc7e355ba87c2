"""Tests of cortexmap.analysis.redundancy: interactions, their sign convention, task-level intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scipy.stats import t as student_t

from cortexmap.analysis.findings import Finding
from cortexmap.analysis.redundancy import (
    Redundancy,
    pair_redundancy,
    pairwise_interactions,
    redundancy_from_pairs,
    redundancy_summary,
    small_sample_factor,
    summary_interval,
    task_pair_bootstrap,
)
from cortexmap.analysis.view import build_view
from cortexmap.stats import percentile_interval

from .conftest import N_HEADS, N_LAYERS


def test_interaction_signs_of_a_means_only_table() -> None:
    """An older table (means, no prompts): kinds by the tolerance rule, and the record says so."""
    pairs = pd.DataFrame({"task": "ioi", "head_a": ["L1H0", "L2H0", "L3H0"], "head_b": ["L4H0", "L5H0", "L6H0"],
                          "effect_a": [-0.05, -0.4, -0.2], "effect_b": [-0.05, -0.4, -0.2],
                          "effect_ab": [-0.6, -0.45, -0.41]})
    table = pairwise_interactions(pairs)
    # harm negative: -0.5 = joint harm beyond the sum (super-additive), +0.35 = short of it (sub-additive)
    assert table["interaction"].tolist() == pytest.approx([-0.5, 0.35, -0.01])
    assert table["kind"].tolist() == ["redundant", "sub_additive", "additive"]
    assert table["interaction_ci_low"].isna().all()
    assert "interaction" not in pairs.columns  # input untouched
    summary = redundancy_summary(pairs, n_boot=100)
    assert summary["fraction_redundant"] == pytest.approx(1 / 3) and not summary["per_prompt"]
    record = redundancy_from_pairs(pairs, n_boot=100)
    assert "per-pair means only" in record.note and "zero ablation" in record.note and not record.counterfactual
    assert [f.kind for f in record.findings()] == ["redundancy"]  # no pair interval, no pair finding


# --- per-prompt pairs ----------------------------------------------------------------------------------------------


def simulate_pairs(seed: int, *, n_tasks: int = 12, n_heads: int = 4, n_prompts: int = 30, planted: float = 0.0,
                   shared: float = 0.5) -> pd.DataFrame:
    """Per-prompt rows of joint interventions with true interaction ``planted`` (relative to the single harms).

    Each task has its own scale and noise level; the interaction's per-prompt noise has a prompt part
    shared by all of a task's pairs, a head part shared by every pair holding that head, and a pair part.
    """
    rng = np.random.default_rng(seed)
    frames = []
    iu = np.triu_indices(n_heads, 1)
    for t in range(n_tasks):
        scale, sd = np.exp(rng.normal(0, 0.7)), rng.uniform(0.5, 1.5)
        mu = -rng.uniform(0.2, 1.0, n_heads)
        single = scale * (mu[:, None] + sd * rng.normal(0, 0.5, (n_heads, n_prompts)))
        noise = (shared * sd * rng.normal(0, 1, n_prompts)[None]
                 + (eta := 0.5 * sd * rng.normal(0, 1, (n_heads, n_prompts)))[iu[0]] + eta[iu[1]]
                 + 0.3 * sd * rng.normal(0, 1, (len(iu[0]), n_prompts)))
        true = planted * (np.abs(mu[iu[0]]) + np.abs(mu[iu[1]]))
        joint = single[iu[0]] + single[iu[1]] + scale * (true[:, None] + noise)
        for k, (i, j) in enumerate(zip(*iu)):
            frames.append(pd.DataFrame({"task": f"task{t}", "intervention": "patch", "head_a": f"L{i}H0",
                                        "head_b": f"L{j}H0", "prompt": np.arange(n_prompts), "effect_a": single[i],
                                        "effect_b": single[j], "effect_ab": joint[k], "clean": 2.0}))
    return pd.concat(frames, ignore_index=True)


def test_pair_interactions_equal_an_independent_computation() -> None:
    pairs = simulate_pairs(1, n_tasks=3)
    table = pairwise_interactions(pairs, n_boot=2000, seed=3).set_index(["task", "head_a", "head_b"])
    for (task, a, b), rows in pairs.groupby(["task", "head_a", "head_b"]):
        row = table.loc[(task, a, b)]
        per_prompt = (rows["effect_ab"] - rows["effect_a"] - rows["effect_b"]).to_numpy()
        assert row["interaction"] == pytest.approx(per_prompt.mean())
        assert row["relative_interaction"] == pytest.approx(
            per_prompt.mean() / (abs(rows["effect_a"].mean()) + abs(rows["effect_b"].mean())))
        assert row["n_prompts"] == len(rows) and row["intervention"] == "patch"
        # the interval: the percentile bootstrap of the mean, widened by the small-sample factor of 30 prompts
        rng = np.random.default_rng(11)
        draws = per_prompt[rng.integers(0, len(per_prompt), (4000, len(per_prompt)))].mean(axis=1)
        low, high = percentile_interval(draws)
        k = small_sample_factor(len(per_prompt))
        assert row["interaction_ci_low"] == pytest.approx(per_prompt.mean() - k * (per_prompt.mean() - low), abs=0.06)
        assert row["interaction_ci_high"] == pytest.approx(per_prompt.mean() + k * (high - per_prompt.mean()), abs=0.06)
        expected = "redundant" if row["interaction_ci_high"] < 0 else (
            "sub_additive" if row["interaction_ci_low"] > 0 else "additive")
        assert row["kind"] == expected


def test_small_sample_factor() -> None:
    assert small_sample_factor(30) == pytest.approx(student_t.ppf(0.975, 29) / 1.959964 * np.sqrt(30 / 29))
    assert small_sample_factor(10**6) == pytest.approx(1.0, abs=1e-3)
    assert np.isnan(small_sample_factor(1))


def test_task_pair_bootstrap_resamples_whole_tasks() -> None:
    """Values constant within a task: every replicate is a mean of whole drawn tasks' values."""
    tasks = np.repeat(np.arange(8), 6)
    values = tasks.astype(float) ** 2
    draws = task_pair_bootstrap(values, tasks, 4000, np.random.default_rng(0))
    task_values = np.arange(8.0) ** 2
    assert draws.var() == pytest.approx(task_values.var() / 8, rel=0.1)  # variance of a mean of 8 drawn tasks
    assert draws.mean() == pytest.approx(task_values.mean(), rel=0.05)


def test_redundancy_record_and_wording() -> None:
    super_additive = simulate_pairs(2, n_tasks=6, planted=-0.8)
    record = redundancy_from_pairs(super_additive, n_boot=500, seed=1)
    assert record.per_prompt and record.counterfactual and record.interventions == ("patch",)
    assert record.n_pairs == 36 and record.n_tasks == 6 and record.baseline_fraction == 0.025
    assert record.ci_high < 0 and record.reading == "super-additive"
    head, *details = record.findings()
    assert head.kind == "redundancy" and head.baseline == 0.0 and head.effect == record.mean_relative_interaction
    assert "super-additive on average: joint harm larger than the sum" in head.text
    assert "(the heads back each other up)" in head.text
    flagged = record.pairs[record.pairs["kind"] != "additive"]
    assert len(details) == len(flagged) > 0 and all(f.kind == "redundancy_pair" for f in details)
    assert all(f.ci_high < 0 and "super-additive" in f.text for f in details)
    again = Redundancy.from_dict(record.to_dict())
    assert [f.text for f in again.findings()] == [f.text for f in record.findings()]
    sub = redundancy_from_pairs(simulate_pairs(3, n_tasks=6, planted=0.4), n_boot=500, seed=1)
    assert sub.ci_low > 0 and sub.reading == "sub-additive"
    assert "sub-additive on average: joint harm smaller than the sum" in sub.findings()[0].text
    assert all(Finding.from_dict(f.to_dict()) == f for f in sub.findings())



def test_one_task_has_no_interval_and_survives_json() -> None:
    """One task cannot give a task-level interval: NaN bounds, written as null, read back and worded as n/a."""
    import json

    record = redundancy_from_pairs(simulate_pairs(4, n_tasks=1, planted=-0.8), n_boot=200, seed=1)
    assert record.n_tasks == 1 and record.reading is None
    assert np.isnan(record.fraction_redundant_ci_low) and np.isnan(record.ci_low)
    written = {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in record.to_dict().items()}
    again = Redundancy.from_dict(json.loads(json.dumps(written, allow_nan=False, default=str)))
    assert again.fraction_redundant_ci_low is None
    text = again.findings()[0].text
    assert "no interval (it needs pairs from two tasks or more)" in text and "[95% CI n/a%, n/a%]" in text

def test_redundancy_of_a_view(banded: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    view = build_view(banded[0], (N_LAYERS, N_HEADS), tables={"pairs": simulate_pairs(4, n_tasks=3)})
    assert pair_redundancy(view).n_pairs == 18
    missing = pair_redundancy(build_view(banded[0], (N_LAYERS, N_HEADS)))
    (finding,) = missing.findings()
    assert finding.verdict == "not evaluated" and missing.n_pairs == 0


def _relative_per_pair(rng: np.random.Generator, n_tasks: int = 12, n_heads: int = 4, n_prompts: int = 30,
                       shared: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's relative interaction (no true interaction), as :func:`simulate_pairs` draws them, vectorised."""
    iu = np.triu_indices(n_heads, 1)
    scale, sd = np.exp(rng.normal(0, 0.7, (n_tasks, 1))), rng.uniform(0.5, 1.5, (n_tasks, 1))
    mu = -rng.uniform(0.2, 1.0, (n_tasks, n_heads))
    single = (mu + sd * rng.normal(0, 0.5, (n_tasks, n_heads, n_prompts)).mean(-1)) * scale  # prompt means
    eta = 0.5 * sd[..., None] * rng.normal(0, 1, (n_tasks, n_heads, n_prompts))
    noise = (shared * sd[..., None] * rng.normal(0, 1, (n_tasks, 1, n_prompts)) + eta[:, iu[0]] + eta[:, iu[1]]
             + 0.3 * sd[..., None] * rng.normal(0, 1, (n_tasks, len(iu[0]), n_prompts)))
    inter = scale * noise.mean(-1)
    rel = inter / (np.abs(single[:, iu[0]]) + np.abs(single[:, iu[1]]))
    return rel.ravel(), np.repeat(np.arange(n_tasks), len(iu[0]))


@pytest.mark.parametrize("n_tasks", [6, 12])
def test_calibration_of_the_summary_interval(n_tasks: int) -> None:
    """No interaction anywhere, pairs sharing heads and prompts within tasks of different scales:
    the summary's interval excludes 0 in <= 7% of 400 data sets; treating pairs as independent does not."""
    shipped, naive = [], []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        values, tasks = _relative_per_pair(rng, n_tasks=n_tasks)
        _, low, high = summary_interval(values, tasks, 1000, rng)
        shipped.append(not low <= 0 <= high)
        low, high = percentile_interval(values[rng.integers(0, len(values), (1000, len(values)))].mean(axis=1))
        naive.append(not low <= 0 <= high)
    assert np.mean(shipped) <= 0.07, np.mean(shipped)
    assert np.mean(naive) > 0.15  # the generator breaks the pairs-are-independent bootstrap


@pytest.mark.slow
def test_calibration_end_to_end() -> None:
    """The whole record on 200 simulated per-prompt tables with no interaction: summary and pair rates."""
    summary, pairs = [], []
    for seed in range(200):
        record = redundancy_from_pairs(simulate_pairs(seed), n_boot=500, seed=seed)
        summary.append(not record.ci_low <= 0 <= record.ci_high)
        pairs.append(float((record.pairs["kind"] != "additive").mean()))
    assert np.mean(summary) <= 0.07
    assert np.mean(pairs) <= 0.07  # each pair's interval: 5% nominal
