"""Task adaptivity: does one task recruit heads at a depth of its own? A claim about a task, not a level.

For each task, the depth of its important cells (:func:`cortexmap.analysis.levels.task_depths`:
the importance-weighted mean relative depth), with a bootstrap interval over the task's prompts and
its important heads. A task *leans* early or late when its cells sit deeper or shallower than the
battery's important cells do:

* ``diff = depth - battery_depth``, ``battery_depth`` the weighted mean depth of every important
  cell of the battery; its interval is the bootstrap of the task's depth minus the battery's;
* the test is a permutation test of cells: under the null, the task's ``k`` important cells are as
  good as ``k`` cells drawn without replacement from all the battery's important cells (with their
  weights); two-sided p ``(1 + #{|null| >= |diff|}) / (1 + n_perm)``, Benjamini-Hochberg q over tasks.
  (A bootstrap of a task's 3-9 heads is not a test: on a battery where every task draws its heads
  from one common depth distribution it called 13% of tasks different at nominal 5%;
  tests/analysis/test_calibration.py keeps this one at its level.)
* ``lean`` = "early" / "late" when ``q < alpha``, "neither" otherwise, "not evaluated" when the task
  has fewer than ``min_heads`` important heads.

Whether *levels* differ in depth is the task-level test of :mod:`cortexmap.analysis.levels`; this
module never pools tasks into levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.levels import TaskDepths, task_depths
from cortexmap.analysis.records import from_dict, to_dict
from cortexmap.analysis.view import RunView
from cortexmap.stats import bh_q, percentile_interval, permutation_p

ADAPTIVITY_COLUMNS = ("task", "level", "n_important", "mean_depth", "ci_low", "ci_high", "battery_depth", "diff",
                      "diff_ci_low", "diff_ci_high", "p_value", "q_value", "lean")


@dataclass(frozen=True)
class Adaptivity:
    """Per task (``table``, :data:`ADAPTIVITY_COLUMNS`): its depth and whether it leans early or late."""

    table: pd.DataFrame
    alpha: float = 0.05
    min_heads: int = 3
    method: str = ""

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Adaptivity:
        return from_dict(cls, data)

    def _finding(self, t: dict, verdict: str, text: str, **stats: object) -> Finding:
        return Finding(kind="adaptivity", task=t["task"], effect=t["diff"], ci_low=t["diff_ci_low"],
                       ci_high=t["diff_ci_high"], baseline=0.0, baseline_label="depth of the battery's important cells (difference 0)",
                       p_value=t.get("p_value"), verdict=verdict, method=self.method,
                       stats={"q_value": t["q_value"], **stats}, text=text)

    def findings(self) -> list[Finding]:
        rows = self.table.to_dict("records")
        out = []
        leaning = [t for t in rows if t["lean"] in ("early", "late")]
        for t in leaning:
            text = (f"Task {t['task']} leans {t['lean']}: depth {num(t['mean_depth'])} {ci(t['ci_low'], t['ci_high'])} "
                    f"vs the battery's important cells {num(t['battery_depth'])} (diff {num(t['diff'])} "
                    f"{ci(t['diff_ci_low'], t['diff_ci_high'])}, cell-permutation q = {num(t['q_value'], 3)}).")
            out.append(self._finding(t, f"leans {t['lean']}", text, depth=t["mean_depth"], depth_ci_low=t["ci_low"],
                                     depth_ci_high=t["ci_high"], battery_depth=t["battery_depth"]))
        compared = [t for t in rows if t["lean"] != "not evaluated" and t["diff"] is not None and np.isfinite(t["diff"])]
        if compared and not leaning:
            t = max(compared, key=lambda r: abs(r["diff"]))
            text = (f"No task's depth differs from the battery's important cells at q < {self.alpha} ({len(compared)} tasks "
                    f"compared); largest: {t['task']} diff {num(t['diff'])} {ci(t['diff_ci_low'], t['diff_ci_high'])}, "
                    f"q = {num(t['q_value'], 3)}.")
            out.append(self._finding(t, "no difference", text, n_compared=len(compared)))
        return out


def task_adaptivity(view: RunView, *, td: TaskDepths | None = None, min_heads: int = 3, alpha: float = 0.05,
                    n_perm: int = 2000) -> Adaptivity:
    """Per task, where its important heads sit and whether it leans early or late (module docstring)."""
    td = task_depths(view) if td is None else td
    observed, boot = td.depth, td.boot_depth  # [T], [B, T]
    compared = td.cells >= min_heads
    low, high = percentile_interval(boot)
    out = pd.DataFrame({"task": list(td.tasks), "level": list(td.levels), "n_important": td.cells.astype(int),
                        "mean_depth": observed, "ci_low": low, "ci_high": high})
    for column in ADAPTIVITY_COLUMNS[6:-1]:
        out[column] = np.nan
    out["lean"] = "not evaluated"
    heads, tasks = np.nonzero(view.important)
    if compared.sum() < 1 or len(heads) < 2:
        return Adaptivity(table=out.loc[:, list(ADAPTIVITY_COLUMNS)], alpha=alpha, min_heads=min_heads,
                          method=view.describe())
    depth = view.rel_depth[view.layers[heads]]
    weight = view.weight[heads, tasks]
    battery = float((weight * depth).sum() / weight.sum())
    boot_w = view.weight_draws[:, heads, tasks]  # [B, cells]
    with np.errstate(invalid="ignore", divide="ignore"):
        boot_battery = (boot_w * depth).sum(1) / boot_w.sum(1)
    rng = np.random.default_rng(view.seed + 15)
    order = np.argsort(rng.random((n_perm, len(heads))), axis=1)
    p_value = np.full(len(td.tasks), np.nan)
    for j in np.flatnonzero(compared):
        k = int(td.cells[j])
        picked = order[:, :k]
        null = (weight[picked] * depth[picked]).sum(1) / weight[picked].sum(1) - battery
        p_value[j] = float(permutation_p(observed[j] - battery, null, alternative="two-sided"))
    q_value = bh_q(p_value)
    diff = observed - battery
    d_low, d_high = percentile_interval(boot - boot_battery[:, None])
    out.loc[compared, "battery_depth"] = battery
    out.loc[compared, "diff"] = diff[compared]
    out.loc[compared, "diff_ci_low"], out.loc[compared, "diff_ci_high"] = d_low[compared], d_high[compared]
    out.loc[compared, "p_value"], out.loc[compared, "q_value"] = p_value[compared], q_value[compared]
    out.loc[compared, "lean"] = np.where(q_value[compared] < alpha, np.where(diff[compared] < 0, "early", "late"),
                                         "neither")
    return Adaptivity(table=out.loc[:, list(ADAPTIVITY_COLUMNS)], alpha=alpha, min_heads=min_heads,
                      method=view.describe())
