"""Do the interventions agree on which heads matter? Where they do not, the atlas shows it.

A head-level claim rests on every counterfactual intervention of the run
(:mod:`cortexmap.analysis.view`). This record counts, over the (head, task) cells measured under
each of them, the cells :data:`~cortexmap.rules.IMPORTANT` under each, under all, and under one
only, with the Jaccard overlap (important under all / under any) and its bootstrap interval over
tasks (cells of a task are not independent). Each cell important under one intervention only is
listed with its effect and interval under every intervention: a head that patching finds harmful
but mean ablation does not (or the reverse) is a measured disagreement, not a finding.

When the run also holds zero ablation, the same comparison is made for it: how many cells zero
ablation alone would call important that no counterfactual intervention confirms. Zero ablation
takes a head off its input distribution (its output becomes a vector the model never sees), so
those cells are candidates for artefacts of the ablation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.records import from_dict, to_dict
from cortexmap.analysis.selection import Z95, effect_arrays, select_effects
from cortexmap.analysis.view import RunView
from cortexmap.stats import percentile_interval

SHOWN = 10  # disagreeing cells stated as findings (all are in the table)


@dataclass(frozen=True)
class Agreement:
    """Agreement of the claim's interventions on important cells (module docstring).

    ``counts``: one row per intervention: ``intervention, important`` (cells important under it),
    ``alone`` (important under it but not under every other). ``cells``: one row per disagreeing
    cell: ``task, head_id, layer, head, important_under`` and per intervention ``effect:<iv>``,
    ``ci_low:<iv>``, ``ci_high:<iv>`` (normalized). ``zero``: the zero-ablation comparison, or empty.
    """

    interventions: list[str]
    n_cells: int
    n_all: int
    n_any: int
    jaccard: float | None
    jaccard_ci_low: float | None
    jaccard_ci_high: float | None
    counts: pd.DataFrame
    cells: pd.DataFrame
    zero: dict = field(default_factory=dict)
    method: str = ""

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Agreement:
        return from_dict(cls, data)

    def findings(self) -> list[Finding]:
        out = []
        if len(self.interventions) > 1:
            alone = "; ".join(f"{r['alone']} under {r['intervention']} only" for r in self.counts.to_dict("records"))
            verdict = "agree" if self.n_any == self.n_all else "disagree"
            text = (f"Interventions {' and '.join(self.interventions)}: {self.n_all} head-task cells are important under "
                    f"each ({alone}); overlap (Jaccard, all / any) {num(self.jaccard)} "
                    f"{ci(self.jaccard_ci_low, self.jaccard_ci_high)} over {self.n_cells} cells measured under each "
                    "(tasks resampled); only cells important under each enter the atlas.")
            out.append(Finding(kind="agreement", effect=self.jaccard, ci_low=self.jaccard_ci_low,
                               ci_high=self.jaccard_ci_high, baseline=1.0, baseline_label="full agreement",
                               verdict=verdict, method=self.method,
                               stats={"n_all": self.n_all, "n_any": self.n_any, "n_cells": self.n_cells}, text=text))
            for row in self.cells.head(SHOWN).to_dict("records"):
                parts = ", ".join(f"{iv} {num(row[f'effect:{iv}'])} {ci(row[f'ci_low:{iv}'], row[f'ci_high:{iv}'])}"
                                  for iv in self.interventions)
                stats = {"important_under": row["important_under"]}
                for iv in self.interventions:
                    stats.update({iv: row[f"effect:{iv}"], f"{iv}_ci_low": row[f"ci_low:{iv}"],
                                  f"{iv}_ci_high": row[f"ci_high:{iv}"]})
                out.append(Finding(kind="disagreement", head=row["head_id"], task=row["task"],
                                   effect=row[f"effect:{row['important_under']}"], verdict="disagree",
                                   method=self.method, stats=stats,
                                   text=f"{row['head_id']} on {row['task']} is important under {row['important_under']} "
                                        f"only: {parts}."))
        if self.zero:
            z = self.zero
            text = (f"Zero ablation (off-distribution, not evidence on its own) would call {z['important']} cells important; "
                    f"{z['unconfirmed']} of them ({num(100 * z['share_unconfirmed'], 0)}%) are important under no "
                    f"counterfactual intervention (e.g. {', '.join(z['examples']) or 'none'}).")
            out.append(Finding(kind="agreement", subject="zero ablation", effect=z["share_unconfirmed"], baseline=0.0,
                               baseline_label="every zero-ablation cell confirmed", method="exact",
                               stats={"important": z["important"], "unconfirmed": z["unconfirmed"]}, text=text))
        return out


def intervention_agreement(view: RunView, effects: pd.DataFrame | None = None, *, seed: int | None = None) -> Agreement:
    """The :class:`Agreement` of a view; ``effects`` (the run's table) adds the zero-ablation comparison."""
    ivs = list(view.interventions)
    measured = view.measured
    masks = {iv: view.important_by[iv] & measured for iv in ivs}
    all_ = np.all([masks[iv] for iv in ivs], axis=0)
    any_ = np.any([masks[iv] for iv in ivs], axis=0)
    counts = pd.DataFrame([{"intervention": iv, "important": int(masks[iv].sum()),
                            "alone": int((masks[iv] & ~all_).sum())} for iv in ivs])
    rng = np.random.default_rng(view.seed + 31 if seed is None else seed)
    jaccard = low = high = None
    if any_.any():
        jaccard = float(all_.sum() / any_.sum())
        per_all, per_any = all_.sum(0), any_.sum(0)
        idx = rng.integers(0, len(view.tasks), (view.n_boot, len(view.tasks)))
        with np.errstate(invalid="ignore", divide="ignore"):
            draws = per_all[idx].sum(1) / per_any[idx].sum(1)
        low, high = (float(v) for v in percentile_interval(draws))
    rows = []
    heads, tasks = np.nonzero(any_ & ~all_)
    for h, j in zip(heads, tasks):
        row = {"task": view.tasks[j], "head_id": view.grid.index[h], "layer": int(view.grid["layer"].iloc[h]),
               "head": int(view.grid["head"].iloc[h]),
               "important_under": next(iv for iv in ivs if masks[iv][h, j])}
        for iv in ivs:
            a = view.arrays[iv]
            half = Z95 * a.se[h, j]
            row.update({f"effect:{iv}": a.effect[h, j], f"ci_low:{iv}": a.effect[h, j] - half,
                        f"ci_high:{iv}": a.effect[h, j] + half})
        rows.append(row)
    cells = pd.DataFrame(rows)
    if len(cells):
        size = cells[[f"effect:{cells['important_under'].iloc[i]}" for i in range(len(cells))]].to_numpy()
        cells = cells.assign(_size=-np.abs(np.diag(size))).sort_values("_size", kind="stable").drop(columns="_size")
        cells = cells.reset_index(drop=True)
    return Agreement(interventions=ivs, n_cells=int(measured.sum()), n_all=int(all_.sum()), n_any=int(any_.sum()),
                     jaccard=jaccard, jaccard_ci_low=low, jaccard_ci_high=high, counts=counts, cells=cells,
                     zero=_zero_comparison(view, effects), method=view.describe())


def _zero_comparison(view: RunView, effects: pd.DataFrame | None) -> dict:
    if effects is None or not view.counterfactual or "zero" not in set(effects["intervention"]):
        return {}
    try:
        zero = effect_arrays(select_effects(effects, intervention="zero", method=view.method), view.n_layers, view.n_heads)
    except Exception:  # noqa: BLE001 - no zero rows of this method: nothing to compare
        return {}
    cols = [zero.tasks.index(t) if t in zero.tasks else -1 for t in view.tasks]
    mask = np.zeros_like(view.important)
    for j, c in enumerate(cols):
        if c >= 0:
            mask[:, j] = view.rule.mask(zero.effect[:, c], zero.se[:, c])
    confirmed = np.any([view.important_by[iv] for iv in view.interventions], axis=0)
    unconfirmed = mask & ~confirmed
    heads, tasks = np.nonzero(unconfirmed)
    size = -zero.effect[heads, [cols[j] for j in tasks]] if len(heads) else np.array([])
    order = np.argsort(-size, kind="stable")[:3]
    return {"important": int(mask.sum()), "unconfirmed": int(unconfirmed.sum()),
            "share_unconfirmed": float(unconfirmed.sum() / mask.sum()) if mask.sum() else 0.0,
            "examples": [f"{view.grid.index[heads[i]]} on {view.tasks[tasks[i]]}" for i in order]}
