"""The report's roles section: each named role with its evidence rows, and the heads critical for each task.

Drawn from :class:`~cortexmap.analysis.roles.Roles` (records.roles) and its findings:

* **Named roles.** One block per role of the catalogue, in catalogue order: its verdict, its
  ``role`` finding, and a table of evidence rows (statistic, what it is read on, value, 95% CI,
  the bar with its comparator and familywise bound, a small interval-vs-bar drawing, passed). For
  a named role the rows are :attr:`Roles.calls` of every named (head, task) unit; for a role no
  head passes, :attr:`Roles.closest` (the unit that came nearest); for a role not evaluated, the
  catalogue's rows (what it would need). The ``role_evidence`` sentences follow, collapsed.
* **Critical for a task.** Ablation harm alone names no mechanism: a head important for a task
  under every claim intervention is "critical for TASK". The ``critical`` findings are listed, and
  :attr:`Roles.critical` is one sortable, filterable table with each claim intervention's effect
  and interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.records import jsonable
from cortexmap.analysis.roles import bound_phrase
from cortexmap.heads import HeadId
from cortexmap.report.data import ReportData
from cortexmap.report.page import badge, card, esc, findings_list, level_tag, note, section, sentences, swatch, table
from cortexmap.report.theme import group_colors

MAX_UNITS = 12  # named (head, task) units whose rows a role's table shows
SYMBOL = {"critical": "critical", "helps": "helps", ">": "&gt;", "<": "&lt;", "outlier": "outlier &gt;"}


def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def evidence_bar(value: Any, low: Any, high: Any, bar: Any) -> str:
    """A small drawing of a value, its 95% interval and the bar it is held against (empty when unmeasured)."""
    v, lo, hi, b = (_finite(x) for x in (value, low, high, bar))
    if v is None:
        return ""
    points = [x for x in (v, lo, hi, b, 0.0) if x is not None]
    left, right = min(points), max(points)
    pad = 0.08 * (right - left or 1.0)
    left, right = left - pad, right + pad

    def pos(x: float) -> str:
        return f"{100 * (x - left) / (right - left):.1f}%"

    parts = []
    if lo is not None and hi is not None:
        parts.append(f'<span class="ci" style="left:{pos(lo)};width:{100 * (hi - lo) / (right - left):.1f}%"></span>')
    parts.append(f'<span class="val" style="left:{pos(v)}"></span>')
    if b is not None:
        parts.append(f'<span class="bar" style="left:{pos(b)}"></span>')
    title = f"value {num(v)} {ci(lo, hi)}; bar {num(b)}"
    return f'<span class="evbar" title="{esc(title)}">{"".join(parts)}</span>'


def _bar_text(r: dict) -> str:
    comparator = r.get("comparator")
    if comparator in ("critical", "helps"):
        return f"{SYMBOL[comparator]} (under every claim intervention)"
    bound = _finite(r.get("bound"))
    extra = "" if bound is None or comparator == "outlier" else "; " + bound_phrase(bound, int(r.get("m") or 0))
    return f"{SYMBOL.get(comparator, esc(comparator))} {num(r.get('bar'))}{extra}"


def evidence_table(rows: pd.DataFrame, catalogue: pd.DataFrame) -> str:
    """The evidence rows of a role's units: one table row per (unit, evidence row)."""
    described = {(r["role"], int(r["row"])): r["description"] for r in catalogue.to_dict("records")} if len(catalogue) else {}
    records = [jsonable(r) for r in rows.to_dict("records")]
    units = list(dict.fromkeys((r["head_id"], r.get("task")) for r in records))
    shown = set(units[:MAX_UNITS])
    out = []
    for r in records:
        if (r["head_id"], r.get("task")) not in shown:
            continue
        measured = r.get("value") is not None
        passed = ('<span class="pass">✓ passes</span>' if r.get("passed") else
                  '<span class="fail">✗ fails</span>' if measured else '<span class="muted">not measured</span>')
        if not r.get("required"):
            passed += ' <span class="muted">(shown, not required)</span>'
        what = described.get((r["role"], int(r["row"])), "")
        out.append([esc(r["head_id"]), esc(r.get("task") or r.get("on") or ""),
                    f'<span title="{esc(what)}">{esc(r["statistic"])}</span>', esc(num(r.get("value"))),
                    esc(ci(r.get("ci_low"), r.get("ci_high"))), _bar_text(r),
                    evidence_bar(r.get("value"), r.get("ci_low"), r.get("ci_high"), r.get("bar")), passed])
    more = (f'<p class="caption">{len(units) - MAX_UNITS} more named (head, task) units are listed in atlas.json.</p>'
            if len(units) > MAX_UNITS else "")
    return table(["head", "on", "statistic", "value", "95% CI", "bar", "interval vs bar", "passed"], out,
                 raw=tuple(range(8))) + more


def _required(catalogue: pd.DataFrame, role: str) -> str:
    rows = catalogue[catalogue["role"] == role] if len(catalogue) else catalogue
    out = [[r["statistic"], r["on"], f"{r['comparator']} {num(r['bar'])}", r["description"],
            "yes" if r["required"] else "no"] for r in rows.to_dict("records")]
    return (f"<details><summary>The evidence it needs ({len(out)} rows)</summary>"
            + table(["statistic", "on", "bar", "what it shows", "required"], out) + "</details>") if out else ""


def _role_block(status: dict, records: Any, found: list[Finding]) -> str:
    role = status["role"]
    headline = [f for f in found if f.kind == "role" and f.subject == role]
    evidence = [f for f in found if f.kind == "role_evidence" and f.subject == role]
    if status["verdict"] == "passes":
        rows = records.calls[records.calls["role"] == role]
    elif status["verdict"] == "no head passes" and len(records.closest):
        rows = records.closest[records.closest["role"] == role]
    else:
        rows = records.calls.iloc[0:0]
    body = evidence_table(rows, records.catalogue) if len(rows) else _required(records.catalogue, role)
    return (f'<div class="role" id="role-{esc(role)}"><h4>{esc(role)} {badge(status["verdict"])}</h4>'
            f"{findings_list(headline)}{body}{sentences(evidence, 'Evidence rows as sentences')}"
            f'<p class="caption">Source: {esc(status.get("source", ""))}.</p></div>')


def _status_table(records: Any) -> str:
    rows = [[f'<a href="#role-{esc(s["role"])}">{esc(s["role"])}</a>', badge(s["verdict"]), esc(s["n_named"]),
             esc(s["n_units"]), esc(s.get("reason") or "")] for s in records.status.to_dict("records")]
    return table(["role", "verdict", "heads named", "units tested", "reason"], rows, raw=(0, 1, 2, 3, 4))


def _critical_table(data: ReportData) -> str:
    roles = data.records.roles
    crit = roles.critical
    if crit is None or not len(crit):
        return note("No head is critical for any task (harm under every claim intervention).")
    ivs = list(roles.interventions)
    colors = group_colors(data.atlas["group"].tolist())
    group_of = data.atlas.set_index("head_id")["group"].to_dict()
    rows = []
    for r in (jsonable(x) for x in crit.to_dict("records")):
        color = colors.get(int(group_of.get(r["head_id"], 0)), "#ccc")
        head = HeadId.parse(r["head_id"])
        cells: list[Any] = [(f"{swatch(color)}{esc(r['head_id'])}", head.layer * 10_000 + head.head), r["task"],
                            (level_tag(r["level"]), r["level"])]
        for iv in ivs:
            effect = r.get(f"effect_{iv}")
            cells.append((f"{num(effect)} {ci(r.get(f'ci_low_{iv}'), r.get(f'ci_high_{iv}'))}",
                          effect if effect is not None else ""))
        rows.append(cells)
    html = table(["head", "task", "level"] + [f"{iv} effect / |clean| [95% CI]" for iv in ivs], rows, sortable=True,
                 raw=(0, 2))
    return ('<input class="filter" data-table="critical-table" placeholder="filter heads, tasks, levels…">'
            '<div class="scroll">' + html.replace('<table class="', '<table id="critical-table" class="', 1) + "</div>")


def roles_section(data: ReportData, routed: dict[str, list[Finding]]) -> str:
    """Named roles with their evidence rows, then the heads critical for each task (module docstring)."""
    records = data.records.roles
    found = routed.get("roles", [])
    blocks = "".join(_role_block(s, records, found) for s in records.status.to_dict("records"))
    named = card(f"<p>{esc(_naming_rule(records))}</p>" + _status_table(records) + blocks, "Named roles")
    critical = [f for f in found if f.kind == "critical"]
    crit = card(f"<p>Ablation harm alone names no mechanism: a head important for a task under every claim "
                f"intervention ({esc(' and '.join(records.interventions))}) is <b>critical for</b> that task, and "
                "nothing more.</p>" + findings_list(critical) + _critical_table(data), "Critical for a task")
    return section("roles", "Roles", "A mechanistic name only with the evidence its literature defines; click a "
                   "column of the critical table to sort it.", named + crit)


def _naming_rule(records: Any) -> str:
    return (f"A head gets a role's name only when it passes every required evidence row of the role (attention from "
            f"the decision position, what its OV circuit writes, a counterfactual effect, as the role's literature "
            f"defines them); interval bars use familywise bounds at level {num(records.alpha)} over every test that "
            "could name a head. The probe-attention bar is an outlier bar over the same heads, not a random baseline.")
