"""The atlas: every analysis of one model's run, as one per-head table and one record of typed results.

:func:`build_atlas` builds the run's :class:`~cortexmap.analysis.view.RunView` once (the claim's
counterfactual interventions, the importance mask, the paired prompt bootstrap) and calls each
analysis on it; each returns a frozen record with its own ``findings()``:

=====================  ==============================================================
record                 module
=====================  ==============================================================
agreement              :mod:`cortexmap.analysis.agreement` (interventions agree?)
depth_order            :mod:`cortexmap.analysis.levels` (tasks as the unit)
level_depths           :mod:`cortexmap.analysis.levels`
bands                  :mod:`cortexmap.analysis.levels`
groups                 :mod:`cortexmap.analysis.groups`
roles                  :mod:`cortexmap.analysis.roles` (names only with their evidence)
specialization         :mod:`cortexmap.analysis.specialization`
adaptivity             :mod:`cortexmap.analysis.adaptivity` (a task's own depth)
regulators             :mod:`cortexmap.analysis.regulators`
regulation             :mod:`cortexmap.analysis.regulation`
redundancy             :mod:`cortexmap.analysis.redundancy`
errors                 :mod:`cortexmap.analysis.mistakes` (why the model errs)
=====================  ==============================================================

:class:`AtlasRecords` holds them with the screen's audit and the notes; ``atlas.json`` is its
:func:`~cortexmap.analysis.records.to_dict` plus the findings' records (``finding_list``), and
:meth:`AtlasRecords.from_dict` reads it back, so neither the report nor the CLI reads a key of a
nested dict. :meth:`AtlasRecords.findings` lists every finding in the order the CLI prints them.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from cortexmap.analysis.adaptivity import Adaptivity, task_adaptivity
from cortexmap.analysis.agreement import Agreement, intervention_agreement
from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.groups import Groups, functional_groups
from cortexmap.analysis.levels import DepthOrder, LayerBands, LevelDepths, depth_order, layer_bands, level_depths, task_depths
from cortexmap.analysis.mistakes import Errors, error_analysis
from cortexmap.analysis.profiles import probe_matrix
from cortexmap.analysis.records import from_dict, to_dict
from cortexmap.analysis.redundancy import Redundancy, pair_redundancy
from cortexmap.analysis.regulation import Regulation, regulation_analysis
from cortexmap.analysis.regulators import Regulators, regulator_analysis
from cortexmap.analysis.roles import Roles, roles
from cortexmap.analysis.selection import Z95, importance_of
from cortexmap.analysis.specialization import Specialization, specialization
from cortexmap.analysis.view import RunView, build_view, view_of_run
from cortexmap.errors import ResultsError

ATLAS_COLUMNS = ("head_id", "layer", "head", "rel_depth", "group", "group_name", "dominant_level", "top_task",
                 "top_effect", "top_ci_low", "top_ci_high", "top_significant", "roles", "critical_for",
                 "specialization", "regulator_score")


@dataclass(frozen=True)
class AtlasOptions:
    """How :func:`build_atlas` reads the run and sizes its statistics.

    Attributes:
        interventions: the claim's interventions (None: the run's counterfactual ones; zero
            ablation only when the run has nothing else, and every finding then says so).
        method: ``"exact"``, ``"screen"`` or ``"attribution"`` rows (None: exact when present).
        n_boot: bootstrap replicates of every interval.
        n_perm: permutations of each null.
        seed: random seed; every analysis derives its own from it.
    """

    interventions: tuple[str, ...] | None = None
    method: str | None = None
    n_boot: int = 500
    n_perm: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class AtlasRecords:
    """Every analysis record of one atlas (module docstring), with the audit and the notes."""

    model: str
    n_layers: int
    n_heads: int
    interventions: tuple[str, ...]
    method: str
    counterfactual: bool
    claim: str
    agreement: Agreement
    depth_order: DepthOrder
    level_depths: LevelDepths
    bands: LayerBands
    groups: Groups
    roles: Roles
    specialization: Specialization
    adaptivity: Adaptivity
    regulators: Regulators
    regulation: Regulation
    redundancy: Redundancy
    errors: Errors
    audit: dict | None = None
    not_evaluated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: every record's fields, plus ``finding_list`` (every finding's record)."""
        return {**to_dict(self), "finding_list": [f.to_dict() for f in self.findings()]}

    @classmethod
    def from_dict(cls, data: dict) -> AtlasRecords:
        return from_dict(cls, data)

    def findings(self) -> list[Finding]:
        """Every finding, in the order the CLI prints them (details after their headline)."""
        out = _audit_findings(self.audit)
        out += self.agreement.findings()
        out += self.depth_order.findings() + self.level_depths.findings()
        out += self.bands.findings() + self.groups.findings() + self.roles.findings()
        out += self.specialization.findings() + self.adaptivity.findings()
        out += self.regulators.findings() + self.regulation.findings()
        out += self.redundancy.findings() + self.errors.findings()
        out += [Finding(kind="not_evaluated", verdict="not evaluated", text=f"Not evaluated: {note}.")
                for note in self.not_evaluated]
        out += [Finding(kind="note", text=f"Note: {note}.") for note in self.notes]
        return out


def summarize_findings(records: AtlasRecords) -> list[str]:
    """The printable lines of :meth:`AtlasRecords.findings`: each text, details indented by two spaces."""
    return [f"  {f.text}" if f.parent else f.text for f in records.findings()]


def list_findings(records: AtlasRecords) -> list[Finding]:
    """:meth:`AtlasRecords.findings`."""
    return records.findings()


class Atlas(NamedTuple):
    """The atlas of one model: a row per head (``table``) and the analyses' ``records``.

    Unpacks as ``table, records = build_atlas(...)``; in Jupyter it displays its findings.
    """

    table: pd.DataFrame
    records: AtlasRecords

    def _repr_html_(self) -> str:
        items = "".join(f"<li style='margin-left:{2 if f.parent else 0}em'>{html.escape(f.text)}</li>"
                        for f in self.records.findings())
        return f"<div><b>cortexmap atlas: {len(self.table)} heads</b><ul>{items}</ul></div>"


def _audit_findings(audit: dict | None) -> list[Finding]:
    if not audit or audit.get("rate") is None:
        return []
    out = []
    parts = audit.get("by_intervention") or {"": audit}
    for label, a in parts.items():
        if a.get("rate") is None:
            continue
        which = f" under {label}" if label else ""
        text = (f"Screen audit{which}: {a['important']} of {a['audited']} unverified heads drawn at random were active "
                f"(|effect| >= 5% of clean and |z| >= 3): miss rate {num(a['rate'], 3)} "
                f"{ci(a['ci_low'], a['ci_high'], 3)} (Clopper-Pearson), i.e. about {num(a['missed_estimate'], 0)} "
                f"{ci(a['missed_ci_low'], a['missed_ci_high'], 0)} such head-task cells among {a['unverified']} "
                "unverified; the atlas counts them as having no effect.")
        stats = {"important": a["important"], "audited": a["audited"], "unverified": a["unverified"],
                 "missed_estimate": a["missed_estimate"], "missed_estimate_ci_low": a["missed_ci_low"],
                 "missed_estimate_ci_high": a["missed_ci_high"], "intervention": label or None}
        out.append(Finding(kind="audit", subject=label or None, text=text, effect=a["rate"], ci_low=a["ci_low"],
                           ci_high=a["ci_high"], method="exact", stats=stats))
    return out


def head_table(view: RunView, groups: Groups, role_record: Roles, spec: Specialization,
               regulators: Regulators) -> pd.DataFrame:
    """One row per head (:data:`ATLAS_COLUMNS` plus ``probe:<probe>`` columns).

    ``top_task`` is the task with the largest mean harm over the claim interventions; ``top_effect``
    and its interval are the primary intervention's there; ``top_significant`` says whether the head
    is important for it (under every claim intervention); ``dominant_level`` is the level of largest
    mean harm among the head's important tasks.
    """
    harm = np.nanmean(np.stack([importance_of(view.arrays[iv].effect) for iv in view.interventions]), axis=0)
    top = harm.argmax(axis=1)
    rows = np.arange(len(top))
    has = harm.max(axis=1) > 0
    primary = view.arrays[view.primary]
    effect = primary.effect[rows, top]
    half = Z95 * primary.se[rows, top]
    levels = sorted(set(view.levels))
    important = view.important
    by_level = np.stack([np.where(important, harm, 0.0)[:, [j for j, lev in enumerate(view.levels) if lev == level]].mean(axis=1)
                         for level in levels], axis=1)
    out = groups.assignments.set_index("head_id")[["layer", "head", "rel_depth", "group", "group_name"]].copy()
    out["dominant_level"] = [levels[i] if any_ else None for i, any_ in zip(by_level.argmax(axis=1), important.any(axis=1))]
    out["top_task"] = [view.tasks[j] if h else None for j, h in zip(top, has)]
    out["top_effect"] = np.where(has, effect, np.nan)
    out["top_ci_low"] = np.where(has, effect - half, np.nan)
    out["top_ci_high"] = np.where(has, effect + half, np.nan)
    out["top_significant"] = has & important[rows, top]
    names = role_record.by_head().set_index("head_id")
    out["roles"] = names["roles"].reindex(out.index).fillna("") if len(names) else ""
    out["critical_for"] = names["critical_for"].reindex(out.index).fillna("") if len(names) else ""
    out["specialization"] = spec.heads.set_index("head_id")["specialization"].reindex(out.index)
    out["regulator_score"] = np.nan
    if regulators.scores is not None and len(regulators.scores):
        out["regulator_score"] = regulators.scores.set_index("head_id")["score"].reindex(out.index)
    table = out.reset_index().loc[:, list(ATLAS_COLUMNS)]
    probes = probe_matrix(view.table("patterns"), view.n_layers, view.n_heads).reset_index(drop=True)
    return pd.concat([table, probes], axis=1)


def atlas_of_view(view: RunView, *, effects: pd.DataFrame | None = None, n_perm: int = 2000) -> Atlas:
    """Run every analysis on a view (module docstring)."""
    td = task_depths(view)
    notes = [f"{view.rule.describe()} under each claim intervention"]  # the claim itself is AtlasRecords.claim
    if (view.tables.get("patterns") is None or not len(view.tables.get("patterns"))):
        notes.append("no probe table: probe roles not evaluated")
    screened = [iv for iv in view.interventions if "screened_out" in view.selected[iv]
                and view.selected[iv]["screened_out"].any()]
    if screened:
        measured = view.selected[screened[0]]
        counts = measured.loc[~measured["screened_out"]].groupby("task").size()
        notes.append(f"exact rows cover {counts.min()}-{counts.max()} heads per task (verified jointly under "
                     f"{' and '.join(view.interventions)} in screen order, plus the audit sample); every other head was "
                     "screened out below the bar and counts as having no effect")
    if view.table("prompt_effects") is None:
        notes.append("no per-prompt effects: intervals use the normal approximation of each reported 95% interval")
    seed = view.seed
    regulators = regulator_analysis(view)
    redundancy = pair_redundancy(view)
    errors = error_analysis(view, flips=view.table("flips"), n_boot=view.n_boot, n_perm=n_perm, seed=seed)
    not_evaluated: list[str] = []  # each record states its own "not evaluated"
    groups = functional_groups(view, n_boot=min(view.n_boot, 100), n_null=50)
    role_record = roles(view)
    spec = specialization(view)
    records = AtlasRecords(
        model=view.model, n_layers=view.n_layers, n_heads=view.n_heads, interventions=tuple(view.interventions),
        method=view.method, counterfactual=view.counterfactual, claim=view.describe(),
        agreement=intervention_agreement(view, effects),
        depth_order=depth_order(view, td=td, n_perm=n_perm), level_depths=level_depths(view, td=td, n_perm=n_perm),
        bands=layer_bands(view, td=td, n_perm=min(n_perm, 1000)), groups=groups, roles=role_record,
        specialization=spec, adaptivity=task_adaptivity(view, td=td, n_perm=n_perm), regulators=regulators,
        regulation=regulation_analysis(view), redundancy=redundancy, errors=errors, audit=view.audit,
        not_evaluated=not_evaluated, notes=notes + list(errors.notes))
    return Atlas(head_table(view, groups, role_record, spec, regulators), records)


def build_atlas(run: Any, *, shape: tuple[int, int] | None = None, tables: dict[str, pd.DataFrame | None] | None = None,
                audit: dict | None = None, options: AtlasOptions | None = None) -> Atlas:
    """Run every analysis on one model's results.

    Args:
        run: a loaded run (:func:`~cortexmap.results.load_results`), which supplies the shape and every
            stored table (``cortexmap analyze`` calls it so), or an effects table of one model
            (docs/schema.md) with ``shape`` and any other tables given in ``tables``.
        shape: ``(n_layers, n_heads)`` of the model, with an effects table.
        tables: the run's other tables by name (``patterns``, ``prompt_effects``, ``evidence``,
            ``influence``, ``pairs``, ``flips``, ``circuit_prompts``, ``regulation``); with a loaded
            run, a table given here replaces the run's.
        audit: the screen's pooled audit (manifest ``audit``), with an effects table.
        options: the claim's interventions and the sizes of the statistics (:class:`AtlasOptions`).

    Returns:
        An :class:`Atlas`: the per-head table and the :class:`AtlasRecords`.

    Raises:
        ResultsError: an effects table without ``shape``.
    """
    opts = options or AtlasOptions()
    kw = {"interventions": opts.interventions, "method": opts.method, "n_boot": opts.n_boot, "seed": opts.seed}
    if isinstance(run, pd.DataFrame):
        if shape is None:
            raise ResultsError("build_atlas needs shape=(n_layers, n_heads) with an effects table: pass the "
                               "manifest's shape, or pass the loaded run")
        view = build_view(run, shape, tables=tables, audit=audit, **kw)
        effects = run
    else:
        view = view_of_run(run, **kw)
        if tables:
            view = build_view(run.effects, run.shape, tables={**view.tables, **tables}, audit=view.audit, **kw)
        effects = run.effects
    return atlas_of_view(view, effects=effects, n_perm=opts.n_perm)
