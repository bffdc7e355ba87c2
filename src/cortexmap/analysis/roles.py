"""Head roles: a mechanistic name only with the evidence its literature defines; harm alone says "critical".

Two kinds of claim, kept apart:

* **Critical for a task**: the head is *important* for the task in the view
  (:attr:`~cortexmap.analysis.view.RunView.important`: harm under every counterfactual intervention
  of the run). That is all ablation harm can say; it names no mechanism.
* **A mechanistic role** (name mover, copy suppression, induction, ...): the head passes *every*
  required evidence row of the role in :data:`CATALOGUE`, a table of facts, one row per (role,
  evidence): the literature source, what it is measured on (tasks or probes), the statistic, the
  comparator and its bar, one line of description.

Statistics a row can read:

* ``effect``: the view's effects of the task. Comparator ``critical`` (the view's important rule)
  or ``helps`` (removing the head *raises* the metric: effect >= +5% of the clean metric with
  z >= 3 under every claim intervention, :data:`~cortexmap.rules.ACTIVE` on the helpful side).
* ``attn_target``, ``attn_foil``, ``attn_target_minus_foil``, ``attn_cue``, ``dla``,
  ``ov_target`` (a task's rows of the ``evidence`` table) and ``copy``, ``succession`` (its probe
  rows): see :mod:`cortexmap.sweep.evidence`. Comparator ``>`` / ``<`` against ``bar``.
* ``attention:<probe>``: the probe's attention score (``patterns`` table). Comparator ``outlier``.

Rules:

* **Interval bars** (``>`` / ``<``): the head passes when the *familywise* lower (upper) 95% bound
  is above (below) the bar. The bound is the reported 95% bootstrap interval widened to
  Bonferroni level over every test that could name a head at that row: ``m`` candidates of the role
  still in the running (those that passed its earlier required rows) times ``R``, the number of
  evaluated roles with interval bars: ``z = Phi^-1(1 - alpha / (2 m R))`` replaces 1.96 on the
  interval's half-width. A head is named only if it passes every required row, so the chance
  that any head of any role is named on evidence that sits at its bar is at most ``alpha / 2``.
  Fewer than :data:`MIN_PROMPTS` counted prompts fail the row.
* **Probe attention** (``outlier``): the score must exceed ``max(min_probe_score, median + z *
  1.4826 * MAD)`` over all heads, ``z = Phi^-1(1 - alpha / n_heads)``, and its interval's lower end
  must exceed the median head's score: a familywise outlier against the bulk of heads. This bar is a
  robust summary of the same heads, not a random draw, and is called what it is.
* **Units.** A task role is evaluated per (head, task) on each of its tasks present in the run (every
  row on the same task); a probe role per head. A role whose required rows lack their table (no
  ``evidence`` or ``patterns`` table, no ``attn_cue`` because the task's pairs carry no cue) is
  *not evaluated*, never failed.
* Non-required rows (``required=False``) are printed beside the role but decide nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.profiles import PATTERN_COLUMNS
from cortexmap.analysis.records import from_dict, to_dict
from cortexmap.analysis.selection import Z95, require_columns
from cortexmap.analysis.view import RunView
from cortexmap.errors import ResultsError
from cortexmap.heads import HeadId
from cortexmap.rules import ACTIVE

MIN_PROMPTS = 5
EVIDENCE_TABLE_COLUMNS = ("source", "name", "layer", "head", "stat", "value", "ci_low", "ci_high", "n")
TASK_STATS = ("attn_target", "attn_foil", "attn_target_minus_foil", "attn_cue", "dla", "ov_target")
PROBE_STATS = {"copy": "induction", "succession": "successor"}
COMPARATORS = {
    "critical": "critical: harm under every claim intervention (the view's important rule)",
    "helps": "helps: removing it raises the metric by >= 5% with z >= 3 under every claim intervention",
    ">": "familywise 95% lower bound above the bar",
    "<": "familywise 95% upper bound below the bar",
    "outlier": "familywise outlier over heads: above max(floor, median + z x MAD) of the same heads, lower bound "
               "above their median (not a random draw)",
}


@dataclass(frozen=True)
class EvidenceRow:
    """One row of the role catalogue.

    Attributes:
        role: the role's name.
        source: the literature that defines the evidence.
        on: task names (``fnmatch`` patterns) or the probe the statistic is read on.
        statistic: ``effect``, an evidence statistic, or ``attention:<probe>`` (module docstring).
        comparator: ``critical``, ``helps``, ``>``, ``<`` or ``outlier``.
        bar: the value the comparator holds the statistic against.
        description: one line on what the row shows.
        required: whether the role needs it (False: printed beside the role, decides nothing).
    """

    role: str
    source: str
    on: tuple[str, ...]
    statistic: str
    comparator: str
    bar: float
    description: str
    required: bool = True


_IOI = ("ioi",)
_WANG = "Wang et al. 2023, Interpretability in the wild (IOI)"
_COPY_SUP = "McDougall et al. 2023, Copy suppression; Wang et al. 2023 (negative name movers)"
_OLSSON = "Olsson et al. 2022, In-context learning and induction heads"
_COREF = ("pronoun_gender", "entity_tracking")
_FACTS = ("capitals", "landmarks")
_AGREE = ("subject_verb_agreement", "sva_*")
_ARITH = ("arithmetic", "greater_than")

CATALOGUE: tuple[EvidenceRow, ...] = (
    EvidenceRow("name_mover", _WANG, _IOI, "effect", "critical", -0.05,
                "patching or averaging it away harms IOI under every counterfactual intervention"),
    EvidenceRow("name_mover", _WANG, _IOI, "attn_target_minus_foil", ">", 0.0,
                "END attends to the indirect object more than to the subject"),
    EvidenceRow("name_mover", _WANG, _IOI, "attn_target", ">", 0.2, "END attends to the indirect object"),
    EvidenceRow("name_mover", _WANG, _IOI, "ov_target", ">", 0.0, "its OV circuit copies the indirect object's name"),
    EvidenceRow("name_mover", _WANG, _IOI, "dla", ">", 0.0, "it writes IO - S to the logits directly"),
    EvidenceRow("negative_name_mover", _COPY_SUP, _IOI, "effect", "helps", 0.05,
                "removing it raises the IO - S difference under every counterfactual intervention"),
    EvidenceRow("negative_name_mover", _COPY_SUP, _IOI, "attn_target", ">", 0.2, "END attends to the indirect object"),
    EvidenceRow("negative_name_mover", _COPY_SUP, _IOI, "ov_target", "<", 0.0,
                "its OV circuit suppresses the name it attends to"),
    EvidenceRow("negative_name_mover", _COPY_SUP, _IOI, "dla", "<", 0.0, "it writes against IO - S directly"),
    EvidenceRow("induction", _OLSSON, ("induction",), "attention:induction", "outlier", 0.5,
                "a repeated token attends to the token after its earlier occurrence"),
    EvidenceRow("induction", _OLSSON + "; copy score as Wang et al. 2023", ("induction",), "copy", ">", 0.5,
                "the attended token is in the top 5 of what its OV circuit writes"),
    EvidenceRow("previous_token", _OLSSON, ("previous_token",), "attention:previous_token", "outlier", 0.5,
                "each token attends to the one before it (attention defines the role)"),
    EvidenceRow("duplicate_token", _WANG, ("duplicate_token",), "attention:duplicate_token", "outlier", 0.5,
                "a token attends to its earlier copies (attention defines the role)"),
    EvidenceRow("successor", "Gould et al. 2023, Successor heads", ("successor",), "succession", ">", 0.5,
                "from a list member, its OV output ranks the next member first among the list's members"),
    EvidenceRow("successor", "Gould et al. 2023, Successor heads", ("successor",), "attention:successor", "outlier", 0.5,
                "a list member attends to the member before it", required=False),
    EvidenceRow("coreference", "Mathwin et al. 2023 (gendered pronouns); Feng & Steinhardt 2023 (entity binding)",
                _COREF, "effect", "critical", -0.05, "critical for the task under every counterfactual intervention"),
    EvidenceRow("coreference", "Mathwin et al. 2023; Feng & Steinhardt 2023", _COREF, "attn_cue", ">", 0.2,
                "the decision position attends to the antecedent (the pair's cue)"),
    EvidenceRow("coreference", "Mathwin et al. 2023; Feng & Steinhardt 2023", _COREF, "dla", ">", 0.0,
                "it writes the right referent's answer to the logits directly"),
    EvidenceRow("fact_retrieval", "Geva et al. 2023, Dissecting recall of factual associations", _FACTS, "effect",
                "critical", -0.05, "critical for fact recall under every counterfactual intervention"),
    EvidenceRow("fact_retrieval", "Geva et al. 2023 (attribute extraction)", _FACTS, "attn_cue", ">", 0.2,
                "the last position attends to the subject (the pair's cue)"),
    EvidenceRow("fact_retrieval", "Geva et al. 2023 (attribute extraction)", _FACTS, "dla", ">", 0.0,
                "it writes the attribute to the logits directly"),
    EvidenceRow("agreement", "Finlayson et al. 2021, Causal analysis of syntactic agreement", _AGREE, "effect",
                "critical", -0.05, "critical for agreement under every counterfactual intervention"),
    EvidenceRow("agreement", "Finlayson et al. 2021", _AGREE, "attn_cue", ">", 0.2,
                "the verb position attends to the subject (the pair's cue)"),
    EvidenceRow("operand_mover", "Stolfo et al. 2023 (arithmetic); Hanna et al. 2023 (greater-than)", _ARITH, "effect",
                "critical", -0.05, "critical for the computation under every counterfactual intervention"),
    EvidenceRow("operand_mover", "Stolfo et al. 2023; Hanna et al. 2023", _ARITH, "attn_cue", ">", 0.2,
                "the last position attends to the operands (the pair's cues)"),
    EvidenceRow("attention_sink", "Xiao et al. 2024, Efficient streaming LMs with attention sinks", ("sink",),
                "attention:sink", "outlier", 0.5, "attention parked on the first position"),
)

ROW_COLUMNS = ("role", "head_id", "layer", "head", "task", "row", "statistic", "on", "comparator", "value", "ci_low",
               "ci_high", "bound", "bar", "passed", "required", "n", "m")


def catalogue_table(catalogue: tuple[EvidenceRow, ...] = CATALOGUE) -> pd.DataFrame:
    """The catalogue as a table: one row per (role, evidence), ``row`` numbering a role's rows from 0."""
    rows = []
    for role, group in _rows_by_role(catalogue).items():
        for index, r in enumerate(group):
            rows.append({"role": role, "row": index, "source": r.source, "on": ", ".join(r.on),
                         "statistic": r.statistic, "comparator": r.comparator, "bar": r.bar,
                         "rule": COMPARATORS[r.comparator], "description": r.description, "required": r.required})
    return pd.DataFrame(rows)


def _role_order(catalogue: tuple[EvidenceRow, ...]) -> list[str]:
    return list(dict.fromkeys(r.role for r in catalogue))


def _rows_by_role(catalogue: tuple[EvidenceRow, ...]) -> dict[str, list[EvidenceRow]]:
    out: dict[str, list[EvidenceRow]] = {}
    for r in catalogue:
        out.setdefault(r.role, []).append(r)
    return out


def _is_task_role(rows: list[EvidenceRow]) -> bool:
    return any(r.statistic == "effect" or r.statistic in TASK_STATS for r in rows)


# ---------------------------------------------------------------- reading the tables


class _Tables:
    """The view's arrays and its evidence / patterns tables, as ``[heads]`` arrays by (name, statistic)."""

    def __init__(self, view: RunView, evidence: pd.DataFrame | None, patterns: pd.DataFrame | None) -> None:
        self.view = view
        self.n = view.n_layers * view.n_heads
        self.evidence = self._index(evidence, "evidence", EVIDENCE_TABLE_COLUMNS, "value") if evidence is not None else None
        self.patterns = self._index(patterns, "patterns", PATTERN_COLUMNS, "score") if patterns is not None else None
        self.cis = {iv: self._effect_cis(iv) for iv in view.interventions}  # iv -> (low, high, n_prompts)

    def _index(self, table: pd.DataFrame, name: str, columns: tuple[str, ...] | list[str],
               value: str) -> dict[tuple[str, str], dict[str, np.ndarray]]:
        require_columns(table, columns, name)
        if "model" in table.columns and table["model"].nunique() > 1:
            raise ResultsError(f"{name} holds {table['model'].nunique()} models: pass one model's rows")
        flat = (table["layer"].to_numpy() * self.view.n_heads + table["head"].to_numpy()).astype(int)
        if ((flat < 0) | (flat >= self.n)).any():
            raise ResultsError(f"{name} has heads outside {self.view.n_layers} x {self.view.n_heads}: pass the run's table")
        if name == "evidence":
            keys = list(zip(table["name"].astype(str).tolist(), table["stat"].astype(str).tolist()))
        else:
            keys = [(p, "attention:" + p) for p in table["probe"].astype(str).tolist()]
        codes, uniques = pd.factorize(pd.Series([f"{a}\x00{b}" for a, b in keys]))
        numbers = {col: table[src].to_numpy(dtype=float) for col, src in
                   (("value", value), ("ci_low", "ci_low"), ("ci_high", "ci_high"),
                    ("n", "n" if name == "evidence" else "n_prompts"))}
        out = {}
        for code, key in enumerate(uniques):
            index = np.flatnonzero(codes == code)
            arrays = {}
            for col, values in numbers.items():
                arr = np.full(self.n, np.nan)
                arr[flat[index]] = values[index]
                arrays[col] = arr
            out[tuple(key.split("\x00"))] = arrays
        return out

    def _effect_cis(self, iv: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalized 95% interval and prompt-count arrays ``[heads, tasks]`` of one claim intervention."""
        rows = self.view.selected[iv]
        low = np.full((self.n, len(self.view.tasks)), np.nan)
        high = np.full_like(low, np.nan)
        count = np.full_like(low, np.nan)
        col = pd.Index(self.view.tasks).get_indexer(rows["task"].astype(str))
        flat = (rows["layer"].to_numpy() * self.view.n_heads + rows["head"].to_numpy()).astype(int)
        scale = rows["clean"].abs().astype(float).replace(0.0, np.nan).to_numpy()
        low[flat, col] = rows["ci_low"].to_numpy(dtype=float) / scale
        high[flat, col] = rows["ci_high"].to_numpy(dtype=float) / scale
        count[flat, col] = rows["n_prompts"].to_numpy(dtype=float)
        return low, high, count

    def has(self, row: EvidenceRow, name: str) -> str | None:
        """None when ``row`` can be read on ``name``, else why not."""
        if row.statistic == "effect":
            return None if name in self.view.tasks else f"no effects for {name}"
        if row.statistic.startswith("attention:"):
            if self.patterns is None:
                return "no probe scores (patterns table)"
            return None if (name, row.statistic) in self.patterns else f"no {row.statistic} probe scores"
        if self.evidence is None:
            return "no evidence table"
        return None if (name, row.statistic) in self.evidence else f"the evidence table has no {row.statistic} for {name}"


@dataclass
class _Measured:
    """One row read on a role's units (arrays over units)."""

    value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    n: np.ndarray
    bound: np.ndarray
    bar: np.ndarray
    passed: np.ndarray
    m: int


def _read(tables: _Tables, row: EvidenceRow, names: list[str], m_tests: int, alpha: float,
          min_probe_score: float) -> _Measured:
    """Read ``row`` on units ``(name, head)`` name-major, and apply its comparator."""
    view = tables.view
    n = tables.n
    units = len(names) * n
    nan = np.full(units, np.nan)
    if row.statistic == "effect":
        cols = [view.tasks.index(t) for t in names]
        effects = np.stack([view.arrays[iv].effect[:, cols] for iv in view.interventions])  # [iv, heads, names]
        ses = np.stack([view.arrays[iv].se[:, cols] for iv in view.interventions])
        lows = np.stack([tables.cis[iv][0][:, cols] for iv in view.interventions])
        highs = np.stack([tables.cis[iv][1][:, cols] for iv in view.interventions])
        measured = np.isfinite(effects)
        if row.comparator == "critical":
            passed = view.important[:, cols]
            pick = np.argmax(np.where(measured, effects, -np.inf), axis=0)  # the least harmful: the claim's floor
        else:  # helps: helpful under every claim intervention that measured the cell
            with np.errstate(invalid="ignore"):
                helps = ACTIVE.mask(effects, ses) & (effects > 0)
            passed = (helps | ~measured).all(0) & measured.any(0)
            pick = np.argmin(np.where(measured, effects, np.inf), axis=0)
        counts = np.stack([tables.cis[iv][2][:, cols] for iv in view.interventions])
        take = lambda a: np.take_along_axis(a, pick[None], 0)[0].T.reshape(-1)  # noqa: E731  [names * heads]
        return _Measured(take(effects), take(lows), take(highs), take(counts), nan.copy(), np.full(units, row.bar),
                         passed.T.reshape(-1), 0)
    source = tables.patterns if row.statistic.startswith("attention:") else tables.evidence
    assert source is not None  # availability is checked before reading
    parts = [source[(name, row.statistic)] for name in names]
    value = np.concatenate([p["value"] for p in parts])
    low = np.concatenate([p["ci_low"] for p in parts])
    high = np.concatenate([p["ci_high"] for p in parts])
    count = np.concatenate([p["n"] for p in parts])
    with np.errstate(invalid="ignore"):
        if row.comparator == "outlier":
            bars, passed = [], []
            for p in parts:
                score = p["value"]
                typical = float(np.nanmedian(score))
                spread = 1.4826 * float(np.nanmedian(np.abs(score - typical)))
                z_fw = float(norm.isf(alpha / max(int(np.isfinite(score).sum()), 1)))
                bar = max(min_probe_score, typical + z_fw * spread)
                bars.append(np.full(n, bar))
                passed.append((score > bar) & (p["ci_low"] > typical))
            return _Measured(value, low, high, count, low.copy(), np.concatenate(bars), np.concatenate(passed), 0)
        widen = float(norm.isf(alpha / (2 * max(m_tests, 1)))) / Z95
        if row.comparator == ">":
            bound = value - (value - low) * widen
            passed = bound > row.bar
        else:
            bound = value + (high - value) * widen
            passed = bound < row.bar
    passed = passed & np.isfinite(bound) & (count >= MIN_PROMPTS)
    return _Measured(value, low, high, count, bound, np.full(units, row.bar), passed, m_tests)


# ---------------------------------------------------------------- the record


@dataclass(frozen=True)
class Roles:
    """Named roles and task-critical heads of one view (module docstring).

    Attributes:
        catalogue: :func:`catalogue_table`.
        status: one row per role: ``role, verdict`` ("passes", "no head passes", "not evaluated"),
            ``reason, n_named, n_units`` (units tested), ``source``.
        calls: every evidence row of every named (role, head, task): :data:`ROW_COLUMNS` (``task`` is
            the task a task role was named on; None for a probe role; ``bound`` the familywise bound,
            ``m`` the Bonferroni count behind it).
        critical: one row per (task, head) critical for the task: ``task, level, head_id, layer, head``
            and ``effect_<iv>, ci_low_<iv>, ci_high_<iv>`` per claim intervention.
        closest: for each evaluated role without a named head, every evidence row of the unit that
            passed the most required rows: :data:`ROW_COLUMNS` plus ``rows_passed, rows_required,
            failed`` (the first failed row's statistic).
        interventions: the claim's interventions.
        counterfactual: whether they are counterfactual.
        method: the effects' method.
        claim: what the claims rest on (:meth:`RunView.describe`).
        tasks: the view's tasks (each gets a ``critical`` finding).
        alpha: the familywise level of the naming rules.
    """

    catalogue: pd.DataFrame
    status: pd.DataFrame
    calls: pd.DataFrame
    critical: pd.DataFrame
    closest: pd.DataFrame
    interventions: tuple[str, ...]
    counterfactual: bool
    method: str
    claim: str
    tasks: tuple[str, ...] = ()
    alpha: float = 0.05

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Roles:
        return from_dict(cls, data)

    def by_head(self) -> pd.DataFrame:
        """One row per head with a name or a task it is critical for: ``head_id, roles, critical_for``
        (each ``;``-joined, sorted): the atlas's per-head columns."""
        names = self.calls.groupby("head_id")["role"].agg(lambda r: ";".join(sorted(set(r)))) if len(self.calls) else pd.Series(dtype=str)
        crit = self.critical.groupby("head_id")["task"].agg(lambda t: ";".join(sorted(set(t)))) if len(self.critical) else pd.Series(dtype=str)
        out = pd.concat([names.rename("roles"), crit.rename("critical_for")], axis=1).fillna("")
        return out.rename_axis("head_id").reset_index()

    def findings(self) -> list[Finding]:
        """Role findings (each followed by its evidence rows as ``role_evidence``), then ``critical`` per task."""
        out: list[Finding] = []
        for status in self.status.to_dict("records"):
            out += self._role_findings(status)
        out += self._critical_findings()
        return out

    def _role_findings(self, status: dict) -> list[Finding]:
        role = status["role"]
        if status["verdict"] == "not evaluated":
            return [Finding(kind="role", subject=role, verdict="not evaluated", method=self.method,
                            stats={"source": status["source"]},
                            text=f"Role {role}: not evaluated: {status['reason']}.")]
        named = status["verdict"] == "passes"
        rows = self.calls[self.calls["role"] == role] if named else self.closest[self.closest["role"] == role]
        if rows.empty:
            return [Finding(kind="role", subject=role, verdict="no head passes", method=self.method,
                            stats={"n_units": status["n_units"], "source": status["source"]},
                            text=f"Role {role}: no head passes; no head was measured on every row ({status['reason']}).")]
        first = rows[rows["row"] == rows["row"].min()]
        sign = -1.0 if first["comparator"].iloc[0] in ("critical", "<") else 1.0
        best = first.loc[(first["value"].fillna(-np.inf * sign) * sign).idxmax()]
        task = _name(best["task"])
        same_task = np.array([_name(t) == task for t in rows["task"]], dtype=bool)
        unit = rows[(rows["head_id"] == best["head_id"]).to_numpy() & same_task]
        where = f" on {task}" if task else ""
        n_required = int(unit["required"].sum())
        if named:
            heads = sorted(set(rows["head_id"]), key=HeadId.parse)
            rows_text = f"all {n_required} required evidence rows" if n_required > 1 else "its required evidence row"
            text = (f"Role {role}: {len(heads)} head(s) pass {rows_text} "
                    f"({', '.join(heads)}); strongest {best['head_id']}{where}: {best['statistic']} "
                    f"{num(best['value'])} {ci(best['ci_low'], best['ci_high'])}. Source: {status['source']}.")
            stats = {"n_heads": len(heads), "heads": ";".join(heads), "source": status["source"],
                     "rows_required": n_required}
            verdict = "passes"
        else:
            failed = unit[~unit["passed"].astype(bool) & unit["required"].astype(bool)].sort_values("row").iloc[0]
            text = (f"Role {role}: no head passes ({status['n_units']} tested); closest {best['head_id']}{where} passes "
                    f"{int(best['rows_passed'])} of {n_required} required rows and fails {failed['statistic']}: "
                    f"{num(failed['value'])} {ci(failed['ci_low'], failed['ci_high'])} vs bar {num(failed['bar'])} "
                    f"({COMPARATORS[failed['comparator']]}; n = {num(failed['n'], 0)}).")
            if failed["comparator"] == "outlier" and failed["bar"] > 1:
                text += " The bar exceeds the score's maximum of 1: too many heads do this to single one out."
            stats = {"n_units": status["n_units"], "failed_row": failed["statistic"], "rows_passed": int(best["rows_passed"]),
                     "rows_required": n_required, "source": status["source"]}
            verdict = "no head passes"
        head = Finding(kind="role", subject=role, head=best["head_id"], task=task,
                       effect=_float(best["value"]), ci_low=_float(best["ci_low"]), ci_high=_float(best["ci_high"]),
                       baseline=_float(best["bar"]), baseline_label=COMPARATORS[best["comparator"]], verdict=verdict,
                       method=_method(best["statistic"], self.method), stats=stats, text=text)
        details = [self._evidence_finding(role, r) for r in unit.sort_values("row").to_dict("records")]
        return [head] + details

    def _evidence_finding(self, role: str, r: dict) -> Finding:
        measured = _float(r["value"]) is not None
        verdict = ("passes" if r["passed"] else "fails") if measured else "not evaluated"
        bound = "" if _float(r["bound"]) is None or r["comparator"] in ("critical", "helps", "outlier") else \
            ", " + bound_phrase(r["bound"], int(r["m"]))
        extra = "" if r["required"] else " (shown, not required)"
        on = _name(r["task"]) or r["on"]
        return Finding(kind="role_evidence", subject=role, head=r["head_id"], task=on, effect=_float(r["value"]),
                       ci_low=_float(r["ci_low"]), ci_high=_float(r["ci_high"]), baseline=_float(r["bar"]),
                       baseline_label=COMPARATORS[r["comparator"]], verdict=verdict,
                       method=_method(r["statistic"], self.method),
                       stats={"statistic": r["statistic"], "bound": _float(r["bound"]), "n": _float(r["n"]),
                              "m": int(r["m"]), "required": bool(r["required"])},
                       text=f"{r['head_id']} {r['statistic']} on {on}: {num(r['value'])} {ci(r['ci_low'], r['ci_high'])} vs bar "
                            f"{num(r['bar'])} ({COMPARATORS[r['comparator']]}{bound}): {verdict}{extra}.")

    def _critical_findings(self) -> list[Finding]:
        out = []
        ivs = self.interventions
        caveat = "" if self.counterfactual else (
            f"; the claim rests on {' and '.join(ivs)} ablation only, which takes a head off its input distribution")
        for task in self.tasks:
            rows = self.critical[self.critical["task"] == task] if len(self.critical) else self.critical
            if rows.empty:
                out.append(Finding(kind="critical", task=task, method=self.method, stats={"n_heads": 0},
                                   text=f"No head is critical for {task} (harm under every claim intervention: "
                                        f"{' and '.join(ivs)}){caveat}."))
                continue
            best = rows.loc[rows[f"effect_{ivs[0]}"].idxmin()]
            parts = [f"{iv} {num(best[f'effect_{iv}'])} {ci(best[f'ci_low_{iv}'], best[f'ci_high_{iv}'])}" for iv in ivs]
            stats: dict[str, Any] = {"n_heads": int(len(rows)), "counterfactual": self.counterfactual}
            for iv in ivs:
                stats[iv] = _float(best[f"effect_{iv}"])
                stats[f"{iv}_ci_low"] = _float(best[f"ci_low_{iv}"])
                stats[f"{iv}_ci_high"] = _float(best[f"ci_high_{iv}"])
            out.append(Finding(
                kind="critical", task=task, head=best["head_id"], effect=_float(best[f"effect_{ivs[0]}"]),
                ci_low=_float(best[f"ci_low_{ivs[0]}"]), ci_high=_float(best[f"ci_high_{ivs[0]}"]), baseline=0.0,
                baseline_label="no effect", verdict="critical", method=self.method, stats=stats,
                text=f"{len(rows)} head(s) critical for {task} (harm under every claim intervention; no mechanism "
                     f"named); strongest {best['head_id']}: {', '.join(parts)} (effect / |clean|){caveat}."))
        return out


def bound_phrase(bound: float, m: int) -> str:
    """An evidence row's familywise bound in words; ``m = 0`` means no head reached the row (gated rows)."""
    if m > 0:
        return f"familywise bound {num(bound)} over {m} tests"
    return f"bound {num(bound)} (no head reached this row, none was tested on it)"


def _name(value: Any) -> str | None:
    """A task name from a frame cell (None, NaN and "" mean none)."""
    return value if isinstance(value, str) and value else None


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _method(statistic: str, effects_method: str) -> str:
    if statistic == "effect":
        return effects_method
    return "probe" if statistic.startswith("attention:") else "evidence"


def _critical_table(view: RunView, tables: _Tables) -> pd.DataFrame:
    heads, cols = np.nonzero(view.important)
    grid = view.grid
    out = pd.DataFrame({"task": [view.tasks[c] for c in cols], "level": [view.levels[c] for c in cols],
                        "head_id": grid.index[heads].astype(str), "layer": grid["layer"].to_numpy()[heads],
                        "head": grid["head"].to_numpy()[heads]})
    for iv in view.interventions:
        out[f"effect_{iv}"] = view.arrays[iv].effect[heads, cols]
        out[f"ci_low_{iv}"] = tables.cis[iv][0][heads, cols]
        out[f"ci_high_{iv}"] = tables.cis[iv][1][heads, cols]
    return out.sort_values(["task", f"effect_{view.primary}"], kind="stable").reset_index(drop=True)


def roles(view: RunView, *, evidence: pd.DataFrame | None = None, patterns: pd.DataFrame | None = None,
          catalogue: tuple[EvidenceRow, ...] = CATALOGUE, alpha: float = 0.05, min_probe_score: float = 0.5) -> Roles:
    """Name heads by the catalogue's evidence; list the heads critical for each task.

    Args:
        view: the run's view (:func:`~cortexmap.analysis.view.build_view`).
        evidence: the evidence table (:mod:`cortexmap.sweep.evidence`); None reads the view's
            ``evidence`` table.
        patterns: probe attention scores; None reads the view's ``patterns`` table.
        catalogue: the evidence rows (default :data:`CATALOGUE`).
        alpha: familywise level of the naming rules (module docstring).
        min_probe_score: floor of the probe-attention outlier bar.

    Returns:
        The :class:`Roles` record.

    Raises:
        ResultsError: malformed evidence or patterns tables, or an unknown comparator.
    """
    bad = [r for r in catalogue if r.comparator not in COMPARATORS]
    if bad:
        raise ResultsError(f"catalogue row {bad[0].role}/{bad[0].statistic} has comparator {bad[0].comparator!r}; "
                           f"use one of {', '.join(COMPARATORS)}")
    tables = _Tables(view, view.table("evidence") if evidence is None else evidence,
                     view.table("patterns") if patterns is None else patterns)
    by_role = _rows_by_role(catalogue)
    plan: dict[str, tuple[list[str], str]] = {}
    for role, rows in by_role.items():
        plan[role] = _units_of(tables, rows)
    n_interval = sum(1 for role, (names, _) in plan.items() if names
                     and any(r.comparator in (">", "<") and r.required for r in by_role[role]))
    status, calls, closest = [], [], []
    for role, rows in by_role.items():
        names, reason = plan[role]
        source = rows[0].source
        if not names:
            status.append({"role": role, "verdict": "not evaluated", "reason": reason, "n_named": 0, "n_units": 0,
                           "source": source})
            continue
        frame, n_named = _evaluate(tables, rows, names, max(n_interval, 1), alpha, min_probe_score)
        status.append({"role": role, "verdict": "passes" if n_named else "no head passes", "reason": reason,
                       "n_named": n_named, "n_units": len(names) * tables.n, "source": source})
        (calls if n_named else closest).append(frame)
    closest_cols = list(ROW_COLUMNS) + ["rows_passed", "rows_required", "failed"]
    return Roles(catalogue=catalogue_table(catalogue), status=pd.DataFrame(status),
                 calls=_table(calls, list(ROW_COLUMNS)), critical=_critical_table(view, tables),
                 closest=_table(closest, closest_cols),
                 interventions=tuple(view.interventions), counterfactual=bool(view.counterfactual), method=view.method,
                 claim=view.describe(), tasks=tuple(view.tasks), alpha=float(alpha))


def _units_of(tables: _Tables, rows: list[EvidenceRow]) -> tuple[list[str], str]:
    """The names (tasks, or ``[""]`` for a probe role) a role is evaluated on, or ``[]`` and why not."""
    required = [r for r in rows if r.required]
    if _is_task_role(rows):
        patterns = rows[0].on
        present = [t for t in tables.view.tasks if any(fnmatch(t, p) for p in patterns)]
        if not present:
            return [], f"no task of the role in this run ({', '.join(patterns)})"
        reasons = {t: next((why for r in required if (why := tables.has(r, t))), None) for t in present}
        usable = [t for t, why in reasons.items() if why is None]
        if not usable:
            return [], "; ".join(dict.fromkeys(why for why in reasons.values() if why))
        skipped = [t for t, why in reasons.items() if why]
        return usable, (f"tasks without the evidence: {', '.join(skipped)}" if skipped else "")
    why = next((w for r in required if (w := tables.has(r, r.on[0]))), None)
    return ([], why) if why else ([""], "")


def _evaluate(tables: _Tables, rows: list[EvidenceRow], names: list[str], n_roles: int, alpha: float,
              min_probe_score: float) -> tuple[dict[str, np.ndarray], int]:
    """Every row on every unit; the long columns of the named units, or of the closest unit when none is.

    Returns the frame (:data:`ROW_COLUMNS`, plus ``rows_passed, rows_required, failed`` for the
    closest) and the number of named heads.
    """
    n = tables.n
    units = len(names) * n
    alive = np.ones(units, dtype=bool)
    passed_required = np.zeros(units, dtype=int)
    first_fail = np.full(units, len(rows))
    margin_at_fail = np.full(units, -np.inf)
    measured = []
    for index, row in enumerate(rows):
        on = names if names != [""] else [row.on[0]]
        m = int(alive.sum()) * n_roles
        if row.required or tables.has(row, on[0]) is None:
            got = _read(tables, row, on, m, alpha, min_probe_score)
        else:  # an optional row without its table: shown as not measured
            got = _Measured(*(np.full(units, np.nan) for _ in range(6)), np.zeros(units, dtype=bool), m)
        if row.required:
            passed_required += got.passed
            newly = ~got.passed & (first_fail == len(rows))
            first_fail[newly] = index
            margin_at_fail[newly] = _margin(row, got)[newly]
            alive &= got.passed
        measured.append(got)
    if alive.any():
        chosen = np.flatnonzero(alive)
        return _frame(tables, rows, names, measured, chosen), len({int(u) % n for u in chosen})
    near = int(np.lexsort((margin_at_fail, first_fail, passed_required))[-1])
    frame = _frame(tables, rows, names, measured, np.array([near]))
    frame["rows_passed"] = np.full(len(rows), int(passed_required[near]))
    frame["rows_required"] = np.full(len(rows), sum(r.required for r in rows))
    frame["failed"] = np.full(len(rows), rows[int(first_fail[near])].statistic, dtype=object)
    return frame, 0


def _frame(tables: _Tables, rows: list[EvidenceRow], names: list[str], measured: list[_Measured],
           chosen: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`ROW_COLUMNS` columns (numpy) of the ``chosen`` units, every evidence row of each, unit-major."""
    n = tables.n
    k, r = len(chosen), len(rows)
    unit = np.repeat(chosen, r)  # unit-major: all rows of a unit together
    index = np.tile(np.arange(r), k)
    heads = unit % n
    grid = tables.view.grid

    def per_row(values: list[Any]) -> np.ndarray:
        return np.asarray(values, dtype=object)[index]

    def measured_col(name: str) -> np.ndarray:
        stacked = np.stack([getattr(got, name)[chosen] for got in measured], axis=1)  # [k, r]
        return stacked.reshape(-1)

    return {
        "role": np.full(k * r, rows[0].role, dtype=object), "head_id": grid.index.to_numpy()[heads].astype(object),
        "layer": grid["layer"].to_numpy()[heads], "head": grid["head"].to_numpy()[heads],
        "task": np.array([names[u // n] or None for u in unit], dtype=object), "row": index,
        "statistic": per_row([x.statistic for x in rows]), "on": per_row([", ".join(x.on) for x in rows]),
        "comparator": per_row([x.comparator for x in rows]), "value": measured_col("value"),
        "ci_low": measured_col("ci_low"), "ci_high": measured_col("ci_high"), "bound": measured_col("bound"),
        "bar": measured_col("bar"), "passed": measured_col("passed").astype(bool),
        "required": np.array([x.required for x in rows])[index], "n": measured_col("n"),
        "m": np.array([got.m for got in measured])[index],
    }


def _table(parts: list[dict[str, np.ndarray]], columns: list[str]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame({c: np.concatenate([p[c] for p in parts]) for c in columns})


def _margin(row: EvidenceRow, got: _Measured) -> np.ndarray:
    """How close each unit came to passing ``row`` (larger is closer)."""
    with np.errstate(invalid="ignore"):
        if row.comparator == "critical":
            out = -got.value
        elif row.comparator == "helps":
            out = got.value
        elif row.comparator == "<":
            out = got.bar - got.bound
        elif row.comparator == ">":
            out = got.bound - got.bar
        else:
            out = got.value - got.bar
    return np.nan_to_num(out, nan=-np.inf)
