"""The findings of an atlas as typed records (:func:`list_findings`) and as printable lines.

Every finding that states a result carries its effect size, its 95% interval and its baseline (or
p-value) in its fields and in its sentence, a "no" included: a role no head passes names the head
that came closest, with its numbers, and "no contrast / no task differs" findings give the largest
one. Missing analyses are reported as "not evaluated" findings, never silently dropped. The record
layout and the number formatting are those of :mod:`cortexmap.analysis.findings`.
"""

from __future__ import annotations

from typing import Any

from cortexmap.analysis.findings import Finding, ci, num

TASK_BASELINE = "random-head 95th pct |effect|"
PROBE_BASELINE = "threshold"


def _audit_findings(audit: dict | None) -> list[Finding]:
    if not audit or audit.get("rate") is None:
        return []
    text = (f"Screen audit: {audit['important']} of {audit['audited']} unverified heads drawn at random were important "
            f"(|effect| >= 5% of clean and |z| >= 3): miss rate {num(audit['rate'], 3)} "
            f"{ci(audit['ci_low'], audit['ci_high'], 3)} (Clopper-Pearson), i.e. about "
            f"{num(audit['missed_estimate'], 0)} {ci(audit['missed_ci_low'], audit['missed_ci_high'], 0)} "
            f"important head-task cells missed among {audit['unverified']} unverified; "
            f"the atlas counts them as having no effect.")
    stats = {"important": audit["important"], "audited": audit["audited"], "unverified": audit["unverified"],
             "missed_estimate": audit["missed_estimate"], "missed_estimate_ci_low": audit["missed_ci_low"],
             "missed_estimate_ci_high": audit["missed_ci_high"]}
    return [Finding(kind="audit", text=text, effect=audit["rate"], ci_low=audit["ci_low"], ci_high=audit["ci_high"],
                    method="exact", stats=stats)]


def _band_findings(bands: dict, method: str | None) -> list[Finding]:
    test = bands["hypothesis"]
    if test["verdict"] == "not evaluated":
        out = [Finding(kind="depth_order", subject=test["hypothesis"], verdict="not evaluated", method=method,
                       stats={"note": test["note"]},
                       text=f"Depth order '{test['hypothesis']}': not evaluated ({test['note']}).")]
    else:
        text = (f"Depth order '{test['hypothesis']}': {test['verdict']}: Spearman rho = {num(test['rho'])} "
                f"{ci(test['ci_low'], test['ci_high'])}; layer-shuffle null mean {num(test['null_mean'])} "
                f"(95th pct {num(test['null_p95'])}), p = {num(test['p_value'], 4)} ({test['n_perm']} permutations).")
        out = [Finding(kind="depth_order", subject=test["hypothesis"], effect=test["rho"], ci_low=test["ci_low"],
                       ci_high=test["ci_high"], baseline=test["null_mean"], baseline_label="layer-shuffle null mean",
                       p_value=test["p_value"], verdict=test["verdict"], method=method,
                       stats={"null_p95": test["null_p95"], "n_perm": test["n_perm"]}, text=text)]
    names = {v: "/".join(sorted(k for k, o in test["level_order"].items() if o == v)) for v in set(test["level_order"].values())}
    for step in test.get("steps", []):
        subject = f"{names[step['from']]} -> {names[step['to']]}"
        out.append(Finding(kind="depth_step", subject=subject, effect=step["diff"], ci_low=step["ci_low"],
                           ci_high=step["ci_high"], baseline=0.0, baseline_label="same depth", method=method,
                           text=f"step {subject}: depth difference {num(step['diff'])} "
                                f"{ci(step['ci_low'], step['ci_high'])} (0 = same depth)."))
    for row in bands["level_depths"]:
        if row["n_important"]:
            out.append(Finding(kind="level_depth", subject=row["level"], effect=row["mean_depth"], ci_low=row["ci_low"],
                               ci_high=row["ci_high"], baseline=bands["depth_baseline"],
                               baseline_label="uniform relative depth", method=method,
                               stats={"n_important": row["n_important"]},
                               text=f"{row['level']}: mean relative depth {num(row['mean_depth'])} "
                                    f"{ci(row['ci_low'], row['ci_high'])} over {row['n_important']} important "
                                    f"head-task cells (uniform baseline {num(bands['depth_baseline'])})."))
        else:
            out.append(Finding(kind="level_depth", subject=row["level"], verdict="not evaluated", method=method,
                               stats={"n_important": 0},
                               text=f"{row['level']}: no important heads, depth not evaluated."))
    segments = bands["segmentation"]
    if segments:
        n = len(segments)
        out.append(Finding(kind="layer_bands", method=method, stats={"n_bands": n},
                           text=f"Layer bands (BIC segmentation): {n} band{'s' if n != 1 else ''}; enrichment of each "
                                "band's dominant level, 1 = none, interval with the boundaries held fixed."))
    for b in segments:
        layers = f"L{b['layer_start']}-L{b['layer_end']}"
        low, high = b.get("enrichment_ci_low"), b.get("enrichment_ci_high")
        if b["dominant_level"] is None:  # no important head at all: nothing to be enriched
            out.append(Finding(kind="band", subject=layers, verdict="not evaluated", method=method,
                               stats={"layer_start": b["layer_start"], "layer_end": b["layer_end"]},
                               text=f"{layers}: no important heads, so no dominant level."))
            continue
        out.append(Finding(kind="band", subject=layers, effect=b["enrichment"], ci_low=low, ci_high=high,
                           baseline=1.0, baseline_label="no enrichment", method=method,
                           stats={"level": b["dominant_level"], "layer_start": b["layer_start"],
                                  "layer_end": b["layer_end"]},
                           text=f"{layers} {b['dominant_level']}: enrichment x{num(b['enrichment'], 1)} "
                                f"{ci(low, high, 1)} (1 = none)."))
    return out


def _group_findings(groups: dict, method: str | None) -> list[Finding]:
    stab = groups["stability"]
    names = ", ".join(f"{g['group_name']} ({g['size']})" for g in groups["groups"])
    if not groups["silhouette"]:
        return [Finding(kind="groups", verdict="not evaluated", method=method,
                        text=f"Functional groups: not evaluated (too few active heads to cluster); {names}.")]
    text = (f"Functional groups: k = {groups['k']} active groups + {groups['n_inert']} inert heads; silhouette "
            f"{num(groups['silhouette_best'])} vs permuted-feature null {num(groups['null_silhouette_mean'])} "
            f"(95th pct {num(groups['null_silhouette_p95'])}, p = {num(groups['silhouette_p_value'], 3)}); "
            f"stability ARI {num(stab['ari_mean'])} {ci(stab['ci_low'], stab['ci_high'])} (0 = chance). Groups: {names}.")
    stats = {"k": groups["k"], "n_inert": groups["n_inert"], "null_p95": groups["null_silhouette_p95"],
             "stability_ari": stab["ari_mean"], "stability_ari_ci_low": stab["ci_low"],
             "stability_ari_ci_high": stab["ci_high"], "stability_ari_baseline": 0.0}
    return [Finding(kind="groups", effect=groups["silhouette_best"], baseline=groups["null_silhouette_mean"],
                    baseline_label="permuted-feature null mean", p_value=groups["silhouette_p_value"], method=method,
                    stats=stats, text=text)]


def _evidence(row: dict) -> str:
    """A role row's effect or score, interval and baseline."""
    what = "effect" if row["kind"] == "task" else "score"
    baseline = TASK_BASELINE if row["kind"] == "task" else PROBE_BASELINE
    return f"{what} {num(row['effect_or_score'])} {ci(row['ci_low'], row['ci_high'])} vs {baseline} {num(row['baseline'])}"


def _role_finding(role: str, row: dict, verdict: str, text: str, method: str | None, **stats: Any) -> Finding:
    task = row["kind"] == "task"
    return Finding(kind="role", subject=role, head=row["head_id"], task=row["evidence"], effect=row["effect_or_score"],
                   ci_low=row["ci_low"], ci_high=row["ci_high"], baseline=row["baseline"],
                   baseline_label=TASK_BASELINE if task else PROBE_BASELINE, p_value=row.get("p_value"),
                   verdict=verdict, method=method if task else "probe", stats=stats, text=text)


def _role_findings(roles: dict, method: str | None) -> list[Finding]:
    out = []
    closest = {row["role"]: row for row in roles.get("closest", [])}
    by_role: dict[str, list[dict]] = {}
    for row in roles["table"]:
        by_role.setdefault(row["role"], []).append(row)
    for role, found in sorted(roles["evaluated"].items()):
        if not found:
            continue
        rows = by_role.get(role, [])
        if rows:
            best = max(rows, key=lambda r: (r["percentile"], abs(r["effect_or_score"])))
            n_heads = len({r["head_id"] for r in rows})
            out.append(_role_finding(role, best, "passes", f"Role {role}: {n_heads} head(s); strongest {best['head_id']} "
                                     f"({best['evidence']}) {_evidence(best)}.", method, n_heads=n_heads))
            continue
        near = closest.get(role)
        if near is None:
            out.append(Finding(kind="role", subject=role, verdict="no head passes", method=method,
                               text=f"Role {role}: no head passes ({', '.join(found)}); closest head not evaluated "
                                    "(no finite evidence, or findings of an older cortexmap: re-run cortexmap analyze)."))
            continue
        # Probe scores are attention fractions: a bar above 1 means the behaviour is so
        # common among heads that the outlier rule cannot single one out.
        common = near["kind"] == "probe" and near["baseline"] is not None and near["baseline"] > 1
        text = (f"Role {role}: no head passes ({', '.join(found)}); closest {near['head_id']} ({near['evidence']}) "
                f"{_evidence(near)}"
                + ("; the bar exceeds the score's maximum of 1: too many heads do this to single one out" if common else "")
                + ".")
        out.append(_role_finding(role, near, "no head passes", text, method))
    return out


def _specialization_findings(spec: dict, method: str | None) -> list[Finding]:
    if spec["mean"] is None:
        return []
    text = (f"Specialization (1 - normalized entropy of |effects|, {spec['n_heads']} {spec['heads']} heads): "
            f"mean {num(spec['mean'])} {ci(spec['ci_low'], spec['ci_high'])} vs task-shuffled null "
            f"{num(spec['null_mean'])} (p = {num(spec['p_value'], 3)}).")
    return [Finding(kind="specialization", subject=f"{spec['heads']} heads", effect=spec["mean"], ci_low=spec["ci_low"],
                    ci_high=spec["ci_high"], baseline=spec["null_mean"], baseline_label="task-shuffled null mean",
                    p_value=spec["p_value"], method=method, stats={"n_heads": spec["n_heads"]}, text=text)]


def _adaptivity_finding(t: dict, verdict: str, text: str, method: str | None, **stats: Any) -> Finding:
    """A task's depth difference from the battery median (the effect), its own depth in ``stats``."""
    return Finding(kind="adaptivity", task=t["task"], effect=t["diff"], ci_low=t["diff_ci_low"],
                   ci_high=t["diff_ci_high"], baseline=0.0, baseline_label="battery median depth (difference 0)",
                   p_value=t.get("p_value"), verdict=verdict, method=method,
                   stats={"q_value": t["q_value"], **stats}, text=text)


def _adaptivity_findings(adaptivity: list[dict], method: str | None) -> list[Finding]:
    out = []
    leaning = [t for t in adaptivity if t["lean"] in ("early", "late")]
    for t in leaning:
        text = (f"Task {t['task']} leans {t['lean']}: depth {num(t['mean_depth'])} {ci(t['ci_low'], t['ci_high'])} "
                f"vs battery median {num(t['battery_median'])} (diff {num(t['diff'])} "
                f"{ci(t['diff_ci_low'], t['diff_ci_high'])}, q = {num(t['q_value'], 3)}).")
        out.append(_adaptivity_finding(t, f"leans {t['lean']}", text, method, depth=t["mean_depth"],
                                       depth_ci_low=t["ci_low"], depth_ci_high=t["ci_high"],
                                       battery_median=t["battery_median"]))
    compared = [t for t in adaptivity if t["lean"] != "not evaluated" and t["diff"] is not None]
    if compared and not leaning:
        t = max(compared, key=lambda t: abs(t["diff"]))
        text = (f"No task's depth differs from the battery median at q < 0.05 ({len(compared)} tasks compared); "
                f"largest: {t['task']} diff {num(t['diff'])} {ci(t['diff_ci_low'], t['diff_ci_high'])}, "
                f"q = {num(t['q_value'], 3)}.")
        out.append(_adaptivity_finding(t, "no difference", text, method, n_compared=len(compared)))
    return out


def _regulator_findings(regulators: dict | None) -> list[Finding]:
    if regulators is None:
        return []
    top = regulators["top"]
    candidates = [r for r in top if r["candidate"]]
    out = []
    baseline_label = "95th pct of all screened heads' scores"
    for r in candidates[:3]:
        text = (f"Regulator candidate {r['head_id']}: score {num(r['score'], 3)} {ci(r['ci_low'], r['ci_high'])} "
                f"(breadth {num(r['breadth'])}, p {num(r['p_breadth'], 2)}; strength {num(r['strength'], 3)}) "
                f"vs all {regulators['n_sources']} screened heads' median "
                f"{num(r['baseline_median'], 3)}, 95th pct {num(r['baseline_p95'], 3)}.")
        out.append(Finding(kind="regulator", head=r["head_id"], effect=r["score"], ci_low=r["ci_low"],
                           ci_high=r["ci_high"], baseline=r["baseline_p95"], baseline_label=baseline_label,
                           p_value=r["p_breadth"], verdict="candidate", method="exact",
                           stats={"breadth": r["breadth"], "strength": r["strength"],
                                  "baseline_median": r["baseline_median"], "n_sources": regulators["n_sources"]},
                           text=text))
    if not candidates and top:
        shown = "; ".join(f"{r['head_id']} {num(r['score'], 3)} {ci(r['ci_low'], r['ci_high'])}, breadth p "
                          f"{num(r['p_breadth'], 2)}" for r in top[:3])
        text = (f"No regulator candidate (a candidate needs breadth p < 0.05 and its interval above the "
                f"measured heads' 95th pct {num(top[0]['baseline_p95'], 3)}, median "
                f"{num(top[0]['baseline_median'], 3)}); top scores: {shown}.")
        stats: dict[str, Any] = {"baseline_median": top[0]["baseline_median"]}
        for i, r in enumerate(top[1:3], start=2):
            stats.update({f"top{i}_head": r["head_id"], f"top{i}_score": r["score"], f"top{i}_score_ci_low": r["ci_low"],
                          f"top{i}_score_ci_high": r["ci_high"], f"top{i}_p_breadth": r["p_breadth"]})
        r = top[0]
        out.append(Finding(kind="regulator", head=r["head_id"], effect=r["score"], ci_low=r["ci_low"],
                           ci_high=r["ci_high"], baseline=r["baseline_p95"], baseline_label=baseline_label,
                           p_value=r["p_breadth"], verdict="no candidate", method="exact", stats=stats, text=text))
    out += _contrast_findings(regulators["contrasts"])
    return out


def _contrast_finding(c: dict, verdict: str, text: str, **stats: Any) -> Finding:
    return Finding(kind="contrast", subject=f"{c['condition_a']} - {c['condition_b']}", head=c["head_id"],
                   effect=c["diff"], ci_low=c["ci_low"], ci_high=c["ci_high"], baseline=0.0,
                   baseline_label="no difference between conditions", p_value=c["p_value"], verdict=verdict,
                   method="exact", stats={"q_value": c["q_value"], **stats}, text=text)


def _contrast_findings(contrasts: list[dict]) -> list[Finding]:
    out = []
    significant = [c for c in contrasts if c["q_value"] is not None and c["q_value"] < 0.05]
    for c in sorted(significant, key=lambda c: c["p_value"])[:5]:
        out.append(_contrast_finding(c, "differs", f"Condition contrast {c['head_id']}: score {c['condition_a']} - "
                                     f"{c['condition_b']} = {num(c['diff'], 3)} {ci(c['ci_low'], c['ci_high'])}, "
                                     f"permutation p = {num(c['p_value'], 4)} (q = {num(c['q_value'], 3)})."))
    tested = [c for c in contrasts if c["p_value"] is not None]
    if tested and not significant:
        c = min(tested, key=lambda c: c["p_value"])
        text = (f"No regulator score differs between conditions at q < 0.05 ({len(tested)} contrasts); smallest p: "
                f"{c['head_id']} {c['condition_a']} - {c['condition_b']} = {num(c['diff'], 3)} "
                f"{ci(c['ci_low'], c['ci_high'])}, p = {num(c['p_value'], 4)} (q = {num(c['q_value'], 3)}).")
        out.append(_contrast_finding(c, "no difference", text, n_contrasts=len(tested)))
    return out


def regulation_finding(t: dict) -> Finding:
    """The edge regulator test of one candidate and condition (:func:`cortexmap.analysis.regulation.regulation_test`)."""
    measured = t["p_random"] is not None
    if not measured:
        baseline = "no baseline heads were measured, so no verdict against them"
    else:
        baseline = (f"vs {t['n_random']} random heads: mean {num(t['baseline_mean'], 3)}, "
                    f"95th pct {num(t['baseline_p95'], 3)}, rank p = {num(t['p_random'], 3)}")
    text = (f"Regulator test on edges, {t['candidate']} on {t['condition']}: {t['verdict']}: ablating it moves "
            f"{num(100 * t['demanding'], 1)}% of {t['n_edges']} query/key edges' exact effect on demanding prompts "
            f"{ci(100 * t['demanding_ci_low'], 100 * t['demanding_ci_high'], 1)} vs {num(100 * t['easy'], 1)}% on easy "
            f"ones {ci(100 * t['easy_ci_low'], 100 * t['easy_ci_high'], 1)}: difference {num(t['diff'], 3)} "
            f"{ci(t['ci_low'], t['ci_high'], 3)} over {t['n_pairs']} matched pairs, {baseline}.")
    stats = {k: t[k] for k in ("easy", "easy_ci_low", "easy_ci_high", "demanding", "demanding_ci_low",
                               "demanding_ci_high", "baseline_p95", "n_random", "n_pairs", "n_edges")}
    return Finding(kind="regulation", head=t["candidate"], subject=t["condition"], effect=t["diff"],
                   ci_low=t["ci_low"], ci_high=t["ci_high"], baseline=t["baseline_mean"] if measured else 0.0,
                   baseline_label=("mean difference of random heads (not on the edges)" if measured
                                   else "no difference between the sides (no random heads measured)"),
                   p_value=t["p_random"],
                   verdict=t["verdict"], method="exact", stats=stats, text=text)


def _redundancy_findings(red: dict | None) -> list[Finding]:
    if red is None:
        return []
    fraction, (frac_low, frac_high) = red["fraction_redundant"], red["fraction_redundant_ci"]
    rel_low, rel_high = red["mean_relative_interaction_ci"]
    low, high = (None if v is None else f"{100 * v:.0f}%" for v in (frac_low, frac_high))
    text = (f"Joint ablations: {num(100 * fraction, 0)}% of {red['n_pairs']} pairs redundant [95% CI {low}, {high}]; "
            f"mean relative interaction {num(red['mean_relative_interaction'])} {ci(rel_low, rel_high)} (0 = additive).")
    return [Finding(kind="redundancy", effect=red["mean_relative_interaction"], ci_low=rel_low, ci_high=rel_high,
                    baseline=red.get("baseline", 0.0), baseline_label="additive (no interaction)", method="exact",
                    stats={"fraction_redundant": fraction, "fraction_redundant_ci_low": frac_low,
                           "fraction_redundant_ci_high": frac_high, "n_pairs": red["n_pairs"]}, text=text)]


ERRS_BASELINE = "no difference (p from shuffled right/wrong labels)"


def _errs_unit(row: dict) -> str:
    return (f"{row['unit']} wrong - right = {num(row['diff'])} {ci(row['ci_low'], row['ci_high'])} "
            f"(mean {num(row['mean_right'])} on right, {num(row['mean_wrong'])} on wrong prompts), "
            f"p = {num(row['p_value'], 3)}, q = {num(row['q_value'], 3)}")


def _errs_finding(kind: str, e: dict, row: dict, verdict: str | None, text: str) -> Finding:
    head = row["unit"] if e["kind"] == "head" else None
    return Finding(kind=kind, subject=f"{e['kind']} {row['unit']}", head=head, task=e["task"], effect=row["diff"],
                   ci_low=row["ci_low"], ci_high=row["ci_high"], baseline=0.0, baseline_label=ERRS_BASELINE,
                   p_value=row["p_value"], verdict=verdict, method="exact",
                   stats={"q_value": row["q_value"], "mean_right": row["mean_right"], "mean_wrong": row["mean_wrong"],
                          "n_right": e["n_right"], "n_wrong": e["n_wrong"], "clean_right": e.get("clean_right"),
                          "clean_wrong": e.get("clean_wrong"), "n_units": e["n_units"],
                          "n_differ": e["n_differ"]}, text=text)


def _errs_findings(errors: list[dict] | None) -> list[Finding]:
    out = []
    for e in errors or []:
        if not e["rows"]:
            continue
        where = (f"Why the model errs on {e['task']} ({e['n_right']} right, {e['n_wrong']} wrong prompts, mean clean "
                 f"margin {num(e.get('clean_right'))} vs {num(e.get('clean_wrong'))}, exact {e['kind']}s)")
        first, rest = e["rows"][0], e["rows"][1:]
        if e["n_differ"]:
            text = (f"{where}: {e['n_differ']} of {e['n_units']} {e['kind']}s' effects differ at q < {e['q']}; "
                    f"strongest {_errs_unit(first)}.")
            out.append(_errs_finding("errs", e, first, "differs", text))
            out += [_errs_finding("errs_unit", e, row, "differs", f"{_errs_unit(row)}.") for row in rest]
        else:
            text = (f"{where}: no {e['kind']}'s effect differs at q < {e['q']} ({e['n_units']} tested); "
                    f"smallest p: {_errs_unit(first)}.")
            out.append(_errs_finding("errs", e, first, "no difference", text))
    return out


def list_findings(findings: dict) -> list[Finding]:
    """Every finding of an atlas as a typed record, in the order the CLI prints them.

    Args:
        findings: the dict :func:`~cortexmap.analysis.atlas.build_atlas` returns (or ``atlas.json``).

    Returns:
        Findings in a fixed order: screen audit, depth-order test (with its steps and level
        depths as details), layer bands (with each band as a detail), groups, roles,
        specialization, task adaptivity, regulators, condition contrasts and the edge regulator test,
        redundancy, why the model errs (per task: heads, then circuit edges), what was not
        evaluated, notes. ``[f.to_dict() for f in ...]`` is their JSON form.
    """
    method = findings.get("selection", {}).get("method")
    out = _audit_findings(findings.get("audit"))
    out += _band_findings(findings["bands"], method)
    out += _group_findings(findings["groups"], method)
    out += _role_findings(findings["roles"], method)
    out += _specialization_findings(findings["specialization"], method)
    out += _adaptivity_findings(findings["adaptivity"], method)
    out += _regulator_findings(findings["regulators"])
    out += [regulation_finding(t) for t in findings.get("regulation") or []]
    out += _redundancy_findings(findings["redundancy"])
    out += _errs_findings(findings.get("errors"))
    out += [Finding(kind="not_evaluated", verdict="not evaluated", text=f"Not evaluated: {note}.")
            for note in findings["not_evaluated"]]
    out += [Finding(kind="note", text=f"Note: {note}.") for note in findings.get("notes", [])]
    return out


def summarize_findings(findings: dict) -> list[str]:
    """The printable lines of :func:`list_findings`: each finding's text, details indented by two spaces.

    Args:
        findings: the dict :func:`~cortexmap.analysis.atlas.build_atlas` returns.

    Returns:
        One line per finding, each with its effect size, 95% interval and baseline or p-value.
    """
    return [f"  {f.text}" if f.parent else f.text for f in list_findings(findings)]
