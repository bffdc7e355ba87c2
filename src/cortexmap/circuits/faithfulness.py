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

**Rankings** (:func:`ranking_summary`, :func:`paired_differences`): a curve table may hold each
ranking in two orders (column ``order``: ``"absolute"``, by ``|score|``, or ``"signed"``) and
random rankings (order ``"random"``). A ranking's CPR is read from its ``cpr_order`` curve and
its CMD from its ``cmd_order`` curve (MIB: signed and absolute; ``print_results.py`` in
MIB-circuit-track reads CPR from its ``abs-False`` and CMD from its ``abs-True`` results), its
smallest circuit and per-size faithfulness from the ``cmd_order`` curve. The random baseline is
the mean over its draws (CPR and CMD averaged draw by draw), reported with the spread over draws
(sd, min, max). Every interval, and every difference between two rankings, comes from one set of
bootstrap resamples of the prompts shared by all curves (a paired bootstrap: each replicate
recomputes both rankings' statistics on the same prompts).

Differences from MIB's tooling, to keep in mind when comparing numbers: MIB prunes edges left
dangling by the top-n selection before evaluating (with corrupt patching that never changes the
metric, :func:`~cortexmap.circuits.interchange.prune`), and cortexmap's own graph counts key/value
inputs per KV group (:mod:`~cortexmap.circuits.graph`), so a fraction of edges is a different
number of edges than in MIB's per-query-head graph (protocol ``"mib"`` uses MIB's).

The curve table, the interface with :mod:`~cortexmap.circuits.curves`: one row per prompt and
circuit, columns ``method, order, draw, fraction, n_edges, prompt, metric`` (``order`` optional);
the references are rows with ``method`` ``"full"`` (fraction 1) and ``"empty"`` (fraction 0).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from cortexmap.errors import CortexmapError
from cortexmap.stats import percentile_interval, resample_within

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


def _keys(curves: pd.DataFrame) -> list[str]:
    """The columns naming one curve: ``method``, ``order`` (when present) and ``draw``."""
    return ["method", "order", "draw"] if "order" in curves else ["method", "draw"]


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
    """Faithfulness per curve (``method``, ``order`` if present, ``draw``) and ``fraction`` of a curve table.

    Returns:
        Columns ``method, [order,] draw, fraction, n_edges, faithfulness``, sorted.
    """
    empty, full, circuits = _split(curves)
    keys = _keys(curves)
    rows = []
    for key, group in circuits.groupby([*keys, "fraction"], sort=True):
        metric = group.sort_values("prompt")["metric"].to_numpy(float)
        rows.append({**dict(zip(keys, key[:-1])), "fraction": float(key[-1]), "n_edges": int(group["n_edges"].iloc[0]),
                     "faithfulness": float(circuit_faithfulness(metric, empty, full))})
    out = pd.DataFrame(rows, columns=[*keys, "fraction", "n_edges", "faithfulness"])
    return out.astype({"draw": int})


def summarize_curves(curves: pd.DataFrame, *, target: float = 0.8, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95, log_x: bool = False) -> pd.DataFrame:
    """CPR, CMD and the smallest circuit reaching ``target``, per curve of a curve table.

    Returns:
        One row per curve (``method``, ``order`` if present, ``draw``): the :func:`curve_summary`
        fields, plus ``smallest_n_edges`` (edges of the smallest circuit; -1 when not reached) and
        ``target``.
    """
    empty, full, circuits = _split(curves)
    keys = _keys(curves)
    rows = []
    for key, group in circuits.groupby(keys, sort=True):
        wide = group.pivot_table(index="fraction", columns="prompt", values="metric").sort_index()
        sizes = group.groupby("fraction")["n_edges"].first().sort_index()
        stats = curve_summary(wide.index.to_numpy(float), wide.to_numpy(float), empty, full, target=target,
                              n_boot=n_boot, seed=seed, level=level, log_x=log_x)
        smallest = stats["smallest"]
        stats["smallest_n_edges"] = int(sizes.loc[smallest]) if np.isfinite(smallest) else -1
        rows.append({**dict(zip(keys, key)), **stats, "target": target})
    return pd.DataFrame(rows).astype({"draw": int})


# ---- rankings compared: one paired bootstrap over prompts for every curve ------------------------
def _replicates(curves: pd.DataFrame, n_boot: int, seed: int) -> tuple[np.ndarray, list[tuple], np.ndarray, np.ndarray]:
    """Fractions, curve keys, and faithfulness ``[n_curves, n_sizes]`` at the sample and ``[n_boot, ...]`` resampled.

    Every curve must cover the same fractions and prompts (those of the references).
    """
    empty, full, circuits = _split(curves)
    keys = _keys(curves)
    wide = circuits.pivot_table(index=keys, columns=["fraction", "prompt"], values="metric").sort_index(axis=1)
    fractions = np.array(sorted(set(wide.columns.get_level_values(0))), dtype=float)
    if wide.isna().to_numpy().any() or wide.shape[1] != len(fractions) * len(empty):
        raise CortexmapError("every ranking's curve needs every circuit size on every prompt of the references "
                             "to be compared; evaluate them on one grid and one set of prompts")
    metric = wide.to_numpy(float).reshape(len(wide), len(fractions), len(empty))  # [curves, sizes, prompts]
    idx = resample_within(np.zeros(len(empty)), n_boot, np.random.default_rng(seed))  # [n_boot, prompts]
    point = circuit_faithfulness(metric, empty, full)
    with np.errstate(divide="ignore", invalid="ignore"):
        low, high = empty[idx].mean(-1), full[idx].mean(-1)  # [n_boot]
        boot = (metric[:, :, idx].mean(-1) - low) / (high - low)  # [curves, sizes, n_boot]
    return fractions, list(wide.index), point, np.moveaxis(boot, -1, 0)


def _statistics(fractions: np.ndarray, keys: list[tuple], faith: np.ndarray, cpr_order: str, cmd_order: str,
                log_x: bool) -> dict[str, dict[str, np.ndarray]]:
    """Per ranking (random: mean over draws): ``cpr``, ``cmd`` ``[...]`` and ``faithfulness`` ``[..., sizes]``.

    ``faith`` is ``[..., n_curves, n_sizes]``; the results drop the curve axis. Random rankings
    also give ``cpr_draws`` and ``cmd_draws`` ``[..., n_draws]``.
    """
    has_order = len(keys[0]) == 3
    curve = {k: i for i, k in enumerate(keys)}
    out: dict[str, dict[str, np.ndarray]] = {}
    for method in dict.fromkeys(k[0] for k in keys):
        mine = [k for k in keys if k[0] == method]
        if method == "random":
            at = [curve[k] for k in mine]
            draws_cpr, draws_cmd = cpr(fractions, faith[..., at, :], log_x), cmd(fractions, faith[..., at, :], log_x)
            out[method] = {"cpr": draws_cpr.mean(-1), "cmd": draws_cmd.mean(-1),
                           "faithfulness": faith[..., at, :].mean(-2), "cpr_draws": draws_cpr, "cmd_draws": draws_cmd}
            continue

        def pick(order: str) -> np.ndarray:
            key = (method, order, 0) if has_order else (method, 0)
            if key not in curve:
                raise CortexmapError(f"ranking {method!r} has no {order!r} curve in the table")
            return faith[..., curve[key], :]

        out[method] = {"cpr": cpr(fractions, pick(cpr_order), log_x), "cmd": cmd(fractions, pick(cmd_order), log_x),
                       "faithfulness": pick(cmd_order)}
    return out


def _names(found: Sequence[str], first: Sequence[str] | None) -> list[str]:
    """Ranking names: those of ``first`` in its order, then the others as found, ``random`` last."""
    listed = [n for n in (first or []) if n in found]
    return sorted(listed + [n for n in found if n not in listed], key=lambda n: n == "random")


def ranking_summary(curves: pd.DataFrame, *, cpr_order: str = "absolute", cmd_order: str = "absolute",
                    target: float = 0.8, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                    log_x: bool = False, names: Sequence[str] | None = None) -> pd.DataFrame:
    """CPR, CMD and the smallest circuit per ranking, the random baseline averaged over its draws.

    Args:
        curves: a curve table (see the module docstring) covering one grid and one set of prompts.
        cpr_order: the order whose curve gives CPR (``"signed"`` for MIB).
        cmd_order: the order whose curve gives CMD, the smallest circuit and per-size faithfulness.
        target: faithfulness the smallest circuit must reach.
        n_boot: bootstrap resamples of the prompts, shared by every ranking.
        seed: seed of the resampling.
        level: coverage of the intervals.
        log_x: integrate over ln(fraction).
        names: rankings to list first, in this order (the others follow as found, random last).

    Returns:
        One row per ranking, in the order of ``names``, ``random`` last: ``method, cpr, cpr_low, cpr_high,
        cmd, cmd_low, cmd_high, smallest, smallest_low, smallest_high`` (fractions; inf: not
        reached), ``n_draws`` (1 for a ranking), ``cpr_sd, cpr_min, cpr_max, cmd_sd, cmd_min,
        cmd_max`` (spread over the random draws; NaN for a ranking), ``cpr_order, cmd_order,
        n_prompts, target``.
    """
    fractions, keys, point, boot = _replicates(curves, n_boot, seed)
    at, draws = _statistics(fractions, keys, point, cpr_order, cmd_order, log_x), \
        _statistics(fractions, keys, boot, cpr_order, cmd_order, log_x)
    n_prompts = int((curves["method"] == "empty").sum())
    rows = []
    for method in _names(list(at), names):
        row: dict[str, object] = {"method": method}
        for name in ("cpr", "cmd"):
            low, high = percentile_interval(draws[method][name], level)
            row.update({name: float(at[method][name]), f"{name}_low": float(low), f"{name}_high": float(high)})
        smallest = first_reaching(fractions, draws[method]["faithfulness"], target)
        alpha = (1.0 - level) / 2.0
        row.update({"smallest": float(first_reaching(fractions, at[method]["faithfulness"], target)),
                    "smallest_low": float(np.quantile(smallest, alpha, method="lower")),
                    "smallest_high": float(np.quantile(smallest, 1 - alpha, method="higher"))})
        spread = at[method].get("cpr_draws")
        row["n_draws"] = 1 if spread is None else len(spread)
        for name in ("cpr", "cmd"):
            values = at[method].get(f"{name}_draws")
            row.update({f"{name}_sd": np.nan if values is None or len(values) < 2 else float(np.std(values, ddof=1)),
                        f"{name}_min": np.nan if values is None else float(np.min(values)),
                        f"{name}_max": np.nan if values is None else float(np.max(values))})
        row.update({"cpr_order": cpr_order, "cmd_order": cmd_order, "n_prompts": n_prompts, "target": target})
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(curves: pd.DataFrame, *, cpr_order: str = "absolute", cmd_order: str = "absolute",
                       n_boot: int = 1000, seed: int = 0, level: float = 0.95, log_x: bool = False,
                       names: Sequence[str] | None = None) -> pd.DataFrame:
    """Differences between every two rankings (random: the mean of its draws), with paired bootstrap intervals.

    Args:
        curves: a curve table covering one grid and one set of prompts.
        cpr_order, cmd_order, n_boot, seed, level, log_x, names: as in :func:`ranking_summary`
            (the same ``seed`` resamples the same prompts, so the intervals go with its table).

    Returns:
        One row per (pair, measure): ``a, b`` (rankings; ``b`` comes after ``a`` in the order of
        ``names``, ``random`` last), ``measure`` (``cpr``, ``cmd`` or ``faithfulness``), ``fraction`` (the size, for
        faithfulness; NaN otherwise), ``difference`` (``a - b``), ``low, high``, ``n_prompts``.
    """
    fractions, keys, point, boot = _replicates(curves, n_boot, seed)
    at, draws = _statistics(fractions, keys, point, cpr_order, cmd_order, log_x), \
        _statistics(fractions, keys, boot, cpr_order, cmd_order, log_x)
    n_prompts = int((curves["method"] == "empty").sum())
    listed = _names(list(at), names)
    rows = []
    for i, a in enumerate(listed):
        for b in listed[i + 1:]:
            for measure in ("cpr", "cmd", "faithfulness"):
                diff = at[a][measure] - at[b][measure]
                low, high = percentile_interval(draws[a][measure] - draws[b][measure], level)
                grid = fractions if measure == "faithfulness" else [np.nan]
                for j, fraction in enumerate(grid):
                    pick = (lambda v: v[..., j]) if measure == "faithfulness" else (lambda v: v)
                    rows.append({"a": a, "b": b, "measure": measure, "fraction": float(fraction),
                                 "difference": float(pick(diff)), "low": float(pick(low)), "high": float(pick(high)),
                                 "n_prompts": n_prompts})
    return pd.DataFrame(rows, columns=["a", "b", "measure", "fraction", "difference", "low", "high", "n_prompts"])
