"""The report's sections, each an HTML fragment built from the loaded run's records and its figures.

Section anchors (the nav links to them): ``summary``, ``map``, ``findings``, ``effects``, ``bands``
(:mod:`cortexmap.report.bands`), ``roles`` (:mod:`cortexmap.report.roles`), ``regulators``,
``circuits`` (:mod:`cortexmap.report.circuits`), ``compare``, ``prune``, ``manifest``. The overview
opens with what the atlas measured (:mod:`cortexmap.report.measure`). A section whose input was not
measured says so and shows the command that would measure it, instead of disappearing. Every
number is read from a field of the typed atlas records (:class:`~cortexmap.analysis.atlas.AtlasRecords`)
or of a :class:`~cortexmap.analysis.findings.Finding`, and every sentence is a finding's text,
placed by its ``kind`` (:func:`~cortexmap.report.page.route_findings`); no section reads a key of a
nested dict.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cortexmap.analysis.compare import Conservation
from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.records import jsonable
from cortexmap.report.data import ReportData
from cortexmap.report.maps import ROLE_CODES
from cortexmap.report.measure import measurement_block
from cortexmap.report.page import (
    card,
    esc,
    figure,
    findings_list,
    key_values,
    level_tag,
    note,
    seconds,
    section,
    stat,
    swatch,
    table,
)
from cortexmap.report.theme import group_colors

SECTIONS = (("summary", "Overview"), ("map", "Cortex map"), ("findings", "Findings"), ("effects", "Effects"),
            ("bands", "Layer bands"), ("roles", "Roles"), ("regulators", "Regulators"), ("circuits", "Circuits"),
            ("compare", "Cross-model"), ("prune", "Pruning"), ("manifest", "Run"))


def _tone(p_value: Any, alpha: float = 0.05) -> str:
    return "" if p_value is None or not np.isfinite(p_value) else ("good" if p_value < alpha else "bad")


def _first(findings: list[Finding], kind: str) -> Finding | None:
    return next((f for f in findings if f.kind == kind), None)


def summary_section(data: ReportData, routed: dict[str, list[Finding]]) -> str:
    """What the atlas measured (:mod:`cortexmap.report.measure`), then headline numbers from the records' fields."""
    r = data.records
    n_heads = r.n_layers * r.n_heads
    n_active = n_heads - int(r.groups.n_inert)
    roles, crit = r.roles, r.roles.critical
    n_named = int(roles.calls["head_id"].nunique()) if len(roles.calls) else 0
    n_passing = int((roles.status["verdict"] == "passes").sum()) if len(roles.status) else 0
    n_evaluated = int((roles.status["verdict"] != "not evaluated").sum()) if len(roles.status) else 0
    n_critical = int(crit["head_id"].nunique()) if crit is not None and len(crit) else 0
    n_tasks = int(crit["task"].nunique()) if crit is not None and len(crit) else 0
    ivs = " and ".join(r.interventions)
    stats = [stat("active heads", f"{n_active} / {n_heads}", "some task |effect| ≥ 5% of clean with |z| ≥ 3 under some "
                  "claim intervention"),
             stat("critical heads", str(n_critical), f"each important for some task under every claim intervention "
                  f"({ivs}); {n_tasks} tasks have one")]
    a = r.agreement
    if len(a.interventions) > 1:
        stats.append(stat("intervention agreement", num(a.jaccard), f"Jaccard (all / any) {ci(a.jaccard_ci_low, a.jaccard_ci_high)}: "
                          f"{a.n_all} cells important under each, {a.n_any} under any",
                          "good" if a.n_any == a.n_all else "bad"))
    findings = data.records.findings()
    groups = _first(findings, "groups")
    if groups is not None and groups.verdict != "not evaluated":
        stats.append(stat("functional groups", f"{r.groups.k} groups", f"{groups.verdict}: silhouette "
                          f"{num(groups.effect)} vs {groups.baseline_label or 'null'} {num(groups.baseline)}, "
                          f"p = {num(groups.p_value, 3)}", _tone(groups.p_value)))
    depth = _first(findings, "depth_order")
    if depth is not None:
        detail = (str(depth.stats.get("note", "")) if depth.verdict == "not evaluated" else
                  f"ρ = {num(depth.effect)} {ci(depth.ci_low, depth.ci_high)} over {depth.stats.get('n_evaluated')} "
                  f"tasks, p = {num(depth.p_value, 4)}")
        stats.append(stat("depth order", depth.verdict or "", detail, _tone(depth.p_value)))
    stats.append(stat("heads with a name", str(n_named), f"{n_passing} of {n_evaluated} evaluated roles name a head "
                      f"({len(roles.status)} in the catalogue), each on its evidence rows"))
    spec = _first(findings, "specialization")
    if spec is not None:
        against = (f" vs {spec.baseline_label} {num(spec.baseline)}" if spec.baseline_label else "")
        tested = f", p = {num(spec.p_value, 3)}" if spec.p_value is not None else ""
        stats.append(stat("specialization", num(spec.effect), f"{ci(spec.ci_low, spec.ci_high)}{against}{tested}",
                          _tone(spec.p_value)))
    present = sorted(map(str, data.results.effects["intervention"].unique()))
    body = measurement_block(r, routed, present=present) + f'<div class="stats">{"".join(stats)}</div>'
    return section("summary", "Overview", "The model's attention heads, mapped by intervening on each one. Hover any "
                   "figure for the numbers behind it.", body)


def findings_section(routed: dict[str, list[Finding]]) -> str:
    """Every headline finding line (details indented under theirs), and what was not evaluated."""
    caveats = routed.get("caveats", [])
    more = (f"<details><summary>Not evaluated and analysis settings ({len(caveats)})</summary>"
            f"{findings_list(caveats, 'findings small')}</details>") if caveats else ""
    return section("findings", "Findings", "Each finding with its effect size, 95% interval and baseline or p-value; "
                   "the sections below hold the details.", card(findings_list(routed.get("overview", [])) + more))


def map_section(data: ReportData, routed: dict[str, list[Finding]]) -> str:
    """The cortex map and the functional groups table."""
    groups = data.records.groups.groups
    colors = group_colors(groups["group"].tolist()) if len(groups) else {}
    rows = [[f"{swatch(colors.get(int(g['group']), '#ccc'))}{esc(g['group_name'])}", g["size"],
             level_tag(g["dominant_level"]), ", ".join(g["top_tasks"] or []), num(g["mean_abs_effect"], 3),
             num(g["mean_depth"])] for g in (jsonable(x) for x in groups.to_dict("records"))]
    codes = ", ".join(f"{code} {role.replace('_', ' ')}" for role, code in ROLE_CODES.items())
    caption = ("Each cell is one head (layer → right, head ↓). Colour: functional group (clusters of active heads' effect "
               "profiles over every claim intervention; grey = inert) or, with the buttons, the level whose tasks the "
               f"head matters most for. Letters name roles passed on their evidence ({codes}); • marks a head critical "
               "for some task with no mechanism named.")
    body = card(figure("cortex_map", caption))
    body += card(table(["group", "heads", "dominant level", "top tasks", "mean |effect|", "mean depth"], rows, raw=(0, 2))
                 + findings_list(routed.get("map", [])), "Functional groups")
    return section("map", "Cortex map", "What every attention head does, at a glance.", body)


def effects_section(data: ReportData, views: list[tuple[str, str, dict]]) -> str:
    """One heatmap per intervention (task dropdown), claim interventions first, and the task x head matrix.

    Args:
        data: the loaded run.
        views: ``(figure name, title, select_effects keyword arguments)`` of each drawn heatmap
            (:func:`cortexmap.report.render.effect_views`).
    """
    claim = set(data.records.interventions)
    body = ""
    for name, title, selection in views:
        iv = selection["intervention"]
        on_claim = iv in claim and selection["method"] == data.records.method
        why = ("a claim intervention" if on_claim else
               "zero ablation: off-distribution, shown for comparison, not evidence" if iv == "zero" else
               "not a claim intervention: shown for comparison, not evidence")
        body += card(figure(name, f"{why}. Effect of the intervention on the task's metric (the logit difference; "
                            "its log-probability or probability form for multi-token answers and answer sets), as a "
                            "fraction of the clean value (red: the head is needed; blue: removing it helps; blank: not measured "
                            "this way); • important under this intervention (effect ≤ −5% of clean, z ≤ −3). Choose "
                            "the task in the menu; colour range per task."), title)
    body += card(figure("task_head_matrix", f"Effects under {data.records.interventions[0]} (the first claim "
                        "intervention). Rows: tasks (coloured square = level); columns: active heads ordered by "
                        "functional group (strip on top), then depth."), "Task × head matrix")
    return section("effects", "Effects", "Per-task, per-intervention effects of every head.", body)


def regulators_section(data: ReportData, routed: dict[str, list[Finding]], present: set[str]) -> str:
    """Regulator-head graph, scores and condition contrasts, the edge tests, or how to measure them."""
    regulators, regulation = data.records.regulators, data.records.regulation
    if regulators.scores is None and not regulation.tests:
        body = note(f"Regulator heads were not measured for this run ({esc(regulators.note or 'no influence table')}).",
                    f"cortexmap analyze {data.results.root} --regulators")
        return section("regulators", "Regulators", "Heads that modulate many later heads.", body)
    parts = [card(findings_list(routed.get("regulators", [])) or "<p class='muted'>No regulator statement.</p>",
                  "Findings")]
    if "regulator_graph" in present:
        parts.append(card(figure("regulator_graph", "The strongest head-to-head influences (mean relative change of the "
                                 "target head's output when the source is ablated); edges run to later layers, thicker = "
                                 "stronger; node size = regulator score, colour = functional group."),
                          "Influence graph"))
    grid = []
    if "regulator_scores" in present:
        grid.append(card(figure("regulator_scores", "Score = breadth × strength with 95% bootstrap CI; coloured = "
                                "candidate (within-layer rank p below the bar and CI above the 95th percentile of the "
                                "other heads of its layer, the tick on each bar)."), "Top regulators"))
    if "contrasts" in present:
        grid.append(card(figure("contrasts", "Score difference between conditions with 95% CI; filled = q &lt; 0.05 "
                                "(permutation test, Benjamini-Hochberg)."), "Condition contrasts"))
    if grid:
        parts.append(f'<div class="grid2">{"".join(grid)}</div>')
    return section("regulators", "Regulators", "Heads that modulate many later heads, each compared with the heads of "
                   "its own layer.", "".join(parts))


def _matches(record: Conservation, n: int = 10) -> str:
    rows = [[m["head_a"], m["head_b"], num(m["similarity"], 3), num(m["correlation"]), num(m["rel_depth_a"]),
             num(m["rel_depth_b"])] for m in (jsonable(x) for x in record.matches.head(n).to_dict("records"))]
    return table([f"head in {record.model_a}", f"head in {record.model_b}", "covariance", "correlation",
                  "depth A", "depth B"], rows) if rows else ""


def compare_section(data: ReportData, names: list[str]) -> str:
    """One panel per compared run: conservation against its null, depth correspondence, best matches."""
    if not data.comparisons:
        body = note("No other model was compared with this run.",
                    f"cortexmap report {data.results.root} --compare OTHER_RUN")
        return section("compare", "Cross-model", "Are head functions conserved across models?", body)
    parts = []
    for comp, name in zip(data.comparisons, names):
        title = f"{comp.model_a} vs {comp.model_b}"
        r = comp.record
        if r is None:
            parts.append(card(note(f"Not compared: {esc(comp.error)}"), title))
            continue
        depth = (f"Spearman ρ {ci(r.depth_ci_low, r.depth_ci_high)} over {r.n_depth_pairs} pairs correlating ≥ "
                 f"{num(r.min_similarity)}" if r.depth_rho is not None else
                 f"not evaluated: {r.n_depth_pairs} pairs correlate ≥ {num(r.min_similarity)}")
        stats = [stat("conservation", num(r.conservation, 3), f"{r.verdict}: mean covariance of {r.n_pairs} matched "
                      f"heads' centred z-profiles vs {num(r.null_mean, 3)} with B's heads permuted within each task "
                      f"(95th pct {num(r.null_p95, 3)}), p = {num(r.p_value, 4)} ({r.n_perm} permutations)",
                      _tone(r.p_value)),
                 stat("depth correspondence", num(r.depth_rho), depth),
                 stat("shared columns", str(r.n_columns), f"{r.n_tasks} tasks × {' and '.join(r.interventions)}; "
                      f"{'active' if r.active_only else 'all'} heads matched one-to-one")]
        parts.append(card(f'<div class="stats">{"".join(stats)}</div>' + findings_list(r.findings())
                          + figure(name, "Left: relative depth of matched heads, coloured by the correlation of their "
                                         "centred z-profiles. Right: that correlation over matched pairs (in [−1, 1]; "
                                         "the conservation score above is the covariance, which weighs a head by how "
                                         "far its profile departs from flat).") + _matches(r), title))
    return section("compare", "Cross-model", "Heads matched one-to-one by the similarity of their effect profiles, "
                   "each task column z-scored within its model.", "".join(parts))


def prune_section(data: ReportData, present: set[str]) -> str:
    """The pruning curve, or how to compute one."""
    if "pruning" not in present:
        body = note("No pruning curve was found in this run directory.",
                    f"cortexmap prune --model {data.model_name} --run {data.results.root} "
                    f"--out {data.results.root / 'prune'}")
    else:
        body = card(figure("pruning", "Held-out loss change (%) against the fraction of query heads physically pruned; "
                           "solid = zero replacement, dashed = mean replacement, dotted = healed."))
    return section("prune", "Pruning", "How much of the attention can go before the model notices?", body)


def _atlas_rows(data: ReportData) -> list[tuple[str, Any]]:
    r = data.records
    rows: list[tuple[str, Any]] = [("claim interventions", list(r.interventions)), ("method", r.method),
                                   ("counterfactual", "yes" if r.counterfactual else "no (off-distribution)"),
                                   ("claim", r.claim)]
    rows += [("screen audit", f.text) for f in r.findings() if f.kind == "audit"]
    rows += [(f"note {i + 1}", text) for i, text in enumerate(r.notes)]
    return rows


def manifest_section(data: ReportData) -> str:
    """The atlas's settings and the run manifest: model, arguments, tasks, timings and versions."""
    m = data.results.manifest
    model = m.get("model", {})
    model_rows = [(k, model.get(k)) for k in ("spec", "model_type", "n_layers", "n_heads", "n_kv_heads", "d_head")]
    model_rows += [("parameters", f"{model['n_params']:,}" if isinstance(model.get("n_params"), int) else model.get("n_params")),
                   ("hash", str(model.get("hash", ""))[:16]), ("dtype", m.get("dtype")), ("device", m.get("device")),
                   ("seed", m.get("seed")), ("interventions", m.get("interventions"))]
    args = [(k, v) for k, v in m.get("arguments", {}).items()]
    tasks = [[name, level_tag(t.get("level")), t.get("n_prompts"), sum((t.get("dropped") or {}).values()),
              t.get("version", ""), seconds(_task_time(m.get("timings", {}), name))] for name, t in m.get("tasks", {}).items()]
    timings = [(k.removesuffix("_s").replace("__", " · "), seconds(v)) for k, v in m.get("timings", {}).items()]
    versions = list(m.get("versions", {}).items()) + [("platform", m.get("platform"))]
    body = (card(key_values(_atlas_rows(data)), "Atlas")
            + f'<div class="grid2">{card(key_values(model_rows), "Model")}{card(key_values(args), "Arguments")}</div>'
            + '<div class="stack"></div>'
            + card(table(["task", "level", "prompts", "dropped", "version", "time"], tasks, raw=(1,)), "Tasks")
            + f'<div class="grid2">{card(key_values(timings), "Timings")}{card(key_values(versions), "Versions")}</div>')
    return section("manifest", "Run", f"Everything needed to reproduce this run ({esc(data.results.root)}).", body)


def _task_time(timings: dict[str, Any], task: str) -> float | str:
    spent = [v for k, v in timings.items() if k.startswith(f"{task}__") and isinstance(v, (int, float))]
    return sum(spent) if spent else "—"
