"""Faithfulness, CPR and CMD on hand-made numbers (no model)."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from cortexmap.circuits.faithfulness import (
    MIB_FRACTIONS,
    circuit_faithfulness,
    circuit_sizes,
    cmd,
    cpr,
    curve_summary,
    curve_table,
    first_reaching,
    paired_differences,
    prefix_masks,
    random_orders,
    rank_edges,
    ranking_summary,
    summarize_curves,
)
from cortexmap.errors import CortexmapError

GRID = np.array(MIB_FRACTIONS)


def test_faithfulness_is_a_ratio_of_means():
    assert circuit_faithfulness(np.array([2.0, 4.0]), np.array([0.0, 0.0]), np.array([4.0, 4.0])) == 0.75
    # not the mean of per-prompt ratios (which would be (0.5 + 1.0) / 2 with full = [4, 4], circuit = [2, 4]
    # and empty = [0, 2]): (3 - 1) / (4 - 1)
    ratio = circuit_faithfulness(np.array([2.0, 4.0]), np.array([0.0, 2.0]), np.array([4.0, 4.0]))
    assert ratio == pytest.approx(2 / 3)
    with pytest.raises(CortexmapError, match="undefined"):
        circuit_faithfulness(np.ones(3), np.ones(3), np.ones(3))


def test_cpr_and_cmd_of_known_curves():
    ones = np.ones(len(GRID))
    assert cpr(GRID, ones) == pytest.approx(0.999)  # the linear axis runs from 0.001 to 1
    assert cmd(GRID, ones) == 0.0
    # f(x) = x: the trapezoid rule is exact for a linear curve
    assert cpr(GRID, GRID) == pytest.approx((1 - 0.001 ** 2) / 2)
    assert cmd(GRID, GRID) == pytest.approx(0.999 - (1 - 0.001 ** 2) / 2)
    # a curve above 1 counts toward CPR but away from 1 for CMD: |1 - f|
    assert cmd(GRID, 2 * ones) == pytest.approx(0.999)
    assert cpr(GRID, 2 * ones) == pytest.approx(2 * 0.999)
    # a step: 0 up to 10%, 1 from 20% on; the 10%-20% interval is a trapezoid of height 1/2
    step = (GRID >= 0.2).astype(float)
    assert cpr(GRID, step) == pytest.approx(0.05 + 0.8)
    assert cmd(GRID, step) == pytest.approx(0.099 + 0.05)
    # log axis (MIB's option): areas over ln(fraction)
    assert cpr(GRID, ones, log_x=True) == pytest.approx(np.log(1000))
    # several curves at once, along the last axis
    np.testing.assert_allclose(cpr(GRID, np.stack([ones, GRID])), [0.999, (1 - 1e-6) / 2])


def test_sizes_rankings_and_random_circuits():
    assert circuit_sizes(70651).tolist() == [70, 141, 353, 706, 1413, 3532, 7065, 14130, 35325, 70651]
    assert circuit_sizes(1000, (0.001, 0.3, 1.0)).tolist() == [1, 300, 1000]
    with pytest.raises(CortexmapError, match="increase"):
        circuit_sizes(10, (0.5, 0.2))
    with pytest.raises(CortexmapError, match="increase"):
        circuit_sizes(10, (0.0, 0.2))
    scores = np.array([0.1, -0.5, 0.3, 0.3])
    assert rank_edges(scores).tolist() == [1, 2, 3, 0]
    assert rank_edges(scores, absolute=False).tolist() == [2, 3, 0, 1]
    masks = prefix_masks(rank_edges(scores), [1, 3], 4)
    assert masks.tolist() == [[False, True, False, False], [False, True, True, True]]
    a, b = random_orders(50, 2, seed=3), random_orders(50, 2, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a[0], a[1])
    assert sorted(a[0].tolist()) == list(range(50))
    assert not np.array_equal(random_orders(50, 1, seed=4)[0], a[0])


def test_smallest_circuit_and_its_interval():
    grid = np.array([0.01, 0.1, 0.5, 1.0])
    assert first_reaching(grid, np.array([0.2, 0.85, 0.7, 1.0]), 0.8) == 0.1  # first crossing, not monotone
    assert first_reaching(grid, np.array([0.2, 0.3, 0.4, 0.5]), 0.8) == np.inf
    # every prompt alike: the bootstrap interval collapses onto the point
    empty, full = np.zeros(6), np.ones(6)
    circuit = np.array([[0.1] * 6, [0.5] * 6, [0.9] * 6, [1.0] * 6])
    out = curve_summary(grid, circuit, empty, full, n_boot=200)
    assert (out["smallest"], out["smallest_low"], out["smallest_high"]) == (0.5, 0.5, 0.5)
    assert out["cpr"] == pytest.approx(cpr(grid, circuit.mean(1)))
    assert out["cpr_low"] == pytest.approx(out["cpr"]) and out["cmd_high"] == pytest.approx(out["cmd"])
    # the interval widens to cover both sizes (a third of the resamples miss that prompt)
    circuit[2, :1] = 0.1  # one prompt of six falls short at 50%: mean 0.77
    out = curve_summary(grid, circuit, empty, full, n_boot=500, seed=1)
    assert out["smallest"] == 1.0 and out["smallest_low"] == 0.5 and out["smallest_high"] == 1.0
    assert out["cpr_low"] < out["cpr"] < out["cpr_high"]
    with pytest.raises(CortexmapError, match="n_sizes"):
        curve_summary(grid, circuit[:2], empty, full)


def curve_frame() -> pd.DataFrame:
    rows = []
    for prompt in range(4):
        rows += [("full", 0, 1.0, 100, prompt, 2.0), ("empty", 0, 0.0, 0, prompt, 0.0)]
        for fraction, size, value in ((0.1, 10, 1.0), (0.5, 50, 1.8), (1.0, 100, 2.0)):
            rows.append(("eap", 0, fraction, size, prompt, value))
            rows.append(("random", 0, fraction, size, prompt, value / 4 if fraction < 1 else 2.0))
    return pd.DataFrame(rows, columns=["method", "draw", "fraction", "n_edges", "prompt", "metric"])


def test_curve_tables_from_the_tidy_frame():
    frame = curve_frame()
    table = curve_table(frame)
    eap = table[table["method"] == "eap"]
    assert eap["faithfulness"].tolist() == [0.5, 0.9, 1.0]
    summary = summarize_curves(frame, target=0.8, n_boot=100).set_index("method")
    assert summary.loc["eap", "smallest"] == 0.5 and summary.loc["eap", "smallest_n_edges"] == 50
    assert summary.loc["random", "smallest"] == 1.0
    assert summary.loc["eap", "cpr"] == pytest.approx(cpr([0.1, 0.5, 1.0], [0.5, 0.9, 1.0]))
    assert summary.loc["eap", "cpr"] > summary.loc["random", "cpr"]
    assert summary.loc["eap", "cmd"] < summary.loc["random", "cmd"]
    with pytest.raises(CortexmapError, match="'full'"):
        summarize_curves(frame[frame["method"] != "full"])


def table_of_curves(fractions, curves: dict, empty: np.ndarray, full: np.ndarray) -> pd.DataFrame:
    """A curve table from ``{(method, order, draw): [n_sizes, n_prompts]}`` and the references."""
    rows = []
    for p in range(len(empty)):
        rows += [("full", "", 0, 1.0, 100, p, full[p]), ("empty", "", 0, 0.0, 0, p, empty[p])]
    for (method, order, draw), values in curves.items():
        for i, f in enumerate(fractions):
            rows += [(method, order, draw, f, int(100 * f), p, values[i, p]) for p in range(len(empty))]
    return pd.DataFrame(rows, columns=["method", "order", "draw", "fraction", "n_edges", "prompt", "metric"])


def test_ranking_summary_reads_cpr_from_the_signed_curve_and_cmd_from_the_absolute_one():
    grid = [0.1, 0.5, 1.0]
    empty, full = np.zeros(5), np.full(5, 2.0)
    line = lambda *v: np.tile(np.array(v)[:, None], (1, 5))
    curves = {("eap", "absolute", 0): line(1.0, 1.8, 2.0), ("eap", "signed", 0): line(1.6, 2.4, 2.0)}
    curves.update({("random", "random", d): line(0.2 * d, 0.4 * d, 2.0) for d in range(3)})
    frame = table_of_curves(grid, curves, empty, full)
    mib = ranking_summary(frame, cpr_order="signed", cmd_order="absolute", n_boot=50).set_index("method")
    assert mib.loc["eap", "cpr"] == pytest.approx(cpr(grid, [0.8, 1.2, 1.0]))
    assert mib.loc["eap", "cmd"] == pytest.approx(cmd(grid, [0.5, 0.9, 1.0]))
    assert mib.loc["eap", "smallest"] == 0.5  # from the absolute curve (the signed one reaches 0.8 at 10%)
    same = ranking_summary(frame, n_boot=50).set_index("method")
    assert same.loc["eap", "cpr"] == pytest.approx(cpr(grid, [0.5, 0.9, 1.0]))
    draws = np.array([cpr(grid, [0.1 * d, 0.2 * d, 1.0]) for d in range(3)])
    row = mib.loc["random"]
    assert row["n_draws"] == 3 and row["cpr"] == pytest.approx(draws.mean())
    assert (row["cpr_sd"], row["cpr_min"], row["cpr_max"]) == pytest.approx((draws.std(ddof=1), draws.min(), draws.max()))
    assert np.isnan(mib.loc["eap", "cpr_sd"]) and list(mib.index) == ["eap", "random"]
    with pytest.raises(CortexmapError, match="no 'signed' curve"):
        ranking_summary(frame[frame["order"] != "signed"], cpr_order="signed")


def test_paired_differences_pair_the_prompts():
    """Prompts vary far more than the rankings differ: each ranking's interval is wide, the paired difference's narrow."""
    grid = [0.1, 0.5, 1.0]
    rng = np.random.default_rng(0)
    n = 16
    empty, full = np.zeros(n), np.full(n, 2.0)
    base = rng.normal(1.0, 0.6, size=(1, n))
    curves = {("a", "absolute", 0): np.vstack([base, base + 0.6, full[None]]),
              ("b", "absolute", 0): np.vstack([base - 0.2, base + 0.4, full[None]]),
              ("c", "absolute", 0): np.vstack([base, base + 0.6, full[None]])}
    frame = table_of_curves(grid, curves, empty, full)
    summary = ranking_summary(frame, n_boot=400).set_index("method")
    diffs = paired_differences(frame, n_boot=400, names=["c", "a", "b"])
    assert list(dict.fromkeys(zip(diffs["a"], diffs["b"]))) == [("c", "a"), ("c", "b"), ("a", "b")]
    row = diffs[(diffs["a"] == "a") & (diffs["b"] == "b") & (diffs["measure"] == "cpr")].iloc[0]
    assert row["difference"] == pytest.approx(summary.loc["a", "cpr"] - summary.loc["b", "cpr"])
    assert 0 < row["low"] <= row["difference"] <= row["high"]
    assert summary.loc["a", "cpr_low"] < summary.loc["b", "cpr_high"]  # unpaired intervals overlap
    assert row["high"] - row["low"] < 0.2 * (summary.loc["a", "cpr_high"] - summary.loc["a", "cpr_low"])
    same = diffs[(diffs["a"] == "c") & (diffs["b"] == "a")]
    assert (same[["difference", "low", "high"]].to_numpy() == 0).all()
    at = diffs[(diffs["a"] == "a") & (diffs["b"] == "b") & (diffs["measure"] == "faithfulness")]
    assert at["fraction"].tolist() == grid and at["difference"].iloc[0] == pytest.approx(0.1)


def test_paired_interval_covers_no_difference_under_a_null():
    """Calibration: two rankings whose per-prompt curves are exchangeable (each prompt's two values drawn alike);
    the 95% paired interval of their CPR difference should cover 0 about 95% of the time (percentile bootstrap
    with 24 prompts undercovers a little: measured 0.917 over these 300 data sets)."""
    grid = [0.01, 0.1, 1.0]
    rng = np.random.default_rng(11)
    n, covered, sims = 24, 0, 300
    empty, full = np.zeros(n), np.full(n, 1.0)
    for _ in range(sims):
        prompt = rng.normal(0.5, 0.3, size=(2, n))
        a, b = (prompt + rng.normal(0, 0.2, size=(2, n)) for _ in range(2))
        curves = {("a", "absolute", 0): np.vstack([a, full[None]]), ("b", "absolute", 0): np.vstack([b, full[None]])}
        row = paired_differences(table_of_curves(grid, curves, empty, full), n_boot=200,
                                 seed=int(rng.integers(1 << 30))).iloc[0]
        covered += row["low"] <= 0 <= row["high"]
    assert 0.88 <= covered / sims <= 0.99


def test_faithfulness_module_needs_no_torch():
    import subprocess

    code = ("import sys; import cortexmap.circuits.faithfulness, cortexmap.circuits.graph, "
            "cortexmap.circuits.judge, cortexmap.circuits.interchange; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
