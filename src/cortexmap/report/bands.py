"""The report's level section: the depth-order test, level depths and layer bands, drawn from their records.

Every number comes from a field of :class:`~cortexmap.analysis.levels.DepthOrder`,
:class:`~cortexmap.analysis.levels.LevelDepths` or :class:`~cortexmap.analysis.levels.LayerBands`
(tasks are the unit of every level claim: intervals resample tasks within levels, nulls permute
level labels across tasks). The headline findings are shown as sentences; the details
(``depth_step``, ``level_depth``, ``band``) as tables, their sentences collapsed below.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.levels import DepthOrder
from cortexmap.analysis.records import jsonable
from cortexmap.report.data import ReportData
from cortexmap.report.page import badge, card, esc, figure, findings_list, level_tag, section, sentences, table


def p_text(p: Any, n_perm: int) -> str:
    """``p = x`` with its permutation count; ``p < 1/(n + 1)`` at the smallest p ``n`` permutations allow."""
    if p is None or not np.isfinite(p):
        return "p = n/a"
    floor = 1.0 / (1 + n_perm) if n_perm else 0.0
    return f"p &lt; {num(floor * 1.0001, 4)}" if n_perm and p <= floor * (1 + 1e-9) else f"p = {num(p, 4)}"


def _power(d: DepthOrder) -> str:
    if d.detectable_step is None:
        return (f"no shift up to 0.5 relative depth per ordinal step reaches {num(100 * d.power, 0)}% power on this "
                "battery: a negative verdict rules out little")
    return (f"detects a shift of {num(d.detectable_step)} relative depth per ordinal step with "
            f"{num(100 * d.power, 0)}% power (this battery's tasks, permuted as the test permutes them)")


def _verdict(d: DepthOrder) -> str:
    if d.verdict == "not evaluated":
        nums = esc(d.note)
    else:
        nums = (f"Spearman ρ over {d.n_evaluated} of {d.n_tasks} tasks = <b>{num(d.rho)}</b> {ci(d.ci_low, d.ci_high)} "
                f"(tasks resampled within levels) · level labels permuted across tasks: null mean {num(d.null_mean)} "
                f"(95th pct {num(d.null_p95)}), <b>{p_text(d.p_value, d.n_perm)}</b> ({d.n_perm} permutations) · "
                f"power: {esc(_power(d))}")
    return (f'<div class="verdict"><div>{badge(d.verdict)}<div class="what">{esc(d.hypothesis)}</div>'
            f'<div class="nums">{nums}</div></div></div>')


def _rows(frame: Any) -> list[dict]:
    return [] if frame is None or not len(frame) else [jsonable(r) for r in frame.to_dict("records")]


def _steps(data: ReportData) -> str:
    rows = [[f"{r['levels_from']} → {r['levels_to']}", f"{r['from']} → {r['to']}",
             f"{num(r['diff'])} {ci(r['ci_low'], r['ci_high'])}"] for r in _rows(data.records.depth_order.steps)]
    if not rows:
        return ""
    return ("<h4>Steps of the order</h4>" + table(["levels", "ordinal", "depth difference [95% CI] (0 = same depth)"],
                                                   rows))


def _level_depths(data: ReportData) -> str:
    ld = data.records.level_depths
    rows = []
    for r in _rows(ld.table):
        depth = f"{num(r['mean_depth'])} {ci(r['ci_low'], r['ci_high'])}" if r["n_evaluated"] else "not evaluated"
        contrast = (f"{num(r['diff'])} {ci(r['diff_ci_low'], r['diff_ci_high'])}" if r["p_value"] is not None
                    else "no other level")
        rows.append([level_tag(r["level"]), "—" if r["ordinal"] is None else r["ordinal"],
                     f"{r['n_evaluated']} / {r['n_tasks']}", r["n_important"], depth, contrast,
                     p_text(r["p_value"], ld.n_perm), num(r["q_value"], 3)])
    if not rows:
        return ""
    return ("<h4>Level depths</h4>" + table(["level", "ordinal", "tasks evaluated", "important cells",
                                             "mean task depth [95% CI]", "vs other levels' tasks [95% CI]",
                                             "p (task permutation)", "q (BH)"], rows, raw=(0, 6)))


def _bands(data: ReportData) -> str:
    b = data.records.bands
    rows = []
    for r in _rows(b.bands):
        enrichment = ("no important heads" if r["dominant_level"] is None else
                      f"×{num(r['enrichment'], 1)} {ci(r['enrichment_ci_low'], r['enrichment_ci_high'], 1)}")
        rows.append([f"L{r['layer_start']}–L{r['layer_end']}", f"{num(r['depth_start'])}–{num(r['depth_end'])}",
                     level_tag(r["dominant_level"]), enrichment, num(r["n_important"], 1)])
    if b.verdict == "not evaluated":
        head = f"<p>{badge(b.verdict)} {esc(b.note)}</p>"
    else:
        head = (f"<p>{badge(b.verdict)} {b.n_bands} band(s); BIC gain over one band {num(b.gain, 1)} vs "
                f"{num(b.null_mean, 1)} with level labels permuted across tasks, {p_text(b.p_value, b.n_perm)} "
                f"({b.n_perm} permutations).</p>")
    return "<h4>Layer bands</h4>" + head + (table(["layers", "relative depth", "dominant level",
                                                    "enrichment [95% CI] (1 = none)", "important cells"], rows,
                                                   raw=(2,)) if rows else "")


def bands_section(data: ReportData, routed: dict[str, list[Finding]]) -> str:
    """The depth-order verdict with its power, steps, level depths, layer bands and the importance-over-depth figure."""
    shown = routed.get("bands", [])
    headlines = [f for f in shown if f.parent is None]
    details = [f for f in shown if f.parent is not None]
    body = card(_verdict(data.records.depth_order) + findings_list(headlines) + _steps(data) + _level_depths(data)
                + _bands(data) + sentences(details), "Depth-order hypothesis")
    body += card(figure("bands", "Top: each level's mean task depth with its 95% interval (tasks resampled within "
                        "levels; dotted: the middle of the model). Middle: layer bands from the BIC segmentation with "
                        "their dominant level and its enrichment (hover: 95% interval, boundaries held fixed). Bottom: "
                        "share of each level's importance per layer (mean over its tasks), from cells important under "
                        "every claim intervention."), "Importance over depth")
    return section("bands", "Layer bands", "Do lexical tasks live early and reasoning late? Tasks are the unit: "
                   "a level is known only through its handful of tasks.", body)
