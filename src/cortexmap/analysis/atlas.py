"""The atlas: every analysis of one model's results, as one per-head table and one findings dict.

:func:`build_atlas` runs profiles, functional groups, layer bands and their hypothesis test, named
roles, specialization, task adaptivity and, when their inputs are given, regulator heads and
redundancy. It returns

* a DataFrame with one row per head of the grid (``ATLAS_COLUMNS`` plus ``probe:<probe>`` columns);
* a JSON-serializable findings dict (NaN -> None, numpy scalars -> Python) holding every
  statistic with its interval and baseline, ``not_evaluated`` (what could not be tested and why)
  and ``notes`` (the settings every number depends on). :func:`cortexmap.analysis.summary.summarize_findings` turns it into printable lines.

Bootstrap counts: ``n_boot`` for depth and regulator intervals; groups use ``min(n_boot, 100)``
replicates and 50 null data sets (each needs a full clustering).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from cortexmap.analysis.adaptivity import task_depths
from cortexmap.analysis.bands import DEFAULT_LEVEL_ORDER, band_hypothesis, layer_bands, level_depths
from cortexmap.analysis.groups import functional_groups
from cortexmap.analysis.mistakes import MIN_GROUP, edge_rows, error_contrasts, error_summary, head_rows
from cortexmap.analysis.profiles import probe_matrix
from cortexmap.analysis.regulation import regulation_tests
from cortexmap.analysis.regulators import condition_contrasts, regulator_scores
from cortexmap.analysis.roles import closest_candidates, evaluated_roles, passing_roles, role_evidence
from cortexmap.analysis.selection import effect_arrays, importance_of, important_mask, select_effects
from cortexmap.analysis.summary import list_findings
from cortexmap.analysis.specialization import pairwise_interactions, redundancy_summary, specialization_index, specialization_summary
from cortexmap.errors import ResultsError
from cortexmap.results.layout import CIRCUIT_PROMPTS, INFLUENCE, PAIRS, REGULATION, SCREEN_CONDITION

ATLAS_COLUMNS = ("head_id", "layer", "head", "rel_depth", "group", "group_name", "dominant_level", "top_task",
                 "top_effect", "top_ci_low", "top_ci_high", "top_significant", "roles", "specialization",
                 "regulator_score")
N_TOP_REGULATORS = 10


def to_jsonable(value: Any) -> Any:
    """Convert DataFrames, numpy values and NaN into plain JSON-ready Python (NaN -> None)."""
    if isinstance(value, pd.DataFrame):
        return [to_jsonable(r) for r in value.to_dict("records")]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [to_jsonable(v) for v in list(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _head_columns(effects: pd.DataFrame, n_layers: int, n_heads: int, intervention: str | None,
                  method: str | None) -> pd.DataFrame:
    """Per head: dominant level and top task by importance, with the top task's interval."""
    selected = select_effects(effects, intervention=intervention, method=method)
    arrays = effect_arrays(selected, n_layers, n_heads)
    importance = importance_of(arrays.effect)
    significant = important_mask(arrays.effect, arrays.se)
    top = importance.argmax(axis=1)
    has = importance.max(axis=1) > 0
    rows = np.arange(len(top))
    scale = arrays.clean_abs[rows, top]
    lookup = selected.set_index(["layer", "head", "task"])[["ci_low", "ci_high"]]
    levels = sorted(set(arrays.levels))
    by_level = np.stack([importance[:, [j for j, lev in enumerate(arrays.levels) if lev == level]].mean(axis=1)
                         for level in levels], axis=1)
    out = pd.DataFrame(index=arrays.grid.index)
    out["dominant_level"] = [levels[i] if h else None for i, h in zip(by_level.argmax(axis=1), significant.any(axis=1))]
    out["top_task"] = [arrays.tasks[j] if h else None for j, h in zip(top, has)]
    out["top_effect"] = np.where(has, arrays.effect[rows, top], np.nan)
    bounds = [lookup.loc[(lay, hd, arrays.tasks[j])].to_numpy(dtype=float) if h else (np.nan, np.nan)
              for lay, hd, j, h in zip(arrays.grid["layer"], arrays.grid["head"], top, has)]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["top_ci_low"] = np.array([b[0] for b in bounds]) / scale
        out["top_ci_high"] = np.array([b[1] for b in bounds]) / scale
    out["top_significant"] = has & significant[rows, top]
    return out


@dataclass(frozen=True)
class AtlasOptions:
    """How :func:`build_atlas` reads the effects and sizes its statistics.

    Attributes:
        intervention: the intervention whose rows are read (None: zero ablation when present;
            see :func:`~cortexmap.analysis.selection.select_effects`).
        method: ``"exact"``, ``"screen"`` or ``"attribution"`` rows (None: exact when present).
        n_boot: bootstrap replicates of every interval.
        n_perm: permutations of each null.
        seed: random seed; every analysis derives its own from it.
    """

    intervention: str | None = None
    method: str | None = None
    n_boot: int = 500
    n_perm: int = 2000
    seed: int = 0


class Atlas(NamedTuple):
    """The atlas of one model: a row per head (``table``) and the JSON-ready ``findings`` dict.

    Unpacks as ``table, findings = build_atlas(...)``; in Jupyter it displays its findings.
    """

    table: pd.DataFrame
    findings: dict

    def _repr_html_(self) -> str:
        items = "".join(f"<li style='margin-left:{2 if f.parent else 0}em'>{html.escape(f.text)}</li>"
                        for f in list_findings(self.findings))
        return f"<div><b>cortexmap atlas: {len(self.table)} heads</b><ul>{items}</ul></div>"


def _error_contrasts(prompt_effects: pd.DataFrame | None, circuit_prompts: pd.DataFrame | None, selection: dict,
                     n_boot: int, n_perm: int, seed: int) -> tuple[list[dict], list[str]]:
    """Why the model errs: per task, the exact heads' right/wrong contrasts, then the traced circuits' edges'."""
    heads, reason = head_rows(prompt_effects, selection["intervention"], selection["alpha"])
    out, notes = [], [reason] if reason else []
    for kind, rows in (("head", heads), ("edge", edge_rows(circuit_prompts))):
        contrasts, thin = error_contrasts(rows, n_boot=n_boot, n_perm=n_perm, seed=seed)
        out += error_summary(contrasts, kind)
        if thin:
            notes.append(f"why the model errs ({kind}s): fewer than {MIN_GROUP} right or wrong prompts on "
                         + ", ".join(thin))
    return out, notes


def build_atlas(
    run: Any,
    *,
    shape: tuple[int, int] | None = None,
    patterns: pd.DataFrame | None = None,
    influence: pd.DataFrame | None = None,
    pairs: pd.DataFrame | None = None,
    prompt_effects: pd.DataFrame | None = None,
    audit: dict | None = None,
    options: AtlasOptions | None = None,
) -> Atlas:
    """Run every analysis on one model's results.

    Args:
        run: a loaded run (:func:`~cortexmap.results.load_results`), which supplies the shape, the
            patterns, the per-prompt effects, the audit and any stored influence / pairs tables
            (``cortexmap analyze`` calls it so), or an effects table of one model (docs/schema.md)
            with ``shape`` and the optional tables given here. A table given here replaces the run's.
        shape: ``(n_layers, n_heads)`` of the model, with an effects table.
        patterns: probe table of the same model.
        influence: influence measurements (see :mod:`cortexmap.analysis.regulators`).
        pairs: joint-ablation table (see :mod:`cortexmap.analysis.specialization`).
        prompt_effects: per-prompt effects for the bootstraps.
        audit: the ``screen`` method's pooled audit (manifest ``audit``), copied into the findings.
        options: which rows are read and the sizes of the statistics (:class:`AtlasOptions`).

    Returns:
        An :class:`Atlas`: the per-head table and the JSON-serializable findings dict.

    Raises:
        ResultsError: an effects table without ``shape``.
    """
    opts = options or AtlasOptions()
    intervention, method, n_boot, n_perm, seed = opts.intervention, opts.method, opts.n_boot, opts.n_perm, opts.seed
    if isinstance(run, pd.DataFrame):
        effects = run
        if shape is None:
            raise ResultsError("build_atlas needs shape=(n_layers, n_heads) with an effects table: pass the "
                               "manifest's shape, or pass the loaded run")
    circuit_prompts = regulation = None  # the traced circuits' verified edges per prompt; the edge regulator test
    if not isinstance(run, pd.DataFrame):
        circuit_prompts, regulation = run.table(CIRCUIT_PROMPTS), run.table(REGULATION)
        effects, shape = run.effects, shape or run.shape
        patterns = patterns if patterns is not None else (run.patterns if len(run.patterns) else None)
        prompt_effects = prompt_effects if prompt_effects is not None else run.prompt_effects()
        audit = audit if audit is not None else run.manifest.get("audit")
        influence = influence if influence is not None else run.table(INFLUENCE)
        pairs = pairs if pairs is not None else run.table(PAIRS)
    n_layers, n_heads = shape
    selected = select_effects(effects, intervention=intervention, method=method)
    selection = selected.attrs["selection"]
    kw = {"intervention": selection["intervention"], "method": selection["method"]}
    notes: list[str] = []
    method_notes = [f"intervention {selection['intervention']!r}, method {selection['method']!r}; importance = "
                    "max(0, -effect_normalized); important = harmful with z <= -3"]
    if "screened_out" in selected and selected["screened_out"].any():
        measured = selected.loc[~selected["screened_out"]].groupby("task").size()
        method_notes.append(f"exact rows cover {measured.min()}-{measured.max()} heads per task (verified in screen "
                            "order, plus the audit sample); every other head was screened out below the bar and "
                            "counts as having no effect")
    if audit and audit.get("rate") is not None:
        method_notes.append(f"screen audit in the manifest: miss rate {audit['rate']:.3f} "
                            f"(95% CI {audit['ci_low']:.3f}-{audit['ci_high']:.3f}) over {audit['audited']} audited heads")
    if prompt_effects is None:
        method_notes.append("no per-prompt effects: intervals use the normal approximation of each reported 95% interval")

    groups = functional_groups(effects, n_layers, n_heads, prompt_effects=prompt_effects, n_boot=min(n_boot, 100),
                               n_null=50, seed=seed, **kw)
    hypothesis = band_hypothesis(effects, n_layers, n_heads, prompt_effects=prompt_effects, n_perm=n_perm,
                                 n_boot=n_boot, seed=seed + 1, **kw)
    depths = level_depths(effects, n_layers, n_heads, prompt_effects=prompt_effects, n_boot=n_boot, seed=seed + 1, **kw)
    bands = layer_bands(effects, n_layers, n_heads, prompt_effects=prompt_effects, n_boot=n_boot, seed=seed + 1, **kw)
    evidence_rows = role_evidence(effects, patterns, **kw)
    roles = passing_roles(evidence_rows)
    evidence = evaluated_roles(selected, patterns)
    spec = specialization_index(effects, n_layers, n_heads, **kw)
    spec_summary = specialization_summary(effects, n_layers, n_heads, n_boot=n_boot, n_perm=min(n_perm, 1000),
                                          seed=seed + 2, **kw)
    adaptivity = task_depths(effects, n_layers, n_heads, prompt_effects=prompt_effects, n_boot=n_boot, seed=seed + 3, **kw)

    missing_levels = sorted(set(DEFAULT_LEVEL_ORDER) - set(selected["level"].astype(str)))
    if missing_levels:
        notes.append(f"levels without tasks in this run: {', '.join(missing_levels)}")
    if hypothesis["verdict"] == "not evaluated":
        notes.append(f"layer-band hypothesis not evaluated: {hypothesis['note']}")
    unevaluated = sorted(role for role, found in evidence.items() if not found)
    if unevaluated:
        notes.append(f"roles not evaluated (no task or probe in this run): {', '.join(unevaluated)}")
    thin = adaptivity.loc[adaptivity["lean"] == "not evaluated", "task"].tolist()
    if thin:
        notes.append(f"tasks with fewer than 3 important heads, depth not compared: {', '.join(thin)}")

    atlas = groups["assignments"].set_index("head_id")[["layer", "head", "rel_depth", "group", "group_name"]]
    atlas = atlas.join(_head_columns(effects, n_layers, n_heads, kw["intervention"], kw["method"]))
    role_sets = roles.groupby("head_id")["role"].agg(lambda r: ";".join(sorted(set(r))))
    atlas["roles"] = role_sets.reindex(atlas.index).fillna("")
    atlas["specialization"] = spec.set_index("head_id")["specialization"].reindex(atlas.index)
    atlas["regulator_score"] = np.nan

    regulators: dict | None = None
    if influence is not None and len(influence):
        # A "screen" of every head (few prompts) is the baseline population: the candidate test
        # compares each head with all heads, not with the few measured on the condition prompts.
        screened = influence["condition"] == SCREEN_CONDITION
        scored = influence[screened] if screened.any() else influence
        scores = regulator_scores(scored, condition=SCREEN_CONDITION if screened.any() else None, n_boot=n_boot, seed=seed + 4)
        atlas["regulator_score"] = scores.set_index("head_id")["score"].reindex(atlas.index)
        measured = influence[~screened]
        contrasts = condition_contrasts(measured if len(measured) else influence, n_boot=n_boot,
                                        n_perm=min(n_perm, 1000), seed=seed + 5)
        # Keep the contrasts worth reading: the top heads' and any significant one.
        keep = contrasts["head_id"].isin(set(scores["head_id"].head(N_TOP_REGULATORS))) | (contrasts["q_value"] < 0.05)
        regulators = {"top": scores.head(N_TOP_REGULATORS), "n_sources": int(len(scores)), "contrasts": contrasts[keep]}
        if contrasts.empty:
            notes.append("no condition pairs to contrast in the influence table")
    else:
        notes.append("regulator heads not evaluated: no influence measurements were given")
    redundancy: dict | None = None
    if pairs is not None and len(pairs):
        redundancy = redundancy_summary(pairs, n_boot=n_boot, seed=seed + 6)
        redundancy["pairs"] = pairwise_interactions(pairs)
    else:
        notes.append("redundancy not evaluated: no joint-ablation pairs were given")
    # seeded as cortexmap circuit / regulate seed them, so their printed numbers are these findings'
    errors, error_notes = _error_contrasts(prompt_effects, circuit_prompts, selection, n_boot, n_perm, seed)
    notes += error_notes

    atlas = atlas.reset_index().loc[:, list(ATLAS_COLUMNS)]
    atlas = pd.concat([atlas, probe_matrix(patterns, n_layers, n_heads).reset_index(drop=True)], axis=1)
    findings = {
        "model": selection["model"], "selection": selection, "n_layers": int(n_layers), "n_heads": int(n_heads),
        "groups": {k: v for k, v in groups.items() if k != "assignments"},
        "bands": {"hypothesis": hypothesis, "level_depths": depths, "segmentation": bands,
                  "depth_baseline": 0.5},
        "roles": {"table": roles, "evaluated": evidence, "closest": closest_candidates(evidence_rows),
                  "rule": "task: harmful effect with Bonferroni p < 0.05 and |effect| above the 95th percentile of "
                          "all heads; probe: score above max(0.5, 95th percentile, median + z*MAD)"},
        "specialization": spec_summary,
        "adaptivity": adaptivity,
        "regulators": regulators,
        "redundancy": redundancy,
        "errors": errors,
        "regulation": regulation_tests(regulation, n_boot=n_boot, seed=seed),
        "not_evaluated": notes,
        "notes": method_notes,
        "audit": audit,
    }
    findings = to_jsonable(findings)
    findings["finding_list"] = [f.to_dict() for f in list_findings(findings)]  # typed records (analysis.findings)
    return Atlas(atlas, findings)
