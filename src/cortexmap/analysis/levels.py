"""Level claims: do levels of language live at different depths? Tasks are the unit of inference.

The "attention cortex" hypothesis says lexical work happens early, syntactic / semantic / pragmatic
work in the middle, fact recall and reasoning late. A level is known only through its handful of
tasks, and each task keeps its important heads at a depth of its own (its circuit), so every claim
about levels here resamples and permutes **tasks**, never heads or layers:

* **Task depth.** A task's layer distribution is the weight of its important cells
  (:mod:`cortexmap.analysis.view`: important under every counterfactual intervention, weighted by
  the mean harm) summed per layer and normalised; its *depth* is the distribution's mean relative
  depth. Tasks without an important cell have no depth and are left out (counted in ``n_tasks``).
  Per-task bootstrap replicates resample the task's prompts (paired across interventions) and its
  important heads, the important set held fixed (:mod:`cortexmap.analysis.depth`).
* **Depth order** (:func:`depth_order`). Statistic: Spearman's rho between each evaluated task's
  hypothesis ordinal (:data:`DEFAULT_LEVEL_ORDER`, ties mid-ranked) and its depth, every task
  weighing the same. Null: level labels permuted across the evaluated tasks (each level keeps its
  number of tasks), one-sided p ``(1 + #{rho_perm >= rho}) / (1 + n_perm)``; "supported" when
  ``p < alpha`` and ``rho > 0``. Interval: a hierarchical bootstrap, tasks resampled within levels,
  then each drawn task's own prompt / head replicate. The depth difference between consecutive
  ordinal groups (``steps``) is the effect size, with the same bootstrap. **Power**: the smallest
  shift of depth per ordinal step that the test detects with 80% probability on this battery
  (:func:`detectable_step`): the observed tasks' depths with their group means removed, permuted,
  plus the shift, tested as shipped.
* **Level depths** (:func:`level_depths`): each level's mean task depth with the hierarchical
  interval, and its difference from the mean of the other levels' tasks with a task-permutation p
  (two-sided) and Benjamini-Hochberg q over levels.
* **Layer bands** (:func:`layer_bands`): the best contiguous split of the layers into bands. Each
  layer holds pseudo-counts of important cells per level (every important (head, task) cell counts
  once, spread by its task's layer distribution); a band is a multinomial over levels; dynamic
  programming finds the most likely split for each k <= ``max_bands`` and k minimises BIC. Because
  cells of one task are not independent, the BIC is not trusted as a test: the bands' level
  information (``BIC(1 band) - BIC(chosen)``) is compared with the same statistic under level
  labels permuted across tasks. Enrichment intervals use the hierarchical bootstrap with the
  boundaries held fixed (how well each band's composition is measured, not its boundaries).

The calibration of these tests on batteries whose tasks sit at task-specific depths unrelated to
their level is tests/analysis/test_calibration.py (data from :mod:`cortexmap.analysis.nulls`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from cortexmap.analysis.depth import head_resample_counts, layer_mass, mean_depth, normalize_mass
from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.records import from_dict, to_dict
from cortexmap.analysis.view import RunView
from cortexmap.stats import bh_q, percentile_interval, permutation_p, resample_within, smallest_p

DEFAULT_LEVEL_ORDER: dict[str, int] = {"lexical": 0, "syntactic": 1, "semantic": 1, "pragmatic": 1, "knowledge": 2,
                                       "reasoning": 2}
HYPOTHESIS = "lexical early < syntactic/semantic/pragmatic middle < knowledge/reasoning late"
MIN_TASKS = 4  # evaluated tasks the level tests need at all
POWER = 0.8


@dataclass(frozen=True)
class TaskDepths:
    """Every task's layer distribution and depth, observed and per bootstrap replicate."""

    tasks: tuple[str, ...]
    levels: tuple[str, ...]
    observed: np.ndarray  # [tasks, layers]; NaN rows: no important cell
    boot: np.ndarray  # [n_boot, tasks, layers]
    cells: np.ndarray  # [tasks] important cells
    rel_depth: np.ndarray  # [layers]

    @property
    def depth(self) -> np.ndarray:
        """[tasks] mean relative depth (NaN without important cells)."""
        return mean_depth(self.observed, self.rel_depth)

    @property
    def boot_depth(self) -> np.ndarray:
        """[n_boot, tasks]."""
        return mean_depth(self.boot, self.rel_depth)

    @property
    def evaluated(self) -> np.ndarray:
        return np.isfinite(self.depth)


def task_depths(view: RunView) -> TaskDepths:
    """The per-task layer distributions of a view (module docstring)."""
    layers = view.layers
    observed = normalize_mass(layer_mass(view.weight, layers, view.n_layers))
    counts = head_resample_counts(view.important, view.n_boot, np.random.default_rng(view.seed + 2))
    boot = normalize_mass(layer_mass(view.weight_draws * counts, layers, view.n_layers))
    return TaskDepths(view.tasks, view.levels, observed, boot, view.important.sum(axis=0), view.rel_depth)


def _rank_rho(x_ranks: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of ``y`` [..., n] against pre-ranked ``x_ranks`` [..., n] (ties of y mid-ranked)."""
    ry = rankdata(y, axis=-1)
    rx = x_ranks - x_ranks.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))


def _hier_boot(td: TaskDepths, use: np.ndarray, levels: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical bootstrap: ``[B, n_use]`` drawn task positions (within levels) and their depths."""
    idx = resample_within(levels, n_boot, rng)  # positions into use
    b_of = (np.arange(n_boot)[:, None] + 31 * np.arange(len(use))[None, :]) % td.boot.shape[0]
    depths = td.boot_depth[b_of, use[idx]]
    return idx, depths


@dataclass(frozen=True)
class DepthOrder:
    """The ordinal depth test of the hypothesis (module docstring).

    ``steps``: one row per consecutive ordinal pair: ``from``, ``to`` (ordinals), ``levels_from``,
    ``levels_to``, ``diff`` (mean task depth of ``to`` minus ``from``), ``ci_low``, ``ci_high``.
    """

    hypothesis: str
    level_order: dict[str, int]
    verdict: str
    n_tasks: int
    n_evaluated: int
    rho: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n_perm: int = 0
    null_mean: float | None = None
    null_p95: float | None = None
    alpha: float = 0.05
    detectable_step: float | None = None
    power: float = POWER
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    note: str = ""
    method: str = ""

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DepthOrder:
        return from_dict(cls, data)

    def findings(self) -> list[Finding]:
        if self.verdict == "not evaluated":
            return [Finding(kind="depth_order", subject=self.hypothesis, verdict="not evaluated", method=self.method,
                            stats={"note": self.note, "n_evaluated": self.n_evaluated},
                            text=f"Depth order '{self.hypothesis}': not evaluated ({self.note}).")]
        power = (f"it detects a shift of {num(self.detectable_step)} relative depth per step with "
                 f"{num(100 * self.power, 0)}% power" if self.detectable_step is not None else
                 "no shift up to 0.5 relative depth per step reaches 80% power")
        text = (f"Depth order '{self.hypothesis}': {self.verdict}: Spearman rho over {self.n_evaluated} tasks = "
                f"{num(self.rho)} {ci(self.ci_low, self.ci_high)} (tasks resampled within levels); level labels "
                f"permuted across tasks: null mean {num(self.null_mean)} (95th pct {num(self.null_p95)}), "
                f"p = {_p(self.p_value, self.n_perm)} ({self.n_perm} permutations); {power}.")
        out = [Finding(kind="depth_order", subject=self.hypothesis, effect=self.rho, ci_low=self.ci_low,
                       ci_high=self.ci_high, baseline=self.null_mean, baseline_label="level-permutation null mean",
                       p_value=self.p_value, verdict=self.verdict, method=self.method,
                       stats={"null_p95": self.null_p95, "n_perm": self.n_perm, "n_evaluated": self.n_evaluated,
                              "detectable_step": self.detectable_step}, text=text)]
        for row in self.steps.to_dict("records"):
            subject = f"{row['levels_from']} -> {row['levels_to']}"
            out.append(Finding(kind="depth_step", subject=subject, effect=row["diff"], ci_low=row["ci_low"],
                               ci_high=row["ci_high"], baseline=0.0, baseline_label="same depth", method=self.method,
                               text=f"step {subject}: depth difference {num(row['diff'])} "
                                    f"{ci(row['ci_low'], row['ci_high'])} (0 = same depth; tasks resampled within levels)."))
        return out


def _p(p: float | None, n_perm: int) -> str:
    if p is None:
        return "n/a"
    return f"< {num(smallest_p(n_perm) * 1.0001, 4)}" if p <= smallest_p(n_perm) else num(p, 4)


def _ordinal_setup(td: TaskDepths, order: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Positions of evaluated tasks with an ordinal, their ordinals, and their levels."""
    use = np.flatnonzero(td.evaluated & np.array([lev in order for lev in td.levels]))
    return use, np.array([order[td.levels[i]] for i in use], dtype=float), [td.levels[i] for i in use]


def _perm_rho(ordinals: np.ndarray, depths: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """rho of ``depths`` [..., n] against ordinals permuted across tasks: [..., n_perm]."""
    perms = np.argsort(rng.random((n_perm, len(ordinals))), axis=1)
    ranks = rankdata(ordinals)[perms]  # [n_perm, n]
    return _rank_rho(ranks, depths[..., None, :])


def detectable_step(depths: np.ndarray, ordinals: np.ndarray, *, alpha: float = 0.05, power: float = POWER,
                    n_sim: int = 200, n_perm: int = 200, seed: int = 0,
                    shifts: np.ndarray | None = None) -> tuple[float | None, list[float]]:
    """The smallest depth shift per ordinal step the depth-order test detects with ``power`` (module docstring).

    Args:
        depths: observed task depths.
        ordinals: their ordinals.
        alpha: the test's level.
        power: the detection rate asked for.
        n_sim: simulated batteries per shift.
        n_perm: permutations per simulated test.
        seed: seed.
        shifts: shifts tried (default 0.01 to 0.5 by 0.01).

    Returns:
        ``(shift, rates)`` as :func:`cortexmap.stats.detectable_shift` returns them.
    """
    shifts = np.round(np.arange(0.01, 0.501, 0.01), 3) if shifts is None else shifts
    values = np.unique(ordinals)
    residual = depths - np.array([depths[ordinals == v].mean() for v in values])[np.searchsorted(values, ordinals)]
    rng = np.random.default_rng(seed)
    x_ranks = rankdata(ordinals)
    rates = []
    for shift in shifts:
        sims = residual[np.argsort(rng.random((n_sim, len(residual))), axis=1)] + shift * ordinals  # [n_sim, n]
        rho = _rank_rho(np.broadcast_to(x_ranks, sims.shape), sims)
        null = _perm_rho(ordinals, sims, n_perm, rng)  # [n_sim, n_perm]
        p = permutation_p(rho, null, axis=-1)
        rate = float(np.mean((p < alpha) & (rho > 0)))
        rates.append(rate)
        if rate >= power:
            return float(shift), rates
    return None, rates


def depth_order(view: RunView, *, td: TaskDepths | None = None, level_order: Mapping[str, int] | None = None,
                n_perm: int = 2000, alpha: float = 0.05, power: bool = True) -> DepthOrder:
    """Test the ordinal depth hypothesis with tasks as the unit (module docstring).

    Args:
        view: the run's view.
        td: its :func:`task_depths` (computed when None).
        level_order: level -> ordinal; None uses :data:`DEFAULT_LEVEL_ORDER`.
        n_perm: level-label permutations.
        alpha: the verdict's level.
        power: also compute the detectable step (a few seconds).
    """
    td = task_depths(view) if td is None else td
    order = dict(DEFAULT_LEVEL_ORDER if level_order is None else level_order)
    hypothesis = HYPOTHESIS if level_order is None else "depth increases with the given level ordinal"
    use, ordinals, levels = _ordinal_setup(td, order)
    base = {"hypothesis": hypothesis, "level_order": order, "n_tasks": len(td.tasks), "n_evaluated": len(use),
            "alpha": alpha, "method": view.describe()}
    if len(use) < MIN_TASKS or len(np.unique(ordinals)) < 2:
        return DepthOrder(verdict="not evaluated", note=f"{len(use)} tasks with important heads over "
                          f"{len(np.unique(ordinals))} level ordinals; the test needs {MIN_TASKS} tasks over two ordinals",
                          **base)
    depths = td.depth[use]
    rng = np.random.default_rng(view.seed + 11)
    rho = float(_rank_rho(rankdata(ordinals), depths))
    null = _perm_rho(ordinals, depths, n_perm, rng)
    p = float(permutation_p(rho, null))
    idx, boot = _hier_boot(td, use, np.array(levels), view.n_boot, rng)
    boot_ord = ordinals[idx]
    boot_rho = _rank_rho(rankdata(boot_ord, axis=1), boot)
    low, high = percentile_interval(boot_rho)
    values = np.unique(ordinals)
    names = {v: "/".join(sorted({lev for lev, o in zip(levels, ordinals) if o == v})) for v in values}
    rows = []
    for a, b in zip(values[:-1], values[1:]):
        diff = depths[ordinals == b].mean() - depths[ordinals == a].mean()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            draws = (np.nanmean(np.where(boot_ord == b, boot, np.nan), axis=1)
                     - np.nanmean(np.where(boot_ord == a, boot, np.nan), axis=1))
        s_low, s_high = percentile_interval(draws)
        rows.append({"from": int(a), "to": int(b), "levels_from": names[a], "levels_to": names[b], "diff": float(diff),
                     "ci_low": float(s_low), "ci_high": float(s_high)})
    step = None
    if power:
        step, _ = detectable_step(depths, ordinals, alpha=alpha, seed=view.seed + 12)
    verdict = "supported" if p < alpha and rho > 0 else "not supported"
    return DepthOrder(verdict=verdict, rho=rho, ci_low=float(low), ci_high=float(high), p_value=p, n_perm=n_perm,
                      null_mean=float(null.mean()), null_p95=float(np.percentile(null, 95)), detectable_step=step,
                      steps=pd.DataFrame(rows), note=f"{len(td.tasks) - len(use)} tasks without important heads left out",
                      **base)


@dataclass(frozen=True)
class LevelDepths:
    """Each level's mean task depth and its difference from the other levels' tasks.

    ``table``: one row per level: ``level, ordinal, n_tasks, n_evaluated, n_important, mean_depth,
    ci_low, ci_high, diff`` (level mean minus the mean of the other levels' tasks), ``diff_ci_low,
    diff_ci_high, p_value`` (task-label permutation, two-sided), ``q_value`` (BH over levels).
    """

    table: pd.DataFrame
    n_perm: int
    method: str = ""

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LevelDepths:
        return from_dict(cls, data)

    def findings(self) -> list[Finding]:
        out = []
        for row in self.table.to_dict("records"):
            if not row["n_evaluated"]:
                out.append(Finding(kind="level_depth", subject=row["level"], verdict="not evaluated", method=self.method,
                                   stats={"n_tasks": row["n_tasks"], "n_evaluated": 0},
                                   text=f"{row['level']}: no task with important heads, depth not evaluated."))
                continue
            vs = (f"vs the other levels' tasks {num(row['diff'], 2)} {ci(row['diff_ci_low'], row['diff_ci_high'])}, "
                  f"p = {_p(row['p_value'], self.n_perm)}, q = {num(row['q_value'], 3)}"
                  if row["p_value"] is not None and np.isfinite(row["p_value"]) else "no other level to compare with")
            out.append(Finding(kind="level_depth", subject=row["level"], effect=row["mean_depth"], ci_low=row["ci_low"],
                               ci_high=row["ci_high"], baseline=row["mean_depth"] - row["diff"]
                               if row["diff"] is not None and np.isfinite(row["diff"]) else None,
                               baseline_label="mean depth of the other levels' tasks", p_value=row["p_value"],
                               method=self.method,
                               stats={"n_tasks": row["n_tasks"], "n_evaluated": row["n_evaluated"],
                                      "n_important": row["n_important"], "diff": row["diff"],
                                      "diff_ci_low": row["diff_ci_low"], "diff_ci_high": row["diff_ci_high"],
                                      "q_value": row["q_value"]},
                               text=f"{row['level']}: mean task depth {num(row['mean_depth'])} "
                                    f"{ci(row['ci_low'], row['ci_high'])} over {row['n_evaluated']} of {row['n_tasks']} "
                                    f"tasks ({row['n_important']} important head-task cells); {vs}."))
        return out


def level_depths(view: RunView, *, td: TaskDepths | None = None, level_order: Mapping[str, int] | None = None,
                 n_perm: int = 2000) -> LevelDepths:
    """Per level: mean task depth (hierarchical bootstrap) and its contrast with the other levels (task permutation)."""
    td = task_depths(view) if td is None else td
    order = dict(DEFAULT_LEVEL_ORDER if level_order is None else level_order)
    use = np.flatnonzero(td.evaluated)
    levels = np.array([td.levels[i] for i in use])
    depths = td.depth[use]
    rng = np.random.default_rng(view.seed + 13)
    idx, boot = _hier_boot(td, use, levels, view.n_boot, rng)
    boot_levels = levels[idx]
    perms = np.argsort(rng.random((n_perm, len(use))), axis=1)
    rows = []
    all_levels = list(dict.fromkeys(td.levels))
    for level in all_levels:
        members = levels == level
        n_tasks = sum(lev == level for lev in td.levels)
        row = {"level": level, "ordinal": order.get(level), "n_tasks": n_tasks, "n_evaluated": int(members.sum()),
               "n_important": int(td.cells[[i for i, lev in enumerate(td.levels) if lev == level]].sum()),
               "mean_depth": np.nan, "ci_low": np.nan, "ci_high": np.nan, "diff": np.nan, "diff_ci_low": np.nan,
               "diff_ci_high": np.nan, "p_value": np.nan}
        if members.any():
            row["mean_depth"] = float(depths[members].mean())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                in_draw = np.nanmean(np.where(boot_levels == level, boot, np.nan), axis=1)
                out_draw = np.nanmean(np.where(boot_levels != level, boot, np.nan), axis=1)
            row["ci_low"], row["ci_high"] = (float(v) for v in percentile_interval(in_draw))
            if (~members).any():
                diff = float(depths[members].mean() - depths[~members].mean())
                permuted = members[perms]  # [n_perm, n]
                null = ((permuted * depths).sum(1) / permuted.sum(1)
                        - ((~permuted) * depths).sum(1) / (~permuted).sum(1))
                row["diff"] = diff
                row["diff_ci_low"], row["diff_ci_high"] = (float(v) for v in percentile_interval(in_draw - out_draw))
                row["p_value"] = float(permutation_p(diff, null, alternative="two-sided"))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["q_value"] = bh_q(table["p_value"].to_numpy(float))
    return LevelDepths(table=table, n_perm=n_perm, method=view.describe())


def _cost_matrix(counts: np.ndarray) -> np.ndarray:
    """``[L+1, L+1]`` negative log-likelihood of a band of layers ``i..j-1`` (inf where ``j <= i``)."""
    csum = np.vstack([np.zeros(counts.shape[1]), np.cumsum(counts, axis=0)])
    c = csum[None, :, :] - csum[:, None, :]  # [i, j, D]
    total = c.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        nll = -np.where(c > 0, c * np.log(np.where(c > 0, c, 1.0) / np.where(total > 0, total, 1.0)), 0.0).sum(-1)
    n = counts.shape[0] + 1
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.where(j > i, nll, np.inf)


def segment(counts: np.ndarray, max_bands: int) -> list[tuple[float, list[int]]]:
    """Best contiguous split of ``counts`` [L, D] for k = 1..max_bands: (-log-likelihood, band starts)."""
    n_layers = counts.shape[0]
    cost = _cost_matrix(counts)
    best = np.full((max_bands + 1, n_layers + 1), np.inf)
    back = np.zeros((max_bands + 1, n_layers + 1), dtype=int)
    best[0, 0] = 0.0
    for k in range(1, max_bands + 1):
        total = best[k - 1][:, None] + cost  # [i, j]
        back[k] = np.argmin(total, axis=0)
        best[k] = total[back[k], np.arange(n_layers + 1)]
    out = []
    for k in range(1, max_bands + 1):
        starts, j = [], n_layers
        for kk in range(k, 0, -1):
            j = back[kk, j]
            starts.append(int(j))
        out.append((float(best[k, n_layers]), sorted(starts)))
    return out


def _bic_choice(counts: np.ndarray, max_bands: int) -> tuple[int, list[float], list[tuple[float, list[int]]]]:
    d = counts.shape[1]
    n_total = float(counts.sum())
    fits = segment(counts, max_bands)
    bics = [2 * nll + (k + 1) * (d - 1) * np.log(max(n_total, 1.0)) for k, (nll, _) in enumerate(fits)]
    return int(np.argmin(bics)), bics, fits


@dataclass(frozen=True)
class LayerBands:
    """The BIC segmentation into layer bands and its task-permutation test (module docstring).

    ``bands``: one row per band: ``band, layer_start, layer_end, depth_start, depth_end,
    dominant_level, enrichment`` (that level's share of its mass in the band / the band's share of
    layers; 1 = none), ``enrichment_ci_low, enrichment_ci_high, n_important`` and
    ``enrichment:<level>`` per level.
    """

    bands: pd.DataFrame
    n_bands: int
    gain: float | None = None  # BIC(1 band) - BIC(chosen)
    p_value: float | None = None
    n_perm: int = 0
    null_mean: float | None = None
    verdict: str = "not evaluated"
    note: str = ""
    method: str = ""

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LayerBands:
        return from_dict(cls, data)

    def findings(self) -> list[Finding]:
        if self.verdict == "not evaluated":
            return [Finding(kind="layer_bands", verdict="not evaluated", method=self.method, stats={"note": self.note},
                            text=f"Layer bands: not evaluated ({self.note}).")]
        s = "s" if self.n_bands != 1 else ""
        text = (f"Layer bands (BIC segmentation): {self.n_bands} band{s}; {self.verdict} as bands of levels: BIC gain "
                f"over one band {num(self.gain, 1)} vs {num(self.null_mean, 1)} with level labels permuted across tasks, "
                f"p = {_p(self.p_value, self.n_perm)}; each band's dominant level with its enrichment (1 = none), "
                "interval with the boundaries held fixed.")
        out = [Finding(kind="layer_bands", effect=self.gain, baseline=self.null_mean,
                       baseline_label="level-permutation null mean of the BIC gain", p_value=self.p_value,
                       verdict=self.verdict, method=self.method, stats={"n_bands": self.n_bands, "n_perm": self.n_perm},
                       text=text)]
        for b in self.bands.to_dict("records"):
            layers = f"L{b['layer_start']}-L{b['layer_end']}"
            if b["dominant_level"] is None:
                out.append(Finding(kind="band", subject=layers, verdict="not evaluated", method=self.method,
                                   stats={"layer_start": b["layer_start"], "layer_end": b["layer_end"]},
                                   text=f"{layers}: no important heads, so no dominant level."))
                continue
            out.append(Finding(kind="band", subject=layers, effect=b["enrichment"], ci_low=b["enrichment_ci_low"],
                               ci_high=b["enrichment_ci_high"], baseline=1.0, baseline_label="no enrichment",
                               method=self.method, stats={"level": b["dominant_level"], "layer_start": b["layer_start"],
                                                          "layer_end": b["layer_end"]},
                               text=f"{layers} {b['dominant_level']}: enrichment x{num(b['enrichment'], 1)} "
                                    f"{ci(b['enrichment_ci_low'], b['enrichment_ci_high'], 1)} (1 = none)."))
        return out


def layer_bands(view: RunView, *, td: TaskDepths | None = None, max_bands: int = 6, n_perm: int = 1000,
                alpha: float = 0.05) -> LayerBands:
    """Contiguous layer bands by dynamic programming and BIC, tested by permuting level labels across tasks."""
    td = task_depths(view) if td is None else td
    use = np.flatnonzero(td.evaluated)
    levels_all = np.array([td.levels[i] for i in use])
    levels = list(dict.fromkeys(levels_all.tolist()))
    if len(levels) < 2 or len(use) < MIN_TASKS:
        return LayerBands(bands=pd.DataFrame(), n_bands=0, note=f"{len(use)} tasks with important heads in "
                          f"{len(levels)} levels; bands of levels need {MIN_TASKS} tasks over two levels",
                          method=view.describe())
    spread = td.observed[use] * td.cells[use, None]  # [tasks, layers] pseudo-counts
    onehot = (levels_all[None, :] == np.array(levels)[:, None]).astype(float)  # [D, tasks]
    counts = (onehot @ spread).T  # [layers, D]
    max_k = max(1, min(max_bands, view.n_layers))
    k_best, bics, fits = _bic_choice(counts, max_k)
    gain = float(bics[0] - bics[k_best])
    rng = np.random.default_rng(view.seed + 14)
    null = np.empty(n_perm)
    for p in range(n_perm):
        perm_counts = (onehot[:, rng.permutation(len(use))] @ spread).T
        kb, pb, _ = _bic_choice(perm_counts, max_k)
        null[p] = pb[0] - pb[kb]
    p_value = float(permutation_p(gain, null))
    starts = fits[k_best][1] + [view.n_layers]
    # hierarchical bootstrap of each level's layer distribution (mean over its resampled tasks)
    idx, _ = _hier_boot(td, use, levels_all, view.n_boot, rng)
    b_of = (np.arange(view.n_boot)[:, None] + 31 * np.arange(len(use))[None, :]) % td.boot.shape[0]
    boot_dist = td.boot[b_of, use[idx]]  # [B, n_use, layers]
    boot_levels = levels_all[idx]
    observed = np.stack([td.observed[use][levels_all == lev].mean(axis=0) for lev in levels])  # [D, layers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        boot_level = np.stack([np.nanmean(np.where((boot_levels == lev)[..., None], boot_dist, np.nan), axis=1)
                               for lev in levels], axis=1)  # [B, D, layers]
    rows = []
    for b in range(len(starts) - 1):
        lo, hi = starts[b], starts[b + 1]
        share = (hi - lo) / view.n_layers
        enrich = {lev: float(observed[i, lo:hi].sum() / share) for i, lev in enumerate(levels)}
        dominant = max(enrich, key=enrich.get)
        low, high = percentile_interval(boot_level[:, levels.index(dominant), lo:hi].sum(axis=-1) / share)
        row = {"band": b, "layer_start": int(lo), "layer_end": int(hi - 1), "depth_start": float(td.rel_depth[lo]),
               "depth_end": float(td.rel_depth[hi - 1]), "dominant_level": dominant, "enrichment": enrich[dominant],
               "enrichment_ci_low": float(low), "enrichment_ci_high": float(high),
               "n_important": float(counts[lo:hi].sum())}
        row.update({f"enrichment:{lev}": v for lev, v in enrich.items()})
        rows.append(row)
    verdict = "supported" if p_value < alpha and k_best > 0 else "not supported"
    return LayerBands(bands=pd.DataFrame(rows), n_bands=len(starts) - 1, gain=gain, p_value=p_value, n_perm=n_perm,
                      null_mean=float(null.mean()), verdict=verdict, method=view.describe(),
                      note=f"{len(use)} tasks in {len(levels)} levels")
