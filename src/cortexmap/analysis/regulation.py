"""The regulator test on edges, its statistics: a head's effect on other heads' composition, demanding vs easy.

Input: the per-prompt rows of :func:`cortexmap.circuits.regulation.measure_regulation` (the
``regulation.parquet`` table: ``candidate, condition, head, role, side, pair, change, scale``).
For each ablated head and side the **relative change** of the composition edges is
``sum_pairs change / sum_pairs scale`` (how much of the edges' total exact effect moved when the
head was ablated). The test statistic is ``demanding - easy``:

* its 95% interval is a paired bootstrap over the matched pairs (the same resampled pairs for
  both sides and every head);
* the **baseline** is the same statistic of the random heads ablated alongside (drawn from the
  whole model, never a head that sends or receives one of the measured edges); ``p_random`` is the candidate's
  rank among them, ``(1 + #{baseline >= candidate}) / (1 + n_baseline)``.

The verdict is ``supported`` when the interval lies above 0 *and* ``p_random <= 0.05`` (a Monte Carlo
rank test at the 5% level: with 19 baseline heads, the candidate above all of them), else ``not
supported``. :mod:`cortexmap.analysis.regulators` is the
coarser test on head outputs; this one is about edges (query / key composition).

Pandas and numpy only (no torch).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cortexmap.analysis.resampling import percentile_interval
from cortexmap.errors import ResultsError

REGULATION_COLUMNS = ("candidate", "condition", "head", "role", "side", "pair", "change", "scale")


def _relative(change: np.ndarray, scale: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[n_boot, n_heads]`` relative change from ``[n_heads, n_pairs]`` arrays and ``[n_boot, n_pairs]`` pair weights."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ change.T) / (weights @ scale.T)


def regulation_test(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The candidate's demanding - easy relative change against the baseline heads' (module docstring).

    Args:
        rows: one candidate and condition's rows of the regulation table.
        n_boot: bootstrap resamples of the pairs.
        seed: seed of the resampling.

    Returns:
        JSON-ready dict: ``candidate, condition, diff, ci_low, ci_high, easy, demanding`` (relative
        changes, each with ``_ci_low`` / ``_ci_high``), ``baseline_mean, baseline_p95, p_random,
        n_random, n_pairs, verdict`` and ``heads`` (every head's ``diff``).

    Raises:
        ResultsError: missing columns, not exactly one candidate, or a side without pairs.
    """
    missing = set(REGULATION_COLUMNS) - set(rows.columns)
    if missing:
        raise ResultsError(f"regulation rows lack {', '.join(sorted(missing))}: pass cortexmap regulate's table")
    candidates = rows.loc[rows["role"] == "candidate", "head"].unique()
    if len(candidates) != 1:
        raise ResultsError(f"one candidate head per test, got {list(candidates)}")
    heads = [candidates[0]] + sorted(set(rows["head"]) - {candidates[0]})
    arrays = {}
    for side in ("easy", "demanding"):
        wide = rows[rows["side"] == side].pivot_table(index="head", columns="pair", values=["change", "scale"])
        if wide.empty:
            raise ResultsError(f"no {side} rows: the test needs both sides")
        arrays[side] = (wide["change"].reindex(heads).to_numpy(float), wide["scale"].reindex(heads).to_numpy(float))
    n_pairs = arrays["easy"][0].shape[1]
    if arrays["demanding"][0].shape[1] != n_pairs:
        raise ResultsError("easy and demanding sides hold different numbers of pairs: they must be matched")
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_pairs, np.full(n_pairs, 1.0 / n_pairs), size=n_boot).astype(float)
    ones = np.ones((1, n_pairs))
    point = {side: _relative(*arrays[side], ones)[0] for side in arrays}
    boot = {side: _relative(*arrays[side], weights) for side in arrays}
    diff = point["demanding"] - point["easy"]
    low, high = percentile_interval(boot["demanding"] - boot["easy"])
    base = diff[1:]
    out: dict[str, Any] = {"candidate": str(heads[0]), "condition": str(rows["condition"].iloc[0]),
                           "diff": float(diff[0]), "ci_low": float(low[0]), "ci_high": float(high[0]),
                           "n_random": int(len(base)), "n_pairs": int(n_pairs), "n_edges": _n_edges(rows)}
    for side in ("easy", "demanding"):
        side_low, side_high = percentile_interval(boot[side][:, :1])
        out.update({side: float(point[side][0]), f"{side}_ci_low": float(side_low[0]),
                    f"{side}_ci_high": float(side_high[0])})
    if len(base):
        out.update({"baseline_mean": float(base.mean()), "baseline_p95": float(np.quantile(base, 0.95)),
                    "p_random": float((1 + (base >= diff[0]).sum()) / (1 + len(base)))})
    else:
        out.update({"baseline_mean": None, "baseline_p95": None, "p_random": None})
    supported = out["ci_low"] > 0 and out["p_random"] is not None and out["p_random"] <= 0.05
    out["verdict"] = "supported" if supported else "not supported"
    out["heads"] = {str(h): float(d) for h, d in zip(heads, diff)}
    return out


def _n_edges(rows: pd.DataFrame) -> int | None:
    return int(rows["n_edges"].iloc[0]) if "n_edges" in rows else None


def regulation_tests(table: pd.DataFrame | None, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """:func:`regulation_test` of every (candidate, condition) in a regulation table (none: ``[]``), each with ``seed``."""
    if table is None or table.empty:
        return []
    return [regulation_test(rows, n_boot=n_boot, seed=seed) for _, rows in table.groupby(["candidate", "condition"])]
