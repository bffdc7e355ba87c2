"""The screen method's stopping rule and audit on planted effects (no model: the truth is known)."""

from __future__ import annotations

import numpy as np
import pytest

from cortexmap.sweep.config import SweepConfig
from cortexmap.sweep.verify import (
    VerifyPolicy,
    adaptive_verify,
    miss_rate,
    pooled_audit,
    refined_order,
    screen_order,
    should_stop,
    unit_record,
)

N = 270


def planted(seed: int, n_strong: int = 12, n_moderate: int = 8, noise: float = 0.02):  # noqa: ANN201
    """True effects (a few strong and moderate heads among near-zero ones) and a noisy screen of them."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 0.005, N)
    strong = rng.choice(N, n_strong + n_moderate, replace=False)
    truth[strong[:n_strong]] = -rng.uniform(0.15, 1.0, n_strong)
    truth[strong[n_strong:]] = rng.choice([-1, 1], n_moderate) * rng.uniform(0.05, 0.1, n_moderate)
    screen = truth + rng.normal(0, noise, N)
    return truth, screen, strong[:n_strong]


def counting(truth: np.ndarray) -> tuple[list[list[int]], object]:
    calls: list[list[int]] = []

    def measure(cols: list[int]) -> dict[int, tuple[float, float]]:
        calls.append(list(cols))
        return {c: (float(truth[c]), float(truth[c]) / 0.005) for c in cols}  # z from a known standard error

    return calls, measure


def test_stopping_rule_reads_the_last_chunk_against_importance_and_the_top_ten():
    policy = VerifyPolicy(chunk=4)
    strong = [(0.5, 10.0)] * 10
    assert not should_stop(strong + [(0.01, 1.0)] * 3 + [(0.08, 5.0)], policy)  # an important head in the window
    assert should_stop(strong + [(0.01, 1.0)] * 4, policy)
    assert should_stop(strong + [(0.01, 1.0)] * 3 + [(0.08, 1.0)], policy)  # large but not distinguishable from 0
    # Weak task: the 10th largest (0.02) is below the bar, so a head at 0.03 still enters the top 10.
    weak = [(0.04, 1.0)] * 5 + [(0.02, 1.0)] * 5
    assert not should_stop(weak + [(0.001, 0.1)] * 3 + [(0.03, 1.0)], policy)
    assert should_stop(weak + [(0.001, 0.1)] * 4, policy)
    assert not should_stop([(0.01, 1.0)] * 4, policy)  # fewer heads than the top 10


def test_planted_strong_heads_are_all_verified_and_the_rule_stops_early():
    for seed in range(20):
        truth, screen, strong = planted(seed)
        calls, measure = counting(truth)
        result = adaptive_verify(screen_order(screen), measure, VerifyPolicy(max_heads=96), seed=seed)
        assert set(strong) <= set(result.verified), seed
        assert result.stopped == "rule" and len(result.verified) < 96
        top10 = np.argsort(-np.abs(truth))[:10]
        assert set(top10) <= set(result.verified)
        assert len(result.audited) == VerifyPolicy().audit and not set(result.audited) & set(result.verified)
        assert result.effects[result.verified[0]] == (truth[result.verified[0]], truth[result.verified[0]] / 0.005)
        assert sum(map(len, calls)) == len(result.verified) + len(result.audited)  # each head measured once


def test_budget_caps_verification_and_small_units_are_measured_whole():
    truth, screen, _ = planted(0, noise=1.0)  # a useless screen: the rule cannot stop early
    policy = VerifyPolicy(max_heads=48)
    result = adaptive_verify(screen_order(screen), counting(truth)[1], policy)
    assert len(result.verified) == 48 and result.stopped in ("budget", "rule")
    small = adaptive_verify(np.arange(20), counting(truth[:20])[1], policy)
    assert small.stopped == "all" and len(small.verified) == 20 and small.audited == []


def test_a_task_with_no_important_verified_head_gets_every_head_measured():
    """A null map ("no head matters") must rest on every head's exact number, not on an audit sample."""
    rng = np.random.default_rng(0)
    truth = np.clip(rng.normal(0, 0.01, N), -0.04, 0.04)  # no head reaches the 5% bar
    calls, measure = counting(truth)
    result = adaptive_verify(screen_order(rng.normal(0, 1, N)), measure, VerifyPolicy(), seed=0)
    assert result.stopped == "none-important" and sorted(result.verified) == list(range(N))
    assert result.audited == [] and sorted(c for call in calls for c in call) == list(range(N))
    record = unit_record(result, N, VerifyPolicy())
    assert record["unverified"] == 0 and record["audit_audited"] == 0
    off = adaptive_verify(screen_order(rng.normal(0, 1, N)), counting(truth)[1],
                          VerifyPolicy(measure_all_if_none=False), seed=0)
    assert off.stopped in ("budget", "rule") and len(off.verified) <= VerifyPolicy().max_heads
    truth[7] = 0.3  # one important head among the verified ones: the usual budget applies
    strong_first = np.r_[7, np.setdiff1d(np.arange(N), [7])]
    assert adaptive_verify(strong_first, counting(truth)[1], VerifyPolicy(), seed=0).stopped != "none-important"


def test_joint_screen_order_interleaves_the_interventions_and_refined_heads_go_first():
    """Each intervention's best heads come early though the other's effects are ten times larger."""
    rng = np.random.default_rng(0)
    large, small = rng.uniform(0, 1, 40), rng.uniform(0, 0.1, 40)
    order = screen_order(np.stack([large, small]))
    by_large, by_small = np.argsort(-large), np.argsort(-small)
    for k in (5, 10, 20):  # the first 2k hold each intervention's top k
        assert set(by_large[:k]) <= set(order[:2 * k]) and set(by_small[:k]) <= set(order[:2 * k])
    assert sorted(order.tolist()) == list(range(40))
    assert list(screen_order(np.array([0.1, np.nan, -0.5, 0.2]))) == [2, 3, 0, 1]  # one intervention: |effect|, NaN last
    first = screen_order(large)
    columns = np.array([first[7], first[3], first[20]])
    refined = np.array([0.1, 0.9, 0.5])  # refined numbers reorder them
    out = refined_order(first, refined, columns)
    assert list(out[:3]) == [first[3], first[20], first[7]]
    assert list(out[3:]) == [c for c in first if c not in set(columns.tolist())]


def test_audit_interval_covers_the_true_miss_rate():
    """A poor screen misses moderate heads; the Clopper-Pearson interval covers the truth in >= 90% of runs."""
    covered, trials, rates = 0, 150, []
    for seed in range(trials):
        truth, screen, _ = planted(seed, n_strong=6, n_moderate=40, noise=0.08)
        policy = VerifyPolicy(min_heads=16, max_heads=32, audit=40)
        result = adaptive_verify(screen_order(screen), counting(truth)[1], policy, seed=seed)
        unverified = sorted(set(range(N)) - set(result.verified))
        true_rate = np.mean(np.abs(truth[unverified]) >= policy.bar)  # z = effect / 0.005 >= 10 there
        record = unit_record(result, N, policy)
        covered += record["audit_ci_low"] <= true_rate <= record["audit_ci_high"]
        rates.append(true_rate)
    assert np.mean(rates) > 0.02  # the planted screen really misses heads, so the test can fail
    assert covered / trials >= 0.9, covered / trials


def test_miss_rate_is_clopper_pearson_and_pools_over_units():
    scipy_stats = pytest.importorskip("scipy.stats")
    got = miss_rate(3, 40)
    ci = scipy_stats.beta.ppf([0.025, 0.975], [3, 4], [38, 37])  # the exact interval from the beta quantiles
    assert got["rate"] == pytest.approx(3 / 40) and got["ci_low"] == pytest.approx(ci[0]) and got["ci_high"] == pytest.approx(ci[1])
    assert miss_rate(0, 0)["rate"] is None and miss_rate(0, 16)["ci_low"] == 0.0
    units = {"a": {"audit_audited": 16, "audit_important": 1, "unverified": 200},
             "b": {"audit_audited": 16, "audit_important": 0, "unverified": 230}}
    pooled = pooled_audit(units)
    assert pooled["audited"] == 32 and pooled["important"] == 1 and pooled["missed_estimate"] == pytest.approx(430 / 32)


def test_auto_is_exact_on_a_gpu_and_the_screen_elsewhere():
    config = SweepConfig(method="auto", n_prompts=32)
    assert config.resolved_method(on_gpu=True) == "exact" and config.resolved_method(on_gpu=False) == "screen"
    assert SweepConfig(method="screen", n_prompts=12).resolved_method(False) == "exact"  # too few prompts to save anything
    assert SweepConfig(method="screen", n_prompts=16).resolved_method(False) == "screen"
    assert SweepConfig().method == "auto"
