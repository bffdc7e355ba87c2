"""Faithfulness of circuits over circuit sizes, and MIB's CPR and CMD (numpy and pandas only, no torch).

Definitions, as in MIB (Mueller et al. 2025, circuit localization track), checked against its
evaluation code (``evaluate_area_under_curve`` in MIB-circuit-track):

* **faithfulness** ``f(C) = (m(C) - m(empty)) / (m(full) - m(empty))``, each ``m`` the *mean*
  metric over prompts (a ratio of means, not a mean of per-prompt ratios); ``full`` keeps every
  edge (the clean model), ``empty`` none (every edge patched).
* **sizes**: fractions of the graph's edges, by default MIB's grid ``0.1%, 0.2%, 0.5%, 1%, 2%,
  5%, 10%, 20%, 50%, 100%``; a fraction ``p`` keeps ``floor(p * n_edges)`` edges (MIB's
  ``int(pct * n)``), the top ones of a ranking.
* **CPR** (higher is better): the trapezoidal area under ``f`` against the fraction on a
  **linear** axis from the first grid point to the last (MIB's default ``log_scale=False``).
  **CMD** (lower is better): the same area of ``|1 - f|``. On MIB's grid the 50%-100% interval is
  half the axis, so both are dominated by large circuits; ``log_x=True`` integrates over
  ``ln(fraction)`` instead (MIB's non-default option; such values are not comparable to MIB's).
* **smallest circuit** reaching a target faithfulness (default 0.8): the first grid size whose
  ``f >= target`` (curves need not be monotone); its interval comes from a percentile bootstrap
  over prompts (every size resampled with the same prompts), ``inf`` where a resample never
  reaches the target.
* **random baseline**: seeded random permutations of the edges, taken as rankings, so that the
  random circuits of one draw are nested like a ranking's.

Differences from MIB's tooling, to keep in mind when comparing numbers: MIB prunes edges left
dangling by the top-n selection before evaluating (we evaluate the kept edges as they are), MIB
ranks by signed scores for CPR and absolute scores for CMD (our ``absolute`` option picks one),
and our graph counts key/value inputs per KV group (:mod:`~cortexmap.circuits.graph`), so a
fraction of edges is a different number of edges than in an ungrouped graph.

The curve table, the interface with :mod:`~cortexmap.circuits.curves`: one row per prompt and
circuit, columns ``method, draw, fraction, n_edges, prompt, metric``; the references are rows with
``method`` ``"full"`` (fraction 1) and ``"empty"`` (fraction 0).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from cortexmap.errors import CortexmapError

MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
REFERENCES: tuple[str, ...] = ("full", "empty")


def circuit_sizes(n_edges: int, fractions: Sequence[float] = MIB_FRACTIONS) -> np.ndarray:
    """Edges kept at each fraction: ``floor(fraction * n_edges)``.

    Raises:
        CortexmapError: a fraction outside ``(0, 1]`` or fractions not increasing.
    """
    f = np.asarray(fractions, dtype=float)
    if f.ndim != 1 or not len(f) or (f <= 0).any() or (f > 1).any() or (np.diff(f) <= 0).any():
        raise CortexmapError(f"circuit fractions must increase within (0, 1], got {list(fractions)}")
    return np.floor(f * n_edges + 1e-9).astype(np.int64)


def rank_edges(scores: np.ndarray, absolute: bool = True) -> np.ndarray:
    """Edge positions from the highest score down (``|score|`` when ``absolute``); ties keep edge order."""
    key = np.abs(scores) if absolute else np.asarray(scores, dtype=float)
    return np.argsort(-key, kind="stable")


def random_orders(n_edges: int, n_draws: int = 1, seed: int = 0) -> np.ndarray:
    """``[n_draws, n_edges]`` seeded random rankings (the random-circuit baseline)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n_edges) for _ in range(n_draws)]) if n_draws else np.zeros((0, n_edges), int)


def prefix_masks(order: np.ndarray, sizes: Sequence[int], n_edges: int) -> np.ndarray:
    """``[n_sizes, n_edges]`` boolean circuits: the first ``size`` edges of ``order``."""
    out = np.zeros((len(sizes), n_edges), dtype=bool)
    for i, size in enumerate(sizes):
        out[i, order[:size]] = True
    return out


def circuit_faithfulness(circuit: np.ndarray, empty: np.ndarray, full: np.ndarray) -> np.ndarray:
    """``(mean(circuit) - mean(empty)) / (mean(full) - mean(empty))``, means over the last axis (prompts).

    Raises:
        CortexmapError: the full model and the empty circuit have the same mean metric.
    """
    low, high = np.mean(empty, -1), np.mean(full, -1)
    gap = np.asarray(high - low)
    if np.any(gap == 0):
        raise CortexmapError("the full model and the empty circuit score the same, so faithfulness is undefined; "
                             "use prompts on which patching every edge changes the metric")
    return (np.mean(circuit, -1) - low) / gap


def area(fractions: Sequence[float], values: np.ndarray, log_x: bool = False) -> np.ndarray:
    """Trapezoidal area of ``values`` (last axis along ``fractions``) over a linear (or ln) fraction axis."""
    x = np.log(np.asarray(fractions, dtype=float)) if log_x else np.asarray(fractions, dtype=float)
    v = np.asarray(values, dtype=float)
    return (np.diff(x) * (v[..., 1:] + v[..., :-1]) / 2).sum(-1)


def cpr(fractions: Sequence[float], faith: np.ndarray, log_x: bool = False) -> np.ndarray:
    """Area under the faithfulness curve (MIB's CPR; higher is better)."""
    return area(fractions, faith, log_x)


def cmd(fractions: Sequence[float], faith: np.ndarray, log_x: bool = False) -> np.ndarray:
    """Area between the faithfulness curve and 1 (MIB's CMD; lower is better)."""
    return area(fractions, np.abs(1.0 - np.asarray(faith, dtype=float)), log_x)


def first_reaching(fractions: Sequence[float], faith: np.ndarray, target: float) -> np.ndarray:
    """The first fraction whose faithfulness reaches ``target`` (last axis along fractions); inf if none."""
    f = np.asarray(faith, dtype=float)
    reached = f >= target
    first = np.argmax(reached, -1)
    grid = np.asarray(fractions, dtype=float)
    return np.where(reached.any(-1), grid[first], np.inf)


def curve_summary(fractions: Sequence[float], circuit: np.ndarray, empty: np.ndarray, full: np.ndarray, *,
                  target: float = 0.8, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                  log_x: bool = False) -> dict[str, float]:
    """Faithfulness statistics of one curve, with percentile-bootstrap intervals over prompts.

    Args:
        fractions: the circuit sizes as fractions of edges, increasing.
        circuit: ``[n_sizes, n_prompts]`` metric of the circuit at each size.
        empty: ``[n_prompts]`` metric with every edge patched.
        full: ``[n_prompts]`` metric of the full model.
        target: faithfulness the smallest circuit must reach.
        n_boot: bootstrap resamples of the prompts.
        seed: seed of the resampling.
        level: coverage of the intervals.
        log_x: integrate over ln(fraction) instead of the fraction.

    Returns:
        ``cpr, cpr_low, cpr_high, cmd, cmd_low, cmd_high, smallest, smallest_low, smallest_high``
        (fractions; inf: not reached) and ``n_prompts``.
    """
    circuit, empty, full = (np.asarray(a, dtype=float) for a in (circuit, empty, full))
    if circuit.shape != (len(fractions), len(empty)) or full.shape != empty.shape:
        raise CortexmapError(f"a curve needs [n_sizes={len(fractions)}, n_prompts={len(empty)}] circuit metrics, "
                             f"got {circuit.shape} with empty {empty.shape} and full {full.shape}")
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise CortexmapError(f"need n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    faith = circuit_faithfulness(circuit, empty, full)
    idx = np.random.default_rng(seed).integers(0, len(empty), size=(n_boot, len(empty)))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (circuit[:, idx].mean(-1) - empty[idx].mean(-1)) / (full[idx].mean(-1) - empty[idx].mean(-1))
    boot = boot.T  # [n_boot, n_sizes]
    alpha = (1.0 - level) / 2.0
    out: dict[str, float] = {"n_prompts": float(len(empty))}
    for name, point, draws in (("cpr", cpr(fractions, faith, log_x), cpr(fractions, boot, log_x)),
                               ("cmd", cmd(fractions, faith, log_x), cmd(fractions, boot, log_x))):
        out[name] = float(point)
        out[f"{name}_low"], out[f"{name}_high"] = (float(q) for q in np.nanquantile(draws, [alpha, 1 - alpha]))
    smallest = first_reaching(fractions, boot, target)
    out["smallest"] = float(first_reaching(fractions, faith, target))
    out["smallest_low"] = float(np.quantile(smallest, alpha, method="lower"))
    out["smallest_high"] = float(np.quantile(smallest, 1 - alpha, method="higher"))
    return out


def _split(curves: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    missing = {"method", "draw", "fraction", "n_edges", "prompt", "metric"} - set(curves.columns)
    if missing:
        raise CortexmapError(f"a curve table needs columns {sorted(missing)}; build it with faithfulness_curves")
    refs = {}
    for name in REFERENCES:
        rows = curves[curves["method"] == name].sort_values("prompt")
        if rows.empty:
            raise CortexmapError(f"the curve table has no {name!r} rows (the {name} model's metric per prompt)")
        refs[name] = rows["metric"].to_numpy(float)
    return refs["empty"], refs["full"], curves[~curves["method"].isin(REFERENCES)]


def curve_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Faithfulness per ``(method, draw, fraction)`` of a curve table (see the module docstring).

    Returns:
        Columns ``method, draw, fraction, n_edges, faithfulness`` sorted by method, draw, fraction.
    """
    empty, full, circuits = _split(curves)
    rows = []
    for (method, draw, fraction), group in circuits.groupby(["method", "draw", "fraction"], sort=True):
        metric = group.sort_values("prompt")["metric"].to_numpy(float)
        rows.append({"method": method, "draw": int(draw), "fraction": float(fraction),
                     "n_edges": int(group["n_edges"].iloc[0]),
                     "faithfulness": float(circuit_faithfulness(metric, empty, full))})
    return pd.DataFrame(rows, columns=["method", "draw", "fraction", "n_edges", "faithfulness"])


def summarize_curves(curves: pd.DataFrame, *, target: float = 0.8, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95, log_x: bool = False) -> pd.DataFrame:
    """CPR, CMD and the smallest circuit reaching ``target``, per ``(method, draw)`` of a curve table.

    Returns:
        One row per (method, draw): the :func:`curve_summary` fields, plus ``smallest_n_edges``
        (edges of the smallest circuit; -1 when not reached) and ``target``.
    """
    empty, full, circuits = _split(curves)
    rows = []
    for (method, draw), group in circuits.groupby(["method", "draw"], sort=True):
        wide = group.pivot_table(index="fraction", columns="prompt", values="metric").sort_index()
        sizes = group.groupby("fraction")["n_edges"].first().sort_index()
        stats = curve_summary(wide.index.to_numpy(float), wide.to_numpy(float), empty, full, target=target,
                              n_boot=n_boot, seed=seed, level=level, log_x=log_x)
        smallest = stats["smallest"]
        stats["smallest_n_edges"] = int(sizes.loc[smallest]) if np.isfinite(smallest) else -1
        rows.append({"method": method, "draw": int(draw), **stats, "target": target})
    return pd.DataFrame(rows)
