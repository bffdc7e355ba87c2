"""The report's sections, each an HTML fragment built from the loaded run and its figures.

Section anchors (the nav links to them): ``summary``, ``map``, ``findings``, ``effects``, ``bands``, ``roles``,
``regulators``, ``compare``, ``prune``, ``manifest``. A section whose input was not measured says
so and shows the command that would measure it, instead of disappearing. Every statement of a
finding is drawn from a :class:`~cortexmap.analysis.Finding` (its text, or its effect, interval,
baseline and p-value), placed by its ``kind`` (:func:`~cortexmap.report.page.route_findings`);
other numbers carry their interval and baseline / p-value in the same way.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.report.data import ReportData
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
            ("bands", "Layer bands"),
            ("roles", "Roles"), ("regulators", "Regulators"), ("circuits", "Circuits"), ("compare", "Cross-model"),
            ("prune", "Pruning"),
            ("manifest", "Run"))


def _tone(p_value: Any, alpha: float = 0.05) -> str:
    return "" if p_value is None else ("good" if p_value < alpha else "bad")


def _first(findings: list[Finding], kind: str) -> Finding | None:
    return next((f for f in findings if f.kind == kind), None)


def summary_section(data: ReportData, findings: list[Finding]) -> str:
    """Headline numbers, each with its evidence: counts from the atlas, statistics from ``findings``."""
    f = data.findings
    atlas = data.atlas
    n_active = int((atlas["group"] != 0).sum())
    n_roles = int((atlas["roles"].astype(str) != "").sum())
    evaluated = [r for r, found in f["roles"]["evaluated"].items() if found]
    groups, depth = _first(findings, "groups"), _first(findings, "depth_order")
    stats = [stat("active heads", f"{n_active} / {len(atlas)}", "some task |effect| ≥ 5% of clean with |z| ≥ 3")]
    if groups is not None:
        stats.append(stat("functional groups", f"{f['groups']['k']} groups", f"silhouette {num(groups.effect)} vs null "
                          f"{num(groups.baseline)}, p = {num(groups.p_value, 3)}", _tone(groups.p_value)))
    if depth is not None:
        stats.append(stat("depth order", depth.verdict or "", (f"ρ = {num(depth.effect)} {ci(depth.ci_low, depth.ci_high)}, "
                                                               f"p = {num(depth.p_value, 3)}")
                          if depth.verdict != "not evaluated" else depth.stats.get("note", ""), _tone(depth.p_value)))
    stats.append(stat("heads with a role", str(n_roles), f"{len(evaluated)} of {len(f['roles']['evaluated'])} roles evaluated"))
    spec = _first(findings, "specialization")
    if spec is not None:
        stats.append(stat("specialization", num(spec.effect), f"{ci(spec.ci_low, spec.ci_high)} vs null "
                          f"{num(spec.baseline)}, p = {num(spec.p_value, 3)}", _tone(spec.p_value)))
    return section("summary", "Overview", "The model's attention heads, mapped by intervening on each one. Hover any "
                   "figure for the numbers behind it.", f'<div class="stats">{"".join(stats)}</div>')


def findings_section(routed: dict[str, list[Finding]]) -> str:
    """Every headline finding line, and what was not evaluated."""
    caveats = routed.get("caveats", [])
    more = (f"<details><summary>Not evaluated and analysis settings ({len(caveats)})</summary>"
            f"{findings_list(caveats, 'findings small')}</details>") if caveats else ""
    return section("findings", "Findings", "Each finding with its effect size, 95% interval and baseline or p-value; "
                   "the sections below hold the details.", card(findings_list(routed.get("overview", [])) + more))


def map_section(data: ReportData, routed: dict[str, list[Finding]]) -> str:
    """The cortex map and the functional groups table."""
    groups = pd.DataFrame(data.findings["groups"]["groups"])
    colors = group_colors(groups["group"].tolist()) if len(groups) else {}
    rows = [[f"{swatch(colors.get(int(g.group), '#ccc'))}{esc(g.group_name)}", g.size, level_tag(g.dominant_level),
             ", ".join(g.top_tasks), num(g.mean_abs_effect, 3), num(g.mean_depth)]
            for g in groups.itertuples()]
    caption = ("Each cell is one head (layer → right, head ↓). Colour: functional group (clusters of active heads' effect "
               "profiles; grey = inert) or, with the buttons, the level whose tasks the head matters most for. Letters "
               "name roles (PT previous-token, IND induction, DUP duplicate-token, SNK sink, NM name mover, …).")
    body = card(figure("cortex_map", caption))
    body += card(table(["group", "heads", "dominant level", "top tasks", "mean |effect|", "mean depth"], rows, raw=(0, 2))
                 + findings_list(routed.get("map", [])), "Functional groups")
    return section("map", "Cortex map", "What every attention head does, at a glance.", body)


def effects_section(data: ReportData, names: list[tuple[str, str]]) -> str:
    """One heatmap per intervention (task dropdown) and the task x head matrix."""
    body = "".join(card(figure(name, "Effect of the intervention on the task's logit difference, as a fraction of "
                               "the clean value (red: the head is needed; blue: removing it helps; blank: not "
                               "measured this way). Choose the task in the menu; colour range per task."), title) for name, title in names)
    body += card(figure("task_head_matrix", "Rows: tasks (coloured square = level); columns: active heads ordered by "
                        "functional group (strip on top), then depth."), "Task × head matrix")
    return section("effects", "Effects", "Per-task, per-intervention effects of every head.", body)


def bands_section(data: ReportData, routed: dict[str, list[Finding]]) -> str:
    """The depth-order verdict with its statistics, its details and the layer-band figure."""
    shown = routed.get("bands", [])
    verdict_html = ""
    for test in (f for f in shown if f.kind == "depth_order"):
        css = {"supported": "good", "not supported": "bad"}.get(test.verdict or "", "none")
        if test.verdict == "not evaluated":
            nums = esc(test.stats.get("note", ""))
        else:
            nums = (f"Spearman ρ = <b>{num(test.effect)}</b> {ci(test.ci_low, test.ci_high)} · {esc(test.baseline_label)} "
                    f"{num(test.baseline)} (95th pct {num(test.stats.get('null_p95'))}) · <b>p = {num(test.p_value, 4)}</b> "
                    f"({test.stats.get('n_perm')} permutations)")
        verdict_html += (f'<div class="verdict"><div><span class="badge {css}">{esc(test.verdict)}</span>'
                         f'<div class="what">{esc(test.subject)}</div><div class="nums">{nums}</div></div></div>')
    details = [f for f in shown if f.kind != "depth_order"]
    body = card(verdict_html + findings_list(details), "Depth-order hypothesis")
    body += card(figure("bands", "Top: each level's mean relative depth of importance with its 95% bootstrap interval "
                        "(dotted: uniform baseline 0.5). Middle: layer bands from the BIC segmentation with their dominant "
                        "level and its enrichment (hover: 95% bootstrap interval, boundaries held fixed). Bottom: share of each level's importance "
                        "per layer (mean over its tasks)."),
                 "Importance over depth")
    return section("bands", "Layer bands", "Do lexical tasks live early and reasoning late?", body)


def roles_section(data: ReportData, routed: dict[str, list[Finding]]) -> str:
    """The sortable, filterable role table with its evidence."""
    roles = data.findings["roles"]
    colors = group_colors(data.atlas["group"].tolist())
    group_of = data.atlas.set_index("head_id")["group"].to_dict()
    rows = []
    for r in roles["table"]:
        color = colors.get(int(group_of.get(r["head_id"], 0)), "#ccc")
        rows.append([(f"{swatch(color)}{esc(r['head_id'])}", r["layer"] * 10_000 + r["head"]), r["role"],
                     f"{r['kind']}: {r['evidence']}", (num(r["effect_or_score"], 3), r["effect_or_score"]),
                     ci(r["ci_low"], r["ci_high"], 3), (num(r["baseline"], 3), r["baseline"]),
                     (num(r["percentile"], 1), r["percentile"]), (num(r["p_value"], 3), r["p_value"])])
    missing = sorted(role for role, found in roles["evaluated"].items() if not found)
    rule = f'<p class="caption">Rule: {esc(roles.get("rule", ""))}.</p>'
    if rows:
        body = ('<input class="filter" data-table="role-table" placeholder="filter roles, heads, tasks…">'
                + '<div class="scroll">' + table(["head", "role", "evidence", "effect / score", "interval", "baseline",
                                                  "percentile", "p"], rows, sortable=True, raw=(0,)).replace(
                    '<table class="', '<table id="role-table" class="', 1) + "</div>")
    else:
        body = note("No head passes any evaluated role's evidence rule.")
    body = findings_list(routed.get("roles", [])) + body + rule
    if missing:
        body += note(f"Not evaluated (no task or probe for them in this run): {esc(', '.join(missing))}.")
    return section("roles", "Roles", "Named head roles, each granted only on stated evidence against a random-head "
                   "baseline. Click a column to sort.", card(body))


def regulators_section(data: ReportData, routed: dict[str, list[Finding]], present: set[str]) -> str:
    """Regulator-head graph, scores and condition contrasts, or how to measure them."""
    if data.findings.get("regulators") is None:
        body = note("Regulator heads were not measured for this run.",
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
                                "candidate (breadth test and CI above the all-heads 95th percentile). Dotted: median "
                                "head; dashed: 95th percentile of all heads."), "Top regulators"))
    if "contrasts" in present:
        grid.append(card(figure("contrasts", "Score difference between conditions with 95% CI; filled = q < 0.05 "
                                "(permutation test, Benjamini-Hochberg)."), "Condition contrasts"))
    if grid:
        parts.append(f'<div class="grid2">{"".join(grid)}</div>')
    return section("regulators", "Regulators", "Heads that modulate many later heads.", "".join(parts))


def compare_section(data: ReportData, names: list[str]) -> str:
    """One panel per compared run: conservation against its null, depth correspondence, matches."""
    if not data.comparisons:
        body = note("No other model was compared with this run.",
                    f"cortexmap report {data.results.root} --compare OTHER_RUN")
        return section("compare", "Cross-model", "Are head functions conserved across models?", body)
    parts = []
    for comp, name in zip(data.comparisons, names):
        title = f"{comp.model_a} vs {comp.model_b}"
        if comp.result is None:
            parts.append(card(note(f"Not compared: {esc(comp.error)}"), title))
            continue
        r = comp.result
        stats = [stat("conservation", num(r["conservation"]), f"mean similarity of {r['n_pairs']} matched heads vs "
                      f"task-shuffled null {num(r['null_mean'])} (95th pct {num(r['null_p95'])}), p = {num(r['p_value'], 3)}",
                      _tone(r["p_value"])),
                 stat("depth correspondence", num(r["depth_rho"]), f"Spearman ρ {ci(r['depth_ci_low'], r['depth_ci_high'])}"
                      f" over {r['n_depth_pairs']} pairs with similarity ≥ 0.5"),
                 stat("shared tasks", str(r["n_tasks"]), f"{'active' if r.get('active_only') else 'all'} heads matched "
                      f"one-to-one; {r['n_perm']} permutations")]
        parts.append(card(f'<div class="stats">{"".join(stats)}</div>' + figure(name), title))
    return section("compare", "Cross-model", "Heads matched one-to-one by the similarity of their effect profiles.",
                   "".join(parts))


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


def manifest_section(data: ReportData) -> str:
    """The run manifest: model, arguments, tasks, timings and versions."""
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
    body = (f'<div class="grid2">{card(key_values(model_rows), "Model")}{card(key_values(args), "Arguments")}</div>'
            + '<div class="stack"></div>'
            + card(table(["task", "level", "prompts", "dropped", "version", "time"], tasks, raw=(1,)), "Tasks")
            + f'<div class="grid2">{card(key_values(timings), "Timings")}{card(key_values(versions), "Versions")}</div>')
    return section("manifest", "Run", f"Everything needed to reproduce this run ({esc(data.results.root)}).", body)


def _task_time(timings: dict[str, Any], task: str) -> float | str:
    spent = [v for k, v in timings.items() if k.startswith(f"{task}__") and isinstance(v, (int, float))]
    return sum(spent) if spent else "—"
