"""The regulator test on edges, its statistics: a head's effect on other heads' composition, demanding vs easy.

Input: the per-prompt rows of :func:`cortexmap.circuits.regulation.measure_regulation` (the
``regulation.parquet`` table: ``candidate, condition, head, role, side, pair, change, scale``;
optionally ``ablation``: ``mean``, counterfactual, or ``zero``, off-distribution; tables without
the column were measured with zero ablation). For each ablated head and side the **relative
change** of the composition edges is ``sum_pairs change / sum_pairs scale`` (how much of the
edges' total exact effect moved when the head was ablated). The test statistic is
``diff = demanding - easy``:

* its 95% interval is a paired bootstrap over the matched pairs (the same resampled pairs for
  both sides and every head); the two sides of a pair have the same token length
  (:func:`cortexmap.tasks.condition_sets`), so ``diff`` does not measure length;
* the **baseline** is the baseline heads ablated alongside, **matched in layer**: drawn from the
  candidate's own layer and then the nearest layers below it, never above it and never a head
  that sends or receives a measured edge (:func:`cortexmap.circuits.regulation.baseline_heads`).
  Because ablating an early head moves more of the model than ablating a late one, every head is
  compared within its layer: its ``diff`` is first divided by its layer's *scale*, the median
  bootstrap standard error of the layer's measured heads (a layer whose heads all move the edges
  more, and more noisily, does not count as different; one scale per layer keeps the heads of a
  layer exchangeable), then *layer-centred*: minus the mean of the other measured heads of its
  layer, times ``sqrt((m - 1) / m)`` for a layer of ``m`` measured heads so that every layer's
  centred values have the same variance (a head alone in its layer is not ranked). ``p_random``
  is the candidate's rank among the baseline heads' centred values,
  ``(1 + #{baseline >= candidate}) / (1 + n_ranked)``: exact within the candidate's layer when
  its heads are exchangeable, and calibrated across layers when the layers differ in their mean
  and in their scale (tests/circuits/test_regulation.py simulates both, FPR <= 7% at 5%).
  ``baseline_mean`` is the mean ``diff`` of the candidate's own-layer baseline heads and
  ``excess`` the candidate's ``diff`` minus it (with a paired bootstrap interval).

The verdict is ``supported`` when the interval of ``diff`` lies above 0 *and* ``p_random <= 0.05``
(with 19 ranked baseline heads, the candidate above all of them); ``underpowered`` when the
interval lies above 0 but too few layer-matched baseline heads were measured for ``p_random`` to
reach 0.05 (``p_smallest``, e.g. a layer-0 candidate of a model with 9 heads per layer has 8);
else ``not supported``. :mod:`cortexmap.analysis.regulators` is the coarser test on head outputs;
this one is about edges (query / key composition).

Pandas and numpy only (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.records import to_dict
from cortexmap.errors import ResultsError
from cortexmap.heads import HeadId
from cortexmap.stats import percentile_interval

REGULATION_COLUMNS = ("candidate", "condition", "head", "role", "side", "pair", "change", "scale")
LEVEL = 0.05
ABLATION_WORDS = {"mean": "mean ablation (counterfactual)", "zero": "zero ablation (off-distribution)"}


@dataclass(frozen=True)
class RegulationTest:
    """One candidate and condition's edge test (module docstring); relative changes are shares of the edges' effect.

    Attributes:
        candidate: the candidate head.
        condition: the condition contrast.
        ablation: how heads were ablated (``mean`` / ``zero``).
        diff: the candidate's demanding - easy relative change; ``ci_low`` / ``ci_high`` its interval.
        easy: its relative change on easy prompts (``easy_ci_low`` / ``easy_ci_high``).
        demanding: on demanding prompts (``demanding_ci_low`` / ``demanding_ci_high``).
        baseline_mean: mean ``diff`` of the own-layer baseline heads (None: none measured).
        baseline_p95: 95th percentile of the ranked baseline heads' centred ``diff``, moved to the
            candidate's layer (``baseline_mean`` + centred value).
        excess: ``diff - baseline_mean`` with its interval ``excess_ci_low`` / ``excess_ci_high``.
        p_random: the layer-centred rank p (None: nothing to rank against).
        p_smallest: the smallest ``p_random`` the ranked baseline heads allow.
        n_random: baseline heads measured; ``n_ranked`` of them ranked, ``n_same_layer`` in the
            candidate's layer; ``baseline_layers`` the layers they come from.
        n_pairs: matched pairs; n_edges: edges measured.
        verdict: ``supported``, ``underpowered`` or ``not supported``.
        heads: every measured head's ``diff``.
    """

    candidate: str
    condition: str
    ablation: str
    diff: float
    ci_low: float
    ci_high: float
    easy: float
    easy_ci_low: float
    easy_ci_high: float
    demanding: float
    demanding_ci_low: float
    demanding_ci_high: float
    baseline_mean: float | None
    baseline_p95: float | None
    excess: float | None
    excess_ci_low: float | None
    excess_ci_high: float | None
    p_random: float | None
    p_smallest: float | None
    n_random: int
    n_ranked: int
    n_same_layer: int
    baseline_layers: list[int]
    n_pairs: int
    n_edges: int | None
    verdict: str
    heads: dict[str, float] = field(default_factory=dict)

    def finding(self) -> Finding:
        """The test as a ``regulation`` finding."""
        return regulation_finding(to_dict(self))


@dataclass(frozen=True)
class Regulation:
    """Every edge regulator test of a run, one per (candidate, condition)."""

    tests: list[RegulationTest] = field(default_factory=list)

    def findings(self) -> list[Finding]:
        """One ``regulation`` finding per test."""
        return [t.finding() for t in self.tests]


def _relative(change: np.ndarray, scale: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[n_boot, n_heads]`` relative change from ``[n_heads, n_pairs]`` arrays and ``[n_boot, n_pairs]`` pair weights."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ change.T) / (weights @ scale.T)


def layer_centred(diff: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """Each head's ``diff`` minus its layer's other heads' mean, scaled to a common variance (module docstring).

    Args:
        diff: ``[..., heads]`` values.
        layers: ``[heads]`` each head's layer.

    Returns:
        ``[..., heads]``; NaN for a head alone in its layer.
    """
    out = np.full(diff.shape, np.nan)
    for layer in np.unique(layers):
        idx = np.flatnonzero(layers == layer)
        m = len(idx)
        if m < 2:
            continue
        group = diff[..., idx]
        others = (group.sum(axis=-1, keepdims=True) - group) / (m - 1)
        out[..., idx] = (group - others) * np.sqrt((m - 1) / m)
    return out


def layer_scaled(diff: np.ndarray, se: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """Each head's ``diff`` divided by the median standard error of its layer's measured heads (NaN where that is 0)."""
    out = np.full(diff.shape, np.nan)
    for layer in np.unique(layers):
        idx = layers == layer
        scale = float(np.median(se[idx]))
        if scale > 0:
            out[idx] = diff[idx] / scale
    return out


def _rank(diff: np.ndarray, se: np.ndarray, layers: np.ndarray) -> tuple[float | None, float | None, int]:
    """Layer-centred rank p of head 0 among the others, the smallest p possible, and how many were ranked."""
    centred = layer_centred(layer_scaled(diff, se, layers), layers)
    base = centred[1:][np.isfinite(centred[1:])]
    if not np.isfinite(centred[0]) or len(base) == 0:
        return None, None, int(len(base))
    return float((1 + (base >= centred[0] - 1e-12).sum()) / (1 + len(base))), float(1 / (1 + len(base))), int(len(base))


def _side(rows: pd.DataFrame, side: str, heads: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(change, scale)`` of one side, each ``[heads, pairs]`` (NaN where a head lacks a pair)."""
    sub = rows[rows["side"] == side]
    if sub.empty:
        raise ResultsError(f"no {side} rows: the test needs both sides")
    if sub.duplicated(["head", "pair"]).any():
        raise ResultsError(f"duplicate (head, pair) rows on the {side} side: one row per ablated head and pair")
    head = pd.Categorical(sub["head"].astype(str), categories=heads).codes
    pairs, pair = np.unique(sub["pair"].to_numpy(), return_inverse=True)
    change, scale = np.full((len(heads), len(pairs)), np.nan), np.full((len(heads), len(pairs)), np.nan)
    change[head, pair], scale[head, pair] = sub["change"].to_numpy(float), sub["scale"].to_numpy(float)
    return change, scale


def _ablation(rows: pd.DataFrame) -> str:
    if "ablation" not in rows:
        return "zero"
    kinds = sorted(set(rows["ablation"].astype(str)))
    return kinds[0] if len(kinds) == 1 else "+".join(kinds)


def regulation_record(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> RegulationTest:
    """The candidate's demanding - easy relative change against its layer-matched baseline heads (module docstring).

    Args:
        rows: one candidate and condition's rows of the regulation table.
        n_boot: bootstrap resamples of the pairs.
        seed: seed of the resampling.

    Returns:
        The :class:`RegulationTest`.

    Raises:
        ResultsError: missing columns, not exactly one candidate, or a side without pairs.
    """
    missing = set(REGULATION_COLUMNS) - set(rows.columns)
    if missing:
        raise ResultsError(f"regulation rows lack {', '.join(sorted(missing))}: pass cortexmap regulate's table")
    candidates = rows.loc[rows["role"] == "candidate", "head"].unique()
    if len(candidates) != 1:
        raise ResultsError(f"one candidate head per test, got {list(candidates)}")
    heads = [str(candidates[0])] + sorted(set(rows["head"].astype(str).unique()) - {str(candidates[0])})
    layers = np.array([HeadId.parse(h).layer for h in heads])
    arrays = {side: _side(rows, side, heads) for side in ("easy", "demanding")}
    n_pairs = arrays["easy"][0].shape[1]
    if arrays["demanding"][0].shape[1] != n_pairs:
        raise ResultsError("easy and demanding sides hold different numbers of pairs: they must be matched")
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_pairs, np.full(n_pairs, 1.0 / n_pairs), size=n_boot).astype(float)
    ones = np.ones((1, n_pairs))
    point = {side: _relative(*arrays[side], ones)[0] for side in arrays}
    boot = {side: _relative(*arrays[side], weights) for side in arrays}
    diff, boot_diff = point["demanding"] - point["easy"], boot["demanding"] - boot["easy"]
    low, high = percentile_interval(boot_diff[:, :1])
    sides = {side: percentile_interval(boot[side][:, :1]) for side in boot}
    p_random, p_smallest, n_ranked = _rank(diff, boot_diff.std(axis=0, ddof=1), layers)
    same = np.flatnonzero(layers[1:] == layers[0]) + 1
    baseline_mean = excess = excess_low = excess_high = baseline_p95 = None
    if len(same):
        baseline_mean = float(diff[same].mean())
        excess = float(diff[0] - baseline_mean)
        e_low, e_high = percentile_interval(boot_diff[:, 0] - boot_diff[:, same].mean(axis=1))
        excess_low, excess_high = float(np.atleast_1d(e_low)[0]), float(np.atleast_1d(e_high)[0])
        centred = layer_centred(diff, layers)[1:]
        if np.isfinite(centred).any():
            baseline_p95 = float(baseline_mean + np.quantile(centred[np.isfinite(centred)], 0.95))
    above = bool(low[0] > 0)
    if above and p_random is not None and p_random <= LEVEL:
        verdict = "supported"
    elif above and (p_smallest is None or p_smallest > LEVEL):
        verdict = "underpowered"
    else:
        verdict = "not supported"
    return RegulationTest(
        candidate=heads[0], condition=str(rows["condition"].iloc[0]), ablation=_ablation(rows), diff=float(diff[0]),
        ci_low=float(low[0]), ci_high=float(high[0]), easy=float(point["easy"][0]),
        easy_ci_low=float(sides["easy"][0][0]), easy_ci_high=float(sides["easy"][1][0]),
        demanding=float(point["demanding"][0]), demanding_ci_low=float(sides["demanding"][0][0]),
        demanding_ci_high=float(sides["demanding"][1][0]), baseline_mean=baseline_mean, baseline_p95=baseline_p95,
        excess=excess, excess_ci_low=excess_low, excess_ci_high=excess_high, p_random=p_random, p_smallest=p_smallest,
        n_random=len(heads) - 1, n_ranked=n_ranked, n_same_layer=int(len(same)),
        baseline_layers=sorted({int(v) for v in layers[1:]}), n_pairs=int(n_pairs),
        n_edges=int(rows["n_edges"].iloc[0]) if "n_edges" in rows else None, verdict=verdict,
        heads={h: float(d) for h, d in zip(heads, diff)})


def regulation_test(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """:func:`regulation_record` as a JSON-ready dict (its fields; missing values None)."""
    return to_dict(regulation_record(rows, n_boot=n_boot, seed=seed))


def regulation_analysis(view: Any, *, n_boot: int | None = None, seed: int | None = None) -> Regulation:
    """The edge regulator tests of a run (``view.table("regulation")``), seeded as ``cortexmap regulate`` seeds them.

    Args:
        view: a :class:`~cortexmap.analysis.view.RunView`.
        n_boot: bootstrap resamples of the pairs (None: the view's).
        seed: seed of every test (None: the view's).

    Returns:
        The :class:`Regulation` record (no tests when the run has no regulation table).
    """
    table = view.table("regulation")
    if table is None:
        return Regulation([])
    boot = view.n_boot if n_boot is None else n_boot
    chosen = view.seed if seed is None else seed
    return Regulation([regulation_record(rows, n_boot=boot, seed=chosen)
                       for _, rows in table.groupby(["candidate", "condition"])])


def regulation_finding(t: dict[str, Any]) -> Finding:
    """The ``regulation`` finding of one test (a :func:`regulation_test` dict)."""
    ablation = ABLATION_WORDS.get(t.get("ablation", "zero"), f"{t.get('ablation')} ablation")
    layers = t.get("baseline_layers") or []
    span = (f"L{min(layers)}-L{max(layers)}" if len(layers) > 1 else f"L{layers[0]}") if layers else "none"
    if t["p_random"] is None:
        baseline = (f"no layer-matched baseline head could be ranked ({t['n_random']} measured, {t['n_same_layer']} "
                    "in its layer), so no verdict against them")
    else:
        baseline = (f"vs {t['n_random']} random heads matched in layer ({t['n_same_layer']} of its layer, layers "
                    f"{span}, none above it or on the edges): own-layer mean {num(t['baseline_mean'], 3)}, excess "
                    f"{num(t['excess'], 3)} {ci(t['excess_ci_low'], t['excess_ci_high'], 3)}, layer-centred rank "
                    f"p = {num(t['p_random'], 3)} (smallest possible {num(t['p_smallest'], 3)})")
    text = (f"Regulator test on edges, {t['candidate']} on {t['condition']}: {t['verdict']}: {ablation} of it moves "
            f"{num(100 * t['demanding'], 1)}% of {t['n_edges']} query/key edges' exact effect on demanding prompts "
            f"{ci(100 * t['demanding_ci_low'], 100 * t['demanding_ci_high'], 1)} vs {num(100 * t['easy'], 1)}% on easy "
            f"ones {ci(100 * t['easy_ci_low'], 100 * t['easy_ci_high'], 1)} (pairs of equal token length): difference "
            f"{num(t['diff'], 3)} {ci(t['ci_low'], t['ci_high'], 3)} over {t['n_pairs']} matched pairs, {baseline}.")
    keys = ["easy", "easy_ci_low", "easy_ci_high", "demanding", "demanding_ci_low", "demanding_ci_high",
            "baseline_p95", "p_smallest", "n_random", "n_ranked", "n_same_layer", "n_pairs", "n_edges", "ablation"]
    if t["p_random"] is not None:  # the excess and its interval are stated only beside a rank
        keys += ["excess", "excess_ci_low", "excess_ci_high"]
    stats = {k: t.get(k) for k in keys}
    measured = t["baseline_mean"] is not None
    return Finding(kind="regulation", head=t["candidate"], subject=t["condition"], effect=t["diff"],
                   ci_low=t["ci_low"], ci_high=t["ci_high"], baseline=t["baseline_mean"] if measured else 0.0,
                   baseline_label=("mean difference of random heads of its layer (not on the edges)" if measured
                                   else "no difference between the sides (no baseline head of its layer)"),
                   p_value=t["p_random"], verdict=t["verdict"], method="exact", stats=stats, text=text)
