"""Short printable lines from an atlas findings dict; the CLI prints them as they are.

Every line that states a finding carries its effect size, its 95% interval and its baseline (or
p-value), a "no" included: a role no head passes names the head that came closest, with its
numbers, and "no contrast / no task differs" lines show the largest one. Missing analyses are
reported as "not evaluated", never silently dropped.
"""

from __future__ import annotations

from typing import Any


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and (abs(value) >= 1e4 or (digits > 0 and 0 < abs(value) < 10 ** -digits)):
        return f"{value:.1e}"
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def _ci(low: Any, high: Any) -> str:
    return f"[95% CI {_num(low)}, {_num(high)}]"


def _band_lines(bands: dict) -> list[str]:
    test = bands["hypothesis"]
    if test["verdict"] == "not evaluated":
        lines = [f"Depth order '{test['hypothesis']}': not evaluated ({test['note']})."]
    else:
        lines = [f"Depth order '{test['hypothesis']}': {test['verdict']}: Spearman rho = {_num(test['rho'])} "
                 f"{_ci(test['ci_low'], test['ci_high'])}; layer-shuffle null mean {_num(test['null_mean'])} "
                 f"(95th pct {_num(test['null_p95'])}), p = {_num(test['p_value'], 4)} ({test['n_perm']} permutations)."]
    names = {v: "/".join(sorted(k for k, o in test["level_order"].items() if o == v)) for v in set(test["level_order"].values())}
    for step in test.get("steps", []):
        lines.append(f"  step {names[step['from']]} -> {names[step['to']]}: depth difference {_num(step['diff'])} "
                     f"{_ci(step['ci_low'], step['ci_high'])} (0 = same depth).")
    for row in bands["level_depths"]:
        if row["n_important"]:
            lines.append(f"  {row['level']}: mean relative depth {_num(row['mean_depth'])} {_ci(row['ci_low'], row['ci_high'])} "
                         f"over {row['n_important']} important head-task cells (uniform baseline {_num(bands['depth_baseline'])}).")
        else:
            lines.append(f"  {row['level']}: no important heads, depth not evaluated.")
    segments = [f"L{b['layer_start']}-L{b['layer_end']} {b['dominant_level']} x{_num(b['enrichment'], 1)} "
                f"[95% CI {_num(b.get('enrichment_ci_low'), 1)}, {_num(b.get('enrichment_ci_high'), 1)}]"
                for b in bands["segmentation"]]
    if segments:
        lines.append(f"Layer bands (BIC segmentation; enrichment of the dominant level, 1 = none, interval with the "
                     f"boundaries held fixed): {'; '.join(segments)}.")
    return lines


def _group_lines(groups: dict) -> list[str]:
    stab = groups["stability"]
    names = ", ".join(f"{g['group_name']} ({g['size']})" for g in groups["groups"])
    if not groups["silhouette"]:
        return [f"Functional groups: not evaluated (too few active heads to cluster); {names}."]
    return [f"Functional groups: k = {groups['k']} active groups + {groups['n_inert']} inert heads; silhouette "
            f"{_num(groups['silhouette_best'])} vs permuted-feature null {_num(groups['null_silhouette_mean'])} "
            f"(95th pct {_num(groups['null_silhouette_p95'])}, p = {_num(groups['silhouette_p_value'], 3)}); "
            f"stability ARI {_num(stab['ari_mean'])} {_ci(stab['ci_low'], stab['ci_high'])} (0 = chance). Groups: {names}."]


def _role_lines(roles: dict) -> list[str]:
    lines = []
    closest = {row["role"]: row for row in roles.get("closest", [])}
    by_role: dict[str, list[dict]] = {}
    for row in roles["table"]:
        by_role.setdefault(row["role"], []).append(row)
    for role, found in sorted(roles["evaluated"].items()):
        if not found:
            continue
        rows = by_role.get(role, [])
        if not rows:
            near = closest.get(role)
            if near is None:
                lines.append(f"Role {role}: no head passes ({', '.join(found)}); closest head not evaluated "
                             "(no finite evidence, or findings of an older cortexmap: re-run cortexmap analyze).")
            else:
                # Probe scores are attention fractions: a bar above 1 means the behaviour is so
                # common among heads that the outlier rule cannot single one out.
                common = near["kind"] == "probe" and near["baseline"] is not None and near["baseline"] > 1
                lines.append(f"Role {role}: no head passes ({', '.join(found)}); closest {near['head_id']} "
                             f"({near['evidence']}) {_evidence(near)}"
                             + ("; the bar exceeds the score's maximum of 1: too many heads do this to single one out"
                                if common else "") + ".")
            continue
        best = max(rows, key=lambda r: (r["percentile"], abs(r["effect_or_score"])))
        lines.append(f"Role {role}: {len({r['head_id'] for r in rows})} head(s); strongest {best['head_id']} "
                     f"({best['evidence']}) {_evidence(best)}.")
    return lines


def _evidence(row: dict) -> str:
    """A role row's effect or score, interval and baseline."""
    what = "effect" if row["kind"] == "task" else "score"
    baseline = "random-head 95th pct |effect|" if row["kind"] == "task" else "threshold"
    return (f"{what} {_num(row['effect_or_score'])} {_ci(row['ci_low'], row['ci_high'])} "
            f"vs {baseline} {_num(row['baseline'])}")


def _regulator_lines(regulators: dict | None) -> list[str]:
    if regulators is None:
        return []
    top = regulators["top"]
    candidates = [r for r in top if r["candidate"]]
    lines = []
    for r in candidates[:3]:
        lines.append(f"Regulator candidate {r['head_id']}: score {_num(r['score'], 3)} {_ci(r['ci_low'], r['ci_high'])} "
                     f"(breadth {_num(r['breadth'])}, p {_num(r['p_breadth'], 2)}; strength {_num(r['strength'], 3)}) "
                     f"vs all {regulators['n_sources']} screened heads' median "
                     f"{_num(r['baseline_median'], 3)}, 95th pct {_num(r['baseline_p95'], 3)}.")
    if not candidates and top:
        shown = "; ".join(f"{r['head_id']} {_num(r['score'], 3)} {_ci(r['ci_low'], r['ci_high'])}, breadth p "
                          f"{_num(r['p_breadth'], 2)}" for r in top[:3])
        lines.append(f"No regulator candidate (a candidate needs breadth p < 0.05 and its interval above the "
                     f"measured heads' 95th pct {_num(top[0]['baseline_p95'], 3)}, median "
                     f"{_num(top[0]['baseline_median'], 3)}); top scores: {shown}.")
    significant = [c for c in regulators["contrasts"] if c["q_value"] is not None and c["q_value"] < 0.05]
    for c in sorted(significant, key=lambda c: c["p_value"])[:5]:
        lines.append(f"Condition contrast {c['head_id']}: score {c['condition_a']} - {c['condition_b']} = "
                     f"{_num(c['diff'], 3)} {_ci(c['ci_low'], c['ci_high'])}, permutation p = {_num(c['p_value'], 4)} "
                     f"(q = {_num(c['q_value'], 3)}).")
    tested = [c for c in regulators["contrasts"] if c["p_value"] is not None]
    if tested and not significant:
        c = min(tested, key=lambda c: c["p_value"])
        lines.append(f"No regulator score differs between conditions at q < 0.05 ({len(tested)} contrasts); smallest p: "
                     f"{c['head_id']} {c['condition_a']} - {c['condition_b']} = {_num(c['diff'], 3)} "
                     f"{_ci(c['ci_low'], c['ci_high'])}, p = {_num(c['p_value'], 4)} (q = {_num(c['q_value'], 3)}).")
    return lines


def _audit_lines(audit: dict | None) -> list[str]:
    if not audit or audit.get("rate") is None:
        return []
    return [f"Screen audit: {audit['important']} of {audit['audited']} unverified heads drawn at random were important "
            f"(|effect| >= 5% of clean and |z| >= 3): miss rate {_num(audit['rate'], 3)} "
            f"[95% CI {_num(audit['ci_low'], 3)}, {_num(audit['ci_high'], 3)}] (Clopper-Pearson), i.e. about "
            f"{_num(audit['missed_estimate'], 0)} [95% CI {_num(audit['missed_ci_low'], 0)}, "
            f"{_num(audit['missed_ci_high'], 0)}] important head-task cells missed among {audit['unverified']} unverified; "
            f"the atlas counts them as having no effect."]


def summarize_findings(findings: dict) -> list[str]:
    """Short lines, each finding with its effect size, 95% interval and baseline or p-value.

    Args:
        findings: the dict :func:`~cortexmap.analysis.atlas.build_atlas` returns.

    Returns:
        Lines in a fixed order: depth-order test, level depths, bands, groups, roles,
        specialization, task adaptivity, regulators, redundancy, what was not evaluated, notes.
    """
    lines = _audit_lines(findings.get("audit")) + _band_lines(findings["bands"]) + _group_lines(findings["groups"])
    lines += _role_lines(findings["roles"])
    spec = findings["specialization"]
    if spec["mean"] is not None:
        lines.append(f"Specialization (1 - normalized entropy of |effects|, {spec['n_heads']} {spec['heads']} heads): "
                     f"mean {_num(spec['mean'])} "
                     f"{_ci(spec['ci_low'], spec['ci_high'])} vs task-shuffled null {_num(spec['null_mean'])} "
                     f"(p = {_num(spec['p_value'], 3)}).")
    leaning = [t for t in findings["adaptivity"] if t["lean"] in ("early", "late")]
    for t in leaning:
        lines.append(f"Task {t['task']} leans {t['lean']}: depth {_num(t['mean_depth'])} {_ci(t['ci_low'], t['ci_high'])} "
                     f"vs battery median {_num(t['battery_median'])} (diff {_num(t['diff'])} "
                     f"{_ci(t['diff_ci_low'], t['diff_ci_high'])}, q = {_num(t['q_value'], 3)}).")
    compared = [t for t in findings["adaptivity"] if t["lean"] != "not evaluated" and t["diff"] is not None]
    if compared and not leaning:
        t = max(compared, key=lambda t: abs(t["diff"]))
        lines.append(f"No task's depth differs from the battery median at q < 0.05 ({len(compared)} tasks compared); "
                     f"largest: {t['task']} diff {_num(t['diff'])} {_ci(t['diff_ci_low'], t['diff_ci_high'])}, "
                     f"q = {_num(t['q_value'], 3)}.")
    lines += _regulator_lines(findings["regulators"])
    red = findings["redundancy"]
    if red is not None:
        low, high = (None if v is None else f"{100 * v:.0f}%" for v in red["fraction_redundant_ci"])
        lines.append(f"Joint ablations: {_num(100 * red['fraction_redundant'], 0)}% of {red['n_pairs']} pairs redundant "
                     f"[95% CI {low}, {high}]; mean relative "
                     f"interaction {_num(red['mean_relative_interaction'])} {_ci(*red['mean_relative_interaction_ci'])} "
                     f"(0 = additive).")
    lines += [f"Not evaluated: {note}." for note in findings["not_evaluated"]]
    lines += [f"Note: {note}." for note in findings.get("notes", [])]
    return lines
