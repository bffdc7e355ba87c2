"""Redundancy between heads: joint interventions on pairs of a task's strongest heads.

**Redundancy** from joint interventions on pairs of heads (:mod:`cortexmap.sweep.pairs`: each
task's strongest heads, singly and two at a time, per prompt). The sign convention, fixed here
once and followed by every name and sentence below: effects are metric changes with **harm
negative**, and ``interaction = effect_ab - (effect_a + effect_b)``.

- ``interaction < 0``: the joint harm is *larger* than the sum of the single harms:
  **super-additive**; the heads back each other up (each covers for the other when it alone is
  removed): **redundant**.
- ``interaction > 0``: the joint harm is *smaller* than the sum: **sub-additive**; one pathway
  (the second head adds little once the first is gone) or saturation of the damage.
- ``relative_interaction = interaction / (|effect_a| + |effect_b|)`` puts pairs of different
  strength and tasks of different margins on one scale.

Each pair's interaction gets a 95% interval from a bootstrap over its task's prompts (the same
resampled prompts for the single and joint effects, so they stay paired); a pair is *redundant*
when its interval lies below 0, *sub-additive* when above, else *additive* (so under additivity
2.5% of pairs read as redundant by chance, the baseline of the redundant share). The summary
(mean relative interaction, share redundant, share sub-additive) is bootstrapped at the level of
tasks: tasks resampled with replacement, then pairs within each drawn task, because a task's
pairs share its heads and its prompts and are not independent. A percentile bootstrap of a mean
over few units is too narrow (a dozen tasks, or 30 prompts), so every interval here has its
half-widths widened by ``t_{n-1, 0.975} / z_{0.975} * sqrt(n / (n - 1))``, n the number of tasks
(summary) or prompts (a pair) (:func:`small_sample_factor`). An older pairs table with means
only (no ``prompt`` column) gives no pair intervals: kinds then follow ``|interaction| <=
tolerance * (|effect_a| + |effect_b|)`` -> additive, and the record says so.
The calibration on simulated pairs with no interaction but shared heads, shared prompts and
tasks of different scale is tests/analysis/test_specialization.py.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.records import from_dict, to_dict
from cortexmap.analysis.selection import Z95, require_columns
from cortexmap.analysis.view import COUNTERFACTUAL, RunView
from cortexmap.stats import percentile_interval

PAIR_COLUMNS = ("task", "head_a", "head_b", "effect_a", "effect_b", "effect_ab")
BY_CHANCE = 0.025  # share of additive pairs whose 95% interval lies below 0

def _kind(interaction: np.ndarray, low: np.ndarray, high: np.ndarray, scale: np.ndarray, tolerance: float,
          intervals: bool) -> np.ndarray:
    """``redundant`` / ``sub_additive`` / ``additive`` by the interval, or by the tolerance rule without one."""
    if intervals:
        return np.where(high < 0, "redundant", np.where(low > 0, "sub_additive", "additive"))
    additive = np.abs(interaction) <= tolerance * scale
    return np.where(additive, "additive", np.where(interaction < 0, "redundant", "sub_additive"))


def _interval(draws: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile interval; :func:`~cortexmap.stats.percentile_interval` where replicates hold NaN."""
    if np.isfinite(draws).all():
        low, high = np.percentile(draws, [2.5, 97.5], axis=axis)
        return low, high
    return percentile_interval(draws, axis=axis)


def small_sample_factor(n: np.ndarray | int) -> np.ndarray:
    """``t_{n-1, 0.975} / z_{0.975} * sqrt(n / (n - 1))``: how much a percentile bootstrap of a mean over n units is too narrow.

    NaN for ``n < 2``.
    """
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = student_t.ppf(0.975, n - 1) / Z95 * np.sqrt(n / (n - 1))
    return np.where(n >= 2, factor, np.nan)


def _widened(estimate: np.ndarray, low: np.ndarray, high: np.ndarray, n: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """A percentile interval's half-widths around ``estimate`` times :func:`small_sample_factor` ``(n)``."""
    k = small_sample_factor(n)
    return estimate - k * (estimate - low), estimate + k * (high - estimate)


def _pct(share: float | None) -> str:
    """A share in [0, 1] as a whole percentage (``n/a`` for None or NaN: an interval a single task cannot give)."""
    return num(None if share is None else 100 * share, 0)


def _relative(interaction: np.ndarray, scale: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, interaction / np.where(scale > 0, scale, 1.0), np.nan)


def _prompt_bootstrap(a: np.ndarray, b: np.ndarray, ab: np.ndarray, n_boot: int,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One task's pairs ``[pairs, prompts]``: means, and prompt-bootstrap intervals of the interaction.

    Every pair and effect uses the same resampled prompts, so single and joint effects stay paired.
    """
    ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(ab)
    n_prompts = a.shape[1]
    # each replicate as prompt counts [B, P]: a resampled mean is a weighted mean, one matmul per effect
    counts = np.zeros((n_boot, n_prompts))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_prompts), rng.integers(0, n_prompts, n_boot * n_prompts)), 1.0)
    weight = ok.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):  # a pair without a finite prompt (in a replicate)
        mean = [np.where(ok, x, 0.0).sum(axis=1) / weight.sum(axis=1) for x in (a, b, ab)]
        den = weight @ counts.T  # [pairs, B]
        boot = [(np.where(ok, x, 0.0) @ counts.T) / den for x in (a, b, ab)]
    inter, inter_boot = mean[2] - mean[0] - mean[1], boot[2] - boot[0] - boot[1]
    rel = _relative(inter, np.abs(mean[0]) + np.abs(mean[1]))
    n = ok.sum(axis=1)
    low, high = _widened(inter, *_interval(inter_boot, axis=1), n)
    rel_low, rel_high = _widened(rel, *_interval(_relative(inter_boot, np.abs(boot[0]) + np.abs(boot[1])), axis=1), n)
    return {"n_prompts": n, "effect_a": mean[0], "effect_b": mean[1], "effect_ab": mean[2], "interaction": inter,
            "interaction_ci_low": low, "interaction_ci_high": high, "relative_ci_low": rel_low,
            "relative_ci_high": rel_high}


def pairwise_interactions(pairs: pd.DataFrame, *, tolerance: float = 0.1, n_boot: int = 1000,
                          seed: int = 0) -> pd.DataFrame:
    """Each pair's interaction with its prompt-bootstrap interval, and its reading (module docstring).

    Args:
        pairs: per-prompt rows (columns task, head_a, head_b, prompt, effect_a, effect_b,
            effect_ab; optional intervention, clean) from :func:`cortexmap.sweep.pairs.measure_pairs`,
            or an older table of per-pair means (no ``prompt``).
        tolerance: the additivity band of a table without prompts: ``|interaction| <= tolerance *
            (|effect_a| + |effect_b|)`` reads as additive.
        n_boot: prompt-bootstrap replicates.
        seed: random seed.

    Returns:
        One row per pair: task, head_a, head_b, intervention, n_prompts (NaN without prompts),
        effect_a, effect_b, effect_ab (means over prompts), interaction, interaction_ci_low,
        interaction_ci_high, relative_interaction, relative_ci_low, relative_ci_high and kind
        (``redundant`` = super-additive, ``sub_additive`` or ``additive``). Intervals are NaN
        without prompts.

    Raises:
        ResultsError: columns missing or the table is empty.
    """
    require_columns(pairs, PAIR_COLUMNS, "pairs")
    per_prompt = "prompt" in pairs.columns
    effects = ["effect_a", "effect_b", "effect_ab"]
    frame = pairs.assign(intervention=pairs["intervention"] if "intervention" in pairs.columns else None)
    keys = ["task", "intervention", "head_a", "head_b"]
    if not per_prompt:
        out = frame.groupby(keys, sort=True, dropna=False)[effects].mean().reset_index()
        out["n_prompts"] = np.nan
        out["interaction"] = out["effect_ab"] - (out["effect_a"] + out["effect_b"])
        for col in ("interaction_ci_low", "interaction_ci_high", "relative_ci_low", "relative_ci_high"):
            out[col] = np.nan
    else:
        wide = frame.groupby(keys + ["prompt"], sort=True, dropna=False)[effects].mean().unstack("prompt")
        index = wide.index.to_frame(index=False)
        values = {c: wide[c].to_numpy(float) for c in effects}  # [pairs, prompts of every task]
        rng = np.random.default_rng(seed)
        parts = []
        for _, rows in index.groupby(["task", "intervention"], sort=True, dropna=False):
            where = rows.index.to_numpy()
            cols = np.flatnonzero(np.isfinite(values["effect_ab"][where]).any(axis=0))  # this task's prompts
            stats = _prompt_bootstrap(*(values[c][np.ix_(where, cols)] for c in effects), n_boot, rng)
            parts.append(pd.DataFrame(stats, index=where))
        out = pd.concat([index, pd.concat(parts).sort_index()], axis=1)
    scale = (out["effect_a"].abs() + out["effect_b"].abs()).to_numpy(float)
    inter = out["interaction"].to_numpy(float)
    out["relative_interaction"] = _relative(inter, scale)
    out["kind"] = _kind(inter, out["interaction_ci_low"].to_numpy(float), out["interaction_ci_high"].to_numpy(float),
                        scale, tolerance, per_prompt)
    columns = ["task", "head_a", "head_b", "intervention", "n_prompts", "effect_a", "effect_b", "effect_ab",
               "interaction", "interaction_ci_low", "interaction_ci_high", "relative_interaction", "relative_ci_low",
               "relative_ci_high", "kind"]
    return out[columns]


def task_pair_bootstrap(values: np.ndarray, tasks: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot]`` means of ``values`` with tasks resampled, then pairs within each drawn task (NaN skipped).

    Args:
        values: one value per pair (NaN: left out).
        tasks: each pair's task.
        n_boot: replicates.
        rng: the generator.

    Returns:
        The replicate means (NaN where a replicate holds no finite value).
    """
    values, tasks = np.asarray(values, dtype=float), np.asarray(tasks)
    names = list(dict.fromkeys(tasks.tolist()))
    sizes = np.array([(tasks == t).sum() for t in names])
    table = np.full((len(names), sizes.max()), np.nan)  # [tasks, most pairs]
    for i, t in enumerate(names):
        table[i, :sizes[i]] = values[tasks == t]
    drawn = rng.integers(0, len(names), (n_boot, len(names)))  # [B, T]
    within = np.floor(rng.random((n_boot, len(names), table.shape[1])) * sizes[drawn][..., None]).astype(int)
    picked = table[drawn[..., None], within]  # [B, T, K]
    picked = np.where(np.arange(table.shape[1]) < sizes[drawn][..., None], picked, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(picked.reshape(n_boot, -1), axis=1)


def summary_interval(values: np.ndarray, tasks: np.ndarray, n_boot: int,
                     rng: np.random.Generator) -> tuple[float | None, float | None, float | None]:
    """Mean over pairs and its task-level 95% interval (module docstring).

    Tasks are resampled, then pairs within each drawn task (:func:`task_pair_bootstrap`); the
    percentile interval's half-widths are widened by :func:`small_sample_factor` of the number of
    tasks (a bootstrap over a dozen clusters is too narrow: 7-11% false positives at a nominal 5%
    with 6-12 tasks in simulation). NaN values are left out.

    Returns:
        ``(estimate, low, high)``; Nones without a finite value, NaN bounds with one task.
    """
    values, tasks = np.asarray(values, dtype=float), np.asarray(tasks)
    finite = np.isfinite(values)
    if not finite.any():
        return None, None, None
    values, tasks = values[finite], tasks[finite]
    estimate = float(values.mean())
    draws = task_pair_bootstrap(values, tasks, n_boot, rng)
    low, high = _widened(estimate, *_interval(draws), len(set(tasks.tolist())))
    return estimate, float(low), float(high)


@dataclass(frozen=True)
class Redundancy:
    """Pairwise interactions of each task's strongest heads and their task-level summary (module docstring).

    ``pairs``: :func:`pairwise_interactions`. ``baseline_fraction``: the redundant share expected
    under additivity (2.5% with pair intervals; None without).
    """

    verdict: str | None
    n_pairs: int
    n_tasks: int
    per_prompt: bool
    interventions: tuple[str, ...]
    counterfactual: bool
    mean_relative_interaction: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    fraction_redundant: float | None = None
    fraction_redundant_ci_low: float | None = None
    fraction_redundant_ci_high: float | None = None
    fraction_sub_additive: float | None = None
    fraction_sub_additive_ci_low: float | None = None
    fraction_sub_additive_ci_high: float | None = None
    baseline_fraction: float | None = None
    tolerance: float = 0.1
    n_boot: int = 0
    note: str = ""
    method: str = "exact"
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Redundancy:
        return from_dict(cls, data)

    @property
    def reading(self) -> str | None:
        """``super-additive`` / ``sub-additive`` when the summary interval excludes 0, else ``additive``."""
        if self.ci_low is None or self.ci_high is None or not np.isfinite([self.ci_low, self.ci_high]).all():
            return None
        if self.ci_high < 0:
            return "super-additive"
        if self.ci_low > 0:
            return "sub-additive"
        return "additive"

    def _what(self) -> str:
        ivs = " / ".join(self.interventions) if self.interventions else "an unrecorded intervention"
        off = "" if self.counterfactual else " (not counterfactual: a head taken off its input distribution)"
        return f"joint {ivs}{off}"

    def findings(self) -> list[Finding]:
        """The ``redundancy`` headline and a ``redundancy_pair`` detail per pair whose interval excludes 0."""
        if self.n_pairs == 0:
            return [Finding(kind="redundancy", verdict="not evaluated", method=self.method, stats={"note": self.note},
                            text=f"Redundancy: not evaluated ({self.note}).")]
        reading = {"super-additive": "super-additive on average: joint harm larger than the sum of single harms "
                                     "(the heads back each other up)",
                   "sub-additive": "sub-additive on average: joint harm smaller than the sum (one pathway, or "
                                   "saturating damage)",
                   "additive": "no departure from additivity on average",
                   None: "no interval (it needs pairs from two tasks or more)"}[self.reading]
        share = (f"{_pct(self.fraction_redundant)}% of pairs redundant (super-additive, interval below 0) "
                 f"[95% CI {_pct(self.fraction_redundant_ci_low)}%, "
                 f"{_pct(self.fraction_redundant_ci_high)}%] vs {num(100 * BY_CHANCE, 1)}% by chance under "
                 f"additivity; {_pct(self.fraction_sub_additive)}% sub-additive (interval above 0) "
                 f"[95% CI {_pct(self.fraction_sub_additive_ci_low)}%, "
                 f"{_pct(self.fraction_sub_additive_ci_high)}%]" if self.per_prompt else
                 f"{_pct(self.fraction_redundant)}% of pairs redundant and "
                 f"{_pct(self.fraction_sub_additive)}% sub-additive by the +-{_pct(self.tolerance)}% "
                 "rule (no pair intervals)")
        note = f" {self.note}" if self.note else ""
        text = (f"Redundancy ({self._what()} of each task's strongest heads, {self.n_pairs} pairs over "
                f"{self.n_tasks} tasks): mean relative interaction {num(self.mean_relative_interaction)} "
                f"{ci(self.ci_low, self.ci_high)} (tasks resampled, then pairs within each task; 0 = additive, "
                f"< 0 super-additive, > 0 sub-additive): {reading}; {share}.{note}")
        out = [Finding(kind="redundancy", effect=self.mean_relative_interaction, ci_low=self.ci_low,
                       ci_high=self.ci_high, baseline=0.0, baseline_label="additive (no interaction)",
                       verdict=self.verdict, method=self.method,
                       stats={"fraction_redundant": self.fraction_redundant,
                              "fraction_redundant_ci_low": self.fraction_redundant_ci_low,
                              "fraction_redundant_ci_high": self.fraction_redundant_ci_high,
                              "fraction_redundant_baseline": self.baseline_fraction,
                              "fraction_sub_additive": self.fraction_sub_additive,
                              "fraction_sub_additive_ci_low": self.fraction_sub_additive_ci_low,
                              "fraction_sub_additive_ci_high": self.fraction_sub_additive_ci_high,
                              "n_pairs": self.n_pairs, "n_tasks": self.n_tasks, "reading": self.reading,
                              "interventions": list(self.interventions)},
                       text=text)]
        if not self.per_prompt:
            return out
        for row in self.pairs[self.pairs["kind"] != "additive"].to_dict("records"):
            kind = ("super-additive: joint harm larger than the sum (they back each other up)"
                    if row["kind"] == "redundant" else "sub-additive: joint harm smaller than the sum")
            subject = f"{row['head_a']} + {row['head_b']}"
            out.append(Finding(kind="redundancy_pair", subject=subject, task=row["task"], effect=row["interaction"],
                               ci_low=row["interaction_ci_low"], ci_high=row["interaction_ci_high"], baseline=0.0,
                               baseline_label="additive (no interaction)", method=self.method,
                               stats={"relative_interaction": row["relative_interaction"],
                                      "relative_interaction_ci_low": row["relative_ci_low"],
                                      "relative_interaction_ci_high": row["relative_ci_high"],
                                      "effect_a": row["effect_a"], "effect_b": row["effect_b"],
                                      "effect_ab": row["effect_ab"], "n_prompts": row["n_prompts"],
                                      "intervention": row["intervention"]},
                               text=f"{row['task']}: {subject}: interaction {num(row['interaction'])} "
                                    f"{ci(row['interaction_ci_low'], row['interaction_ci_high'])} (prompts resampled; "
                                    f"singles {num(row['effect_a'])} and {num(row['effect_b'])}, joint "
                                    f"{num(row['effect_ab'])}; relative {num(row['relative_interaction'])}): {kind}."))
        return out


def redundancy_from_pairs(pairs: pd.DataFrame | None, *, tolerance: float = 0.1, n_boot: int = 1000,
                          seed: int = 0) -> Redundancy:
    """Pair intervals and the task-level summary of a joint-intervention table (module docstring).

    Args:
        pairs: per-prompt rows of :func:`cortexmap.sweep.pairs.measure_pairs` (or an older table
            of per-pair means); None or empty gives a "not evaluated" record.
        tolerance: the additivity band of a table without prompts.
        n_boot: replicates of both bootstraps.
        seed: random seed.

    Returns:
        The :class:`Redundancy` record.
    """
    if pairs is None or not len(pairs):
        return Redundancy(verdict="not evaluated", n_pairs=0, n_tasks=0, per_prompt=False, interventions=(),
                          counterfactual=False, note="no joint-intervention pairs were measured "
                          "(cortexmap analyze --redundancy)")
    table = pairwise_interactions(pairs, tolerance=tolerance, n_boot=n_boot, seed=seed)
    per_prompt = "prompt" in pairs.columns
    ivs = tuple(sorted({str(v) for v in table["intervention"].dropna()}))
    counterfactual = bool(ivs) and all(iv in COUNTERFACTUAL for iv in ivs)
    notes = []
    if not per_prompt:
        notes.append("This pairs table holds per-pair means only (measured before per-prompt rows): no pair has an "
                     "interval, kinds follow the tolerance rule; re-measure with cortexmap analyze --redundancy.")
    if not ivs:
        notes.append("Its intervention is not recorded (older tables used zero ablation, which takes heads off "
                     "their input distribution).")
    rng = np.random.default_rng(seed + 1)
    tasks = table["task"].to_numpy()
    summary: dict = {}
    for name, values in (("mean_relative_interaction", table["relative_interaction"].to_numpy(float)),
                         ("fraction_redundant", (table["kind"] == "redundant").to_numpy(float)),
                         ("fraction_sub_additive", (table["kind"] == "sub_additive").to_numpy(float))):
        estimate, low, high = summary_interval(values, tasks, n_boot, rng)
        if name != "mean_relative_interaction" and estimate is not None:  # shares stay in [0, 1]
            low, high = float(np.clip(low, 0.0, 1.0)), float(np.clip(high, 0.0, 1.0))
        prefix = "" if name == "mean_relative_interaction" else f"{name}_"
        summary[name], summary[f"{prefix}ci_low"], summary[f"{prefix}ci_high"] = estimate, low, high
    return Redundancy(verdict=None, n_pairs=int(len(table)), n_tasks=int(table["task"].nunique()), per_prompt=per_prompt,
                      interventions=ivs, counterfactual=counterfactual,
                      baseline_fraction=BY_CHANCE if per_prompt else None, tolerance=tolerance, n_boot=n_boot,
                      note=" ".join(notes), pairs=table, **summary)


def pair_redundancy(view: RunView, *, tolerance: float = 0.1, n_boot: int | None = None,
                    seed: int | None = None) -> Redundancy:
    """:func:`redundancy_from_pairs` of a view's ``pairs`` table (``view.n_boot`` / ``view.seed`` by default)."""
    return redundancy_from_pairs(view.table("pairs"), tolerance=tolerance,
                                 n_boot=view.n_boot if n_boot is None else n_boot,
                                 seed=view.seed + 6 if seed is None else seed)


def redundancy_summary(pairs: pd.DataFrame, *, tolerance: float = 0.1, n_boot: int = 1000, seed: int = 0) -> dict:
    """:func:`redundancy_from_pairs` as a dict (what the atlas and scale table read).

    Returns:
        Dict: n_pairs, n_tasks, fraction_redundant (+ ``fraction_redundant_ci`` [low, high]),
        fraction_sub_additive (+ ci), mean_relative_interaction (+ ci), baseline (0: additive),
        baseline_fraction, per_prompt, interventions, note; intervals over tasks, then pairs.
    """
    r = redundancy_from_pairs(pairs, tolerance=tolerance, n_boot=n_boot, seed=seed)
    return {"n_pairs": r.n_pairs, "n_tasks": r.n_tasks, "fraction_redundant": r.fraction_redundant,
            "fraction_redundant_ci": [r.fraction_redundant_ci_low, r.fraction_redundant_ci_high],
            "fraction_sub_additive": r.fraction_sub_additive,
            "fraction_sub_additive_ci": [r.fraction_sub_additive_ci_low, r.fraction_sub_additive_ci_high],
            "mean_relative_interaction": r.mean_relative_interaction,
            "mean_relative_interaction_ci": [r.ci_low, r.ci_high], "baseline": 0.0,
            "baseline_fraction": r.baseline_fraction, "per_prompt": r.per_prompt,
            "interventions": list(r.interventions), "note": r.note}
