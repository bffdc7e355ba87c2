"""Named head roles, each granted only on stated evidence against a random-head baseline.

Roles are data: :data:`ROLE_TASKS` maps a role to the tasks that evidence it (``fnmatch``
patterns, so ``"sva_*"`` covers every agreement-across-X task) and :data:`ROLE_PROBES` maps a
role to an attention-pattern probe. A task or probe missing from a run means the role is not
evaluated (:func:`evaluated_roles` says which), never that no head has it.

Rules (``q`` = ``percentile``, default 95):

* **Task roles.** A head has the role on task t when (a) its effect is harmful and clearly
  non-zero: ``effect_normalized < 0`` and the two-sided normal p-value (z = effect / se, se from
  the reported 95% interval) is below ``alpha``, Bonferroni-corrected over the heads measured on t
  when ``familywise`` (default; otherwise the reported interval must exclude zero:
  ``ci_high < 0``); and (b) it beats random heads: ``|effect_normalized|`` above the q-th
  percentile of ``|effect_normalized|`` over all heads on t (the "baseline" column). Because the
  baseline is drawn from the same heads, at most ``100 - q`` percent of heads can pass (b).
* **Probe roles.** A head has the role when its score exceeds ``max(min_probe_score, q-th
  percentile of that probe's scores over all heads, median + z * 1.4826 * MAD)`` and its
  interval's lower end exceeds the median head's score. The last term treats the bulk of heads as
  the random-head null (robust centre and scale) and asks for a familywise outlier:
  ``z = Phi^-1(1 - alpha / n_heads)``.

``percentile`` in the output is the head's percentile rank (share of heads with a value <= its
own, in %). :func:`role_evidence` keeps every head's evidence with a ``passed`` flag;
:func:`assign_roles` keeps the passing rows, and :func:`closest_candidates` names, for a role no
head passes, the head that came closest, so that a "no" is printed with its numbers.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Mapping

import numpy as np
import pandas as pd
from scipy.stats import norm

from cortexmap.analysis.profiles import PATTERN_COLUMNS
from cortexmap.analysis.selection import require_columns, select_effects
from cortexmap.errors import ResultsError
from cortexmap.heads import HeadId

ROLE_TASKS: dict[str, tuple[str, ...]] = {
    "ioi_name_mover": ("ioi",),
    "coreference": ("pronoun_gender", "entity_tracking"),
    "subject_verb_agreement": ("subject_verb_agreement", "sva_*"),
    "article_noun": ("article_agreement",),
    "number_date": ("number_format", "date_format"),
    "fact_retrieval": ("capitals", "landmarks", "two_hop"),
    "arithmetic": ("arithmetic", "greater_than"),
}
ROLE_PROBES: dict[str, str] = {
    "previous_token": "previous_token",
    "induction": "induction",
    "duplicate_token": "duplicate_token",
    "successor": "successor",
    "attention_sink": "sink",
}
ROLE_COLUMNS = ("head_id", "layer", "head", "role", "kind", "evidence", "effect_or_score", "ci_low", "ci_high",
                "baseline", "percentile", "p_value")


def _percentile_rank(values: np.ndarray) -> np.ndarray:
    """Share (in %) of finite values <= each value."""
    finite = np.sort(values[np.isfinite(values)])
    return 100.0 * np.searchsorted(finite, values, side="right") / max(len(finite), 1)


def evaluated_roles(
    effects: pd.DataFrame | None,
    patterns: pd.DataFrame | None,
    *,
    role_tasks: Mapping[str, tuple[str, ...]] | None = None,
    role_probes: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Which evidence each role has in this run.

    Args:
        effects: effects table (or None).
        patterns: probe table (or None).
        role_tasks: role -> task patterns; None uses :data:`ROLE_TASKS`.
        role_probes: role -> probe; None uses :data:`ROLE_PROBES`.

    Returns:
        Role -> tasks/probes present (an empty list: the role was not evaluated).
    """
    tasks = sorted(map(str, effects["task"].unique())) if effects is not None and len(effects) else []
    probes = set(map(str, patterns["probe"].unique())) if patterns is not None and len(patterns) else set()
    out = {role: [t for t in tasks if any(fnmatch(t, pat) for pat in pats)]
           for role, pats in (ROLE_TASKS if role_tasks is None else role_tasks).items()}
    out.update({role: [probe] if probe in probes else [] for role, probe in (ROLE_PROBES if role_probes is None else role_probes).items()})
    return out


def _task_evidence(selected: pd.DataFrame, evidence: Mapping[str, list[str]], percentile: float, alpha: float,
                   familywise: bool) -> list[dict]:
    """One row per (role, task, head measured on it), with ``passed``."""
    rows = []
    clean_abs = selected["clean"].abs().replace(0.0, np.nan)
    for role, tasks in evidence.items():
        for task in tasks:
            sub = selected[selected["task"] == task]
            effect = sub["effect_normalized"].to_numpy(dtype=float)
            magnitude = np.abs(effect)
            baseline = float(np.nanpercentile(magnitude, percentile))
            ranks = _percentile_rank(magnitude)
            with np.errstate(invalid="ignore", divide="ignore"):
                z = effect / sub["se_normalized"].to_numpy(dtype=float)
            p_value = 2 * norm.sf(np.abs(z))
            if familywise:
                p_value = np.minimum(1.0, p_value * np.isfinite(effect).sum())
                clear = p_value < alpha
            else:
                clear = sub["ci_high"].to_numpy(dtype=float) < 0
            passed = (effect < 0) & clear & (magnitude > baseline)
            scale = clean_abs.loc[sub.index].to_numpy(dtype=float)
            for i, (layer, head, low, high) in enumerate(zip(sub["layer"], sub["head"], sub["ci_low"], sub["ci_high"])):
                rows.append({"layer": int(layer), "head": int(head), "role": role, "kind": "task",
                             "evidence": task, "effect_or_score": float(effect[i]),
                             "ci_low": float(low / scale[i]), "ci_high": float(high / scale[i]),
                             "baseline": baseline, "percentile": float(ranks[i]), "p_value": float(p_value[i]),
                             "passed": bool(passed[i])})
    return rows


def _probe_evidence(patterns: pd.DataFrame, evidence: Mapping[str, list[str]], percentile: float,
                    min_probe_score: float, alpha: float) -> list[dict]:
    """One row per (role, probe, head scored by it), with ``passed``."""
    rows = []
    for role, probes in evidence.items():
        for probe in probes:
            sub = patterns[patterns["probe"] == probe]
            score = sub["score"].to_numpy(dtype=float)
            typical = float(np.nanmedian(score))
            spread = 1.4826 * float(np.nanmedian(np.abs(score - typical)))
            z_fw = float(norm.isf(alpha / max(int(np.isfinite(score).sum()), 1)))
            threshold = max(min_probe_score, float(np.nanpercentile(score, percentile)), typical + z_fw * spread)
            ranks = _percentile_rank(score)
            passed = (score > threshold) & (sub["ci_low"].to_numpy(dtype=float) > typical)
            for i, (layer, head, low, high) in enumerate(zip(sub["layer"], sub["head"], sub["ci_low"], sub["ci_high"])):
                rows.append({"layer": int(layer), "head": int(head), "role": role, "kind": "probe",
                             "evidence": probe, "effect_or_score": float(score[i]), "ci_low": float(low),
                             "ci_high": float(high), "baseline": threshold, "percentile": float(ranks[i]),
                             "p_value": float("nan"), "passed": bool(passed[i])})
    return rows


def role_evidence(
    effects: pd.DataFrame,
    patterns: pd.DataFrame | None,
    *,
    intervention: str | None = None,
    method: str | None = None,
    percentile: float = 95.0,
    alpha: float = 0.05,
    familywise: bool = True,
    min_probe_score: float = 0.5,
    role_tasks: Mapping[str, tuple[str, ...]] | None = None,
    role_probes: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Every head's evidence for every evaluated role, passing or not.

    Arguments as :func:`assign_roles`.

    Raises:
        ResultsError: malformed tables, or ``patterns`` holding several models.

    Returns:
        Long DataFrame with ``ROLE_COLUMNS`` plus ``passed`` (the module's rules): one row per
        (head, role, task or probe) measured.
    """
    selected = select_effects(effects, intervention=intervention, method=method)
    evidence = evaluated_roles(selected, patterns, role_tasks=role_tasks, role_probes=role_probes)
    tasks = ROLE_TASKS if role_tasks is None else role_tasks
    rows = _task_evidence(selected, {r: evidence[r] for r in tasks}, percentile, alpha, familywise)
    if patterns is not None and len(patterns):
        require_columns(patterns, PATTERN_COLUMNS, "patterns")
        if "model" in patterns.columns and patterns["model"].nunique() > 1:
            raise ResultsError(f"patterns holds {patterns['model'].nunique()} models: pass one model's rows")
        probes = ROLE_PROBES if role_probes is None else role_probes
        rows += _probe_evidence(patterns, {r: evidence[r] for r in probes}, percentile, min_probe_score, alpha)
    out = pd.DataFrame(rows, columns=[c for c in ROLE_COLUMNS if c != "head_id"] + ["passed"])
    out.insert(0, "head_id", [str(HeadId(int(a), int(b))) for a, b in zip(out["layer"], out["head"])])
    return out


def closest_candidates(evidence: pd.DataFrame) -> pd.DataFrame:
    """For each role no head passes, the head that comes closest, with its evidence.

    "Closest" is the most harmful effect for a task role (most negative ``effect_or_score``) and
    the highest score for a probe role: what a reader needs to see how far from the bar the best
    head was, instead of a bare "no head".

    Args:
        evidence: :func:`role_evidence` output.

    Returns:
        One row per role without a passing head (``ROLE_COLUMNS``); empty when every evaluated
        role has one.
    """
    nobody = ~evidence.groupby("role")["passed"].transform("any").astype(bool)
    rest = evidence[nobody & evidence["effect_or_score"].notna()]
    key = np.where(rest["kind"] == "task", rest["effect_or_score"], -rest["effect_or_score"])
    best = rest.assign(_key=key).sort_values("_key", kind="stable").groupby("role", sort=True).head(1)
    return best.loc[:, list(ROLE_COLUMNS)].sort_values("role").reset_index(drop=True)


def assign_roles(
    effects: pd.DataFrame,
    patterns: pd.DataFrame | None,
    *,
    intervention: str | None = None,
    method: str | None = None,
    percentile: float = 95.0,
    alpha: float = 0.05,
    familywise: bool = True,
    min_probe_score: float = 0.5,
    role_tasks: Mapping[str, tuple[str, ...]] | None = None,
    role_probes: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Every (head, role, evidence) that passes the module's evidence rules.

    Args:
        effects: effects table of one model.
        patterns: probe table of the same model, or None.
        intervention: see :func:`~cortexmap.analysis.selection.select_effects`.
        method: see :func:`~cortexmap.analysis.selection.select_effects`.
        percentile: q of the random-head baseline.
        alpha: significance level of "clearly non-zero".
        familywise: Bonferroni-correct over heads (else use the reported 95% interval).
        min_probe_score: floor of the probe threshold.
        role_tasks: role -> task patterns; None uses :data:`ROLE_TASKS`.
        role_probes: role -> probe; None uses :data:`ROLE_PROBES`.

    Raises:
        ResultsError: malformed tables, or ``patterns`` holding several models.

    Returns:
        Long DataFrame with ``ROLE_COLUMNS`` (task roles: ``effect_or_score`` and the interval are
        ``effect_normalized`` units; probe roles: probe scores); a head may have several rows or
        none.
    """
    evidence = role_evidence(effects, patterns, intervention=intervention, method=method, percentile=percentile,
                             alpha=alpha, familywise=familywise, min_probe_score=min_probe_score,
                             role_tasks=role_tasks, role_probes=role_probes)
    return passing_roles(evidence)


def passing_roles(evidence: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`role_evidence` that pass, as :func:`assign_roles` returns them."""
    out = evidence.loc[evidence["passed"], list(ROLE_COLUMNS)]
    return out.sort_values(["role", "evidence", "percentile"], ascending=[True, True, False], kind="stable").reset_index(drop=True)
