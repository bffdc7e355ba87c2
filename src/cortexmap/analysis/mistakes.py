"""Why the model errs: a stratified, margin-adjusted screen, then a causal test by patching right into wrong.

A prompt is *right* when its clean metric (logit difference target - foil, or its multi-token /
answer-set form: the *margin*) is above 0, *wrong* otherwise. Two things make the naive right/wrong
contrast of a unit's per-prompt effects (a head under a claim intervention, a verified circuit edge)
misleading, and both are handled here:

* **Templates.** A task renders its prompts from a few templates (``variant``), and accuracy is a
  property of a template far more than of a prompt (SmolLM2 gets 8 of 9 "Yesterday I walked. Today
  I" prompts wrong and every prompt of the other two templates right), so right vs wrong is mostly
  template vs template. Every contrast is *within* template: a template contributes only if it has
  at least :data:`MIN_PER_TEMPLATE` right and as many wrong prompts (with one prompt on a side, the
  template's step rests on that prompt alone, which the fit then matches exactly). A table without a ``variant`` column (a circuit's
  ``circuit_prompts``, runs mapped before variants were recorded) is one template, and every
  finding says so.
* **The margin.** Wrong prompts have negative margins by definition, and a unit whose effect is
  proportional to the margin differs between the groups for that reason alone. Right and wrong
  prompts never share a margin, so a comparison at matched margins could only use the few prompts
  near 0; instead each template's effects are regressed on the margin, and the test is of the step
  at margin 0 beyond that line (a regression-discontinuity contrast)::

      effect_i = a_template + b_template * margin_i + step * wrong_i + noise

  ``step`` is common to the templates, so its estimate is the precision-weighted combination of the
  within-template steps (ordinary least squares weights). It assumes the effect is linear in the
  margin within a template; a unit whose effect bends at 0 is flagged too, which is why a head is
  only said to *fail on wrong prompts* when the causal test agrees.

**Statistics of the screen.** The p-value is two-sided, from Freedman-Lane permutations: the
residuals of the model without the step are permuted *within template* and the step's t-statistic
recomputed with the observed design (shuffling the right/wrong labels instead would pair wrong
labels with positive margins, a design the data never has). The 95% interval is the one this test
inverts, ``step +- q * se`` with ``q`` the 95th percentile of the permutation ``|t|``: on simulated
data of these sizes it covered 0.94-0.96, where a percentile bootstrap resampling prompts within
template x group covered 0.90-0.93 (strata of 2-5 prompts resample too little spread);
tests/analysis/test_mistakes.py checks the coverage. A task is *underpowered*, reported with its
counts per template and not tested, when its usable templates hold fewer than :data:`MIN_WRONG`
wrong or :data:`MIN_RIGHT` right prompts or leave fewer than :data:`MIN_DF` residual degrees of
freedom. Benjamini-Hochberg q-values run over every screen test of the record (all tasks, units and
interventions together). ``mde`` is the step a unit's test detects with 80% power at p < 0.05 (t
approximation): the size a "no difference" can rule out.

**The causal test** (:func:`flip_tests`, data from :func:`cortexmap.sweep.flips.measure_flips`).
For a candidate head, every wrong prompt is rerun with the head's output (all positions) taken from
right prompts of the same template and token length; the same for a random head of the same layer
(the control). Per wrong prompt the patched margin is averaged over its sources; the prompt *flips*
when that average is above 0. The flip rate has a Clopper-Pearson interval, the mean change
(patched - clean) a bootstrap interval (wrong prompts resampled within template), and the test is
an exact one-sided paired (McNemar) test of the candidate's flips against its control's on the
same prompts, with Benjamini-Hochberg q over the record's flip tests (a family of its own: the
candidates were chosen before it ran). Verdict "flips": q below :data:`Q` and a flip rate above the
control's; a head with fewer than :data:`MIN_FLIP_WRONG` measured wrong prompts is underpowered. Candidates (:func:`flip_candidates`): the heads the screen flags,
plus the task's strongest critical heads so a null screen still gets a causal check, at most
:data:`FLIP_CAP` per task.

Pandas, numpy and scipy only (no torch).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from scipy.stats import t as student_t

from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.records import from_dict, jsonable, to_dict
from cortexmap.errors import CortexmapError
from cortexmap.stats import bh_q, clopper_pearson, percentile_interval, permutation_p, resample_within

MIN_PER_TEMPLATE = 2  # right and wrong prompts a template needs to contribute
MIN_WRONG = 5  # wrong prompts, and ...
MIN_RIGHT = 5  # ... right prompts, in the usable templates of a tested task
MIN_DF = 3  # residual degrees of freedom of the step regression
MIN_FLIP_WRONG = 5  # measured wrong prompts a flip test needs
FLIP_CAP = 8  # candidate heads per task for the flip test
FLIP_CRITICAL = 3  # of which at most this many strongest critical heads (always included)
Q = 0.05
TOP_UNITS = 5  # differing units stated per task (the headline counts them all)
ROWS = ["kind", "task", "intervention", "prompt", "variant", "templated", "unit", "effect", "clean"]
GROUP_COLUMNS = ["kind", "task", "variant", "n_right", "n_wrong", "clean_right", "clean_wrong", "usable"]
TASK_COLUMNS = ["kind", "task", "templated", "n_templates", "n_usable", "n_right", "n_wrong", "status", "n_tests",
                "n_differ"]
CONTRAST_COLUMNS = ["kind", "task", "intervention", "unit", "n_right", "n_wrong", "n_templates", "effect", "ci_low",
                    "ci_high", "se", "df", "t", "p_value", "q_value", "unadjusted", "mean_right", "mean_wrong", "mde"]
FLIP_COLUMNS = ["task", "head", "n_wrong", "n_pairs", "n_unaligned", "flips", "flip_rate", "ci_low", "ci_high",
                "control_heads", "control_flips", "control_rate", "control_rate_ci_low", "control_rate_ci_high",
                "change", "change_ci_low", "change_ci_high", "control_change", "p_value", "q_value", "verdict"]


# ---------------------------------------------------------------------------------------------- inputs

def head_rows(prompt_effects: pd.DataFrame | None, interventions: str | Sequence[str], alpha: float | None = None,
              method: str = "exact") -> tuple[pd.DataFrame | None, str | None]:
    """A run's per-prompt head effects under ``interventions`` as screen input (:data:`ROWS`), or a reason why not.

    ``templated`` is False when the table has no ``variant`` column (every prompt is then variant 0).
    """
    if prompt_effects is None or prompt_effects.empty:
        return None, "why the model errs: no per-prompt effects in this run"
    if "clean" not in prompt_effects:
        return None, ("why the model errs: this run's per-prompt effects lack the per-prompt clean metric (mapped by "
                      "an older cortexmap): re-run cortexmap map")
    wanted = [interventions] if isinstance(interventions, str) else list(interventions)
    rows = prompt_effects
    if "intervention" in rows:  # tables built by hand may hold one intervention only
        rows = rows[rows["intervention"].isin(wanted)]
    else:
        rows = rows.assign(intervention=wanted[0])
    if "method" in rows:
        rows = rows[rows["method"] == method]
    if alpha is not None and "alpha" in rows:
        rows = rows[np.isclose(rows["alpha"].astype(float), alpha)]
    templated = "variant" in rows
    unit = "L" + rows["layer"].astype(str) + "H" + rows["head"].astype(str)
    out = rows.assign(kind="head", unit=unit, templated=templated,
                      variant=rows["variant"].astype(int) if templated else 0)
    return out[ROWS].reset_index(drop=True), None


def edge_rows(circuit_prompts: pd.DataFrame | None) -> pd.DataFrame | None:
    """A ``circuit_prompts`` table (verified edges per prompt) as screen input, ``unit`` = ``S -> R.kind``.

    The table has no template column: all its prompts count as one template (``templated`` False).
    """
    if circuit_prompts is None or circuit_prompts.empty:
        return None
    cp = circuit_prompts
    unit = cp["sender"] + " -> " + cp["receiver"] + "." + cp["kind"]
    templated = "variant" in cp
    out = cp.assign(unit=unit, kind="edge", intervention="edge", templated=templated,
                    variant=cp["variant"].astype(int) if templated else 0,
                    task=cp["task"] if "task" in cp else "circuit")
    return out[ROWS].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- the screen

def permute_within(strata: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_perm, n]`` permutations of ``range(n)`` that move units only within their stratum."""
    labels = np.asarray(strata)
    out = np.empty((n_perm, len(labels)), dtype=int)
    for value in dict.fromkeys(labels.tolist()):
        members = np.flatnonzero(labels == value)
        out[:, members] = members[np.argsort(rng.random((n_perm, len(members))), axis=1)]
    return out


def margin_step(effects: np.ndarray, clean: np.ndarray, template: np.ndarray, *, n_perm: int = 2000, seed: int = 0,
                level: float = 0.95) -> dict[str, np.ndarray] | None:
    """The within-template, margin-adjusted step of each column's effect on wrong prompts (module docstring).

    Args:
        effects: ``[n_prompts, n_units]`` per-prompt effects (no NaN).
        clean: ``[n_prompts]`` clean margins; ``<= 0`` is wrong.
        template: ``[n_prompts]`` template of each prompt (every one usable: both groups present).
        n_perm: Freedman-Lane permutations (residuals within template).
        seed: seed of the permutations.
        level: coverage of the interval.

    Returns:
        ``step, ci_low, ci_high, se, t, p_value, df, unadjusted, mde`` (arrays ``[n_units]``, ``df`` a
        scalar array), or None when the design cannot separate the step from the margin line
        (too few residual degrees of freedom, or the margins of a group all equal).

    Raises:
        CortexmapError: mismatched shapes or NaN effects.
    """
    E = np.asarray(effects, dtype=float)
    c = np.asarray(clean, dtype=float)
    if E.ndim != 2 or c.shape != (E.shape[0],) or len(template) != len(c):
        raise CortexmapError(f"effects must be [n_prompts, n_units] with one margin and template per prompt, got "
                             f"{E.shape}, {c.shape} and {len(template)}")
    if np.isnan(E).any() or np.isnan(c).any():
        raise CortexmapError("effects or margins contain NaN; drop the prompts a unit was not measured on")
    wrong = c <= 0
    _, code = np.unique(np.asarray(template), return_inverse=True)
    onehot = np.eye(code.max() + 1)[code]
    Z = np.hstack([onehot, onehot * c[:, None]])  # per-template intercept and margin slope
    X = np.hstack([Z, wrong[:, None].astype(float)])
    n, p = X.shape
    df = n - p
    if df < 1 or np.linalg.matrix_rank(X) < p:
        return None
    xtx_inv = np.linalg.inv(X.T @ X)
    a = xtx_inv[-1] @ X.T  # [n]: the step is a @ effects
    v = xtx_inv[-1, -1]
    qx, _ = np.linalg.qr(X)
    qz, _ = np.linalg.qr(Z)
    R = E - qz @ (qz.T @ E)  # residuals without the step (Freedman-Lane)
    step = a @ E
    rss = (R**2).sum(0) - ((qx.T @ R) ** 2).sum(0)
    se = np.sqrt(np.maximum(rss, 0) / df * v)
    t_obs = _ratio(step, se)
    rng = np.random.default_rng(seed)
    null = np.empty((n_perm, E.shape[1]))
    ss_r = (R**2).sum(0)
    for start in range(0, n_perm, 256):
        perm = permute_within(code, min(256, n_perm - start), rng)  # [k, n]
        k = len(perm)
        A = np.zeros((k, n))
        A[np.arange(k)[:, None], perm] = a[None]  # sum_i a_i R[perm_i] = A @ R
        Qs = np.zeros((k, n, p))
        Qs[np.arange(k)[:, None], perm] = qx[None]
        d = A @ R
        proj = np.einsum("knp,nu->kpu", Qs, R)
        rss_k = np.maximum(ss_r[None] - (proj**2).sum(1), 0)
        null[start:start + k] = _ratio(d, np.sqrt(rss_k / df * v))
    p_value = permutation_p(t_obs, null, alternative="two-sided")
    half = np.quantile(np.abs(null), level, axis=0) * se  # the interval the permutation test inverts
    unadjusted = _unadjusted(E, wrong, code)
    mde = (student_t.ppf(0.975, df) + student_t.ppf(0.8, df)) * se
    return {"step": step, "ci_low": step - half, "ci_high": step + half, "se": se, "t": t_obs, "p_value": p_value,
            "df": np.asarray(df), "unadjusted": unadjusted, "mde": mde}


def _ratio(num_: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 0 where both are 0 (a unit with no spread and no step)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num_ / den
    return np.where((den <= 1e-12) & (np.abs(num_) <= 1e-12), 0.0, out)


def _unadjusted(E: np.ndarray, wrong: np.ndarray, code: np.ndarray) -> np.ndarray:
    """The within-template mean difference wrong - right, templates weighted ``n_r n_w / (n_r + n_w)``."""
    total, weight = np.zeros(E.shape[1]), 0.0
    for t in np.unique(code):
        w, r = (code == t) & wrong, (code == t) & ~wrong
        k = w.sum() * r.sum() / (w.sum() + r.sum())
        total += k * (E[w].mean(0) - E[r].mean(0))
        weight += k
    return total / weight


def template_groups(clean: np.ndarray, variant: np.ndarray) -> pd.DataFrame:
    """Per template: ``variant, n_right, n_wrong, clean_right, clean_wrong, usable`` (sorted by variant)."""
    clean, variant = np.asarray(clean, dtype=float), np.asarray(variant).astype(int)
    rows = []
    for v in np.unique(variant):
        c = clean[variant == v]
        r, w = c[c > 0], c[c <= 0]
        rows.append((int(v), len(r), len(w), r.mean() if len(r) else np.nan, w.mean() if len(w) else np.nan,
                     min(len(r), len(w)) >= MIN_PER_TEMPLATE))
    return pd.DataFrame(rows, columns=GROUP_COLUMNS[2:])


def usable(clean: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """``[n_prompts]``: the prompts of templates with at least :data:`MIN_PER_TEMPLATE` right and wrong prompts."""
    clean, variant = np.asarray(clean, dtype=float), np.asarray(variant)
    keep = np.zeros(len(clean), dtype=bool)
    for v in np.unique(variant):
        mine = variant == v
        if min((clean[mine] > 0).sum(), (clean[mine] <= 0).sum()) >= MIN_PER_TEMPLATE:
            keep |= mine
    return keep


def enough_prompts(clean: np.ndarray, variant: np.ndarray) -> bool:
    """Whether the usable prompts reach :data:`MIN_RIGHT` / :data:`MIN_WRONG` and :data:`MIN_DF` (module docstring)."""
    use = usable(clean, variant)
    c = np.asarray(clean, dtype=float)[use]
    n_templates = len(np.unique(np.asarray(variant)[use]))
    return (c > 0).sum() >= MIN_RIGHT and (c <= 0).sum() >= MIN_WRONG and len(c) - 2 * n_templates - 1 >= MIN_DF


def screen(rows: pd.DataFrame | None, *, n_perm: int = 2000,
           seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The stratified margin-adjusted screen of every (kind, task) in ``rows`` (:data:`ROWS`).

    Each task's draws are seeded by ``seed`` and its name, so a task gives the same numbers alone
    or with others; q-values run over all the screen's tests together.

    Returns:
        ``(groups, tasks, contrasts)`` (:data:`GROUP_COLUMNS`, :data:`TASK_COLUMNS`, :data:`CONTRAST_COLUMNS`).
    """
    groups, tasks, contrasts = [], [], []
    for (kind, task), g in ([] if rows is None else rows.groupby(["kind", "task"], sort=True)):
        wide = g.pivot_table(index="prompt", columns=["intervention", "unit"], values="effect",
                             aggfunc="first").dropna(axis=1)
        per_prompt = g.groupby("prompt")[["clean", "variant"]].first().reindex(wide.index)
        clean, variant = per_prompt["clean"].to_numpy(float), per_prompt["variant"].to_numpy(int)
        table = template_groups(clean, variant)
        groups.append(table.assign(kind=kind, task=str(task)))
        use = usable(clean, variant)
        n_right, n_wrong = int((clean[use] > 0).sum()), int((clean[use] <= 0).sum())
        result = None
        if enough_prompts(clean, variant) and len(wide.columns):
            result = margin_step(wide.to_numpy(float)[use], clean[use], variant[use], n_perm=n_perm,
                                 seed=seed + zlib.crc32(f"{kind}:{task}".encode()) % 100_000)
        tasks.append({"kind": kind, "task": str(task), "templated": bool(g["templated"].iloc[0]),
                      "n_templates": len(table), "n_usable": int(table["usable"].sum()), "n_right": n_right,
                      "n_wrong": n_wrong,
                      "status": "underpowered" if result is None else "tested",
                      "n_tests": 0 if result is None else len(wide.columns), "n_differ": 0})
        if result is None:
            continue
        values = wide.to_numpy(float)[use]
        wrong = clean[use] <= 0
        contrasts.append(pd.DataFrame({
            "kind": kind, "task": str(task), "intervention": [k[0] for k in wide.columns],
            "unit": [k[1] for k in wide.columns], "n_right": n_right, "n_wrong": n_wrong,
            "n_templates": len(np.unique(variant[use])),
            "effect": result["step"], "ci_low": result["ci_low"], "ci_high": result["ci_high"], "se": result["se"],
            "df": int(result["df"]), "t": result["t"], "p_value": result["p_value"], "q_value": np.nan,
            "unadjusted": result["unadjusted"], "mean_right": values[~wrong].mean(0),
            "mean_wrong": values[wrong].mean(0), "mde": result["mde"]}))
    contrasts_df = pd.concat(contrasts, ignore_index=True) if contrasts else pd.DataFrame(columns=CONTRAST_COLUMNS)
    contrasts_df["q_value"] = bh_q(contrasts_df["p_value"].to_numpy(float))
    tasks_df = pd.DataFrame(tasks, columns=TASK_COLUMNS)
    if len(contrasts_df):
        differ = contrasts_df[contrasts_df["q_value"] < Q].groupby(["kind", "task"]).size()
        tasks_df["n_differ"] = [int(differ.get((k, t), 0)) for k, t in zip(tasks_df["kind"], tasks_df["task"])]
    groups_df = pd.concat(groups, ignore_index=True)[GROUP_COLUMNS] if groups else pd.DataFrame(columns=GROUP_COLUMNS)
    return groups_df, tasks_df, contrasts_df


# ---------------------------------------------------------------------------------------------- the causal test

def flip_tests(flips: pd.DataFrame | None, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Per (task, candidate head): flip rate against its layer-matched controls (module docstring).

    Args:
        flips: :data:`cortexmap.sweep.flips.FLIP_ROWS` rows (``patched`` NaN: a wrong prompt with no
            right prompt of its template and length).
        n_boot: bootstrap resamples of the mean change.
        seed: seed of the bootstrap.
        level: coverage of every interval.

    Returns:
        :data:`FLIP_COLUMNS` rows, q over all of them, sorted by task and p.
    """
    if flips is None or flips.empty:
        return pd.DataFrame(columns=FLIP_COLUMNS)
    done = flips.dropna(subset=["patched"])
    per = (done.groupby(["task", "role", "control_of", "head_id", "wrong"], sort=True)
           .agg(patched=("patched", "mean"), clean=("clean", "first"), variant=("variant", "first"),
                sources=("source", "nunique")).reset_index())
    cand = per[per["role"] == "candidate"]
    ctrl = (per[per["role"] == "control"].groupby(["task", "control_of", "wrong"])
            .agg(c_patched=("patched", "mean"), c_heads=("head_id", lambda s: ",".join(sorted(set(s))))).reset_index())
    rng = np.random.default_rng(seed)
    rows = []
    for (task, head), g in cand.groupby(["task", "head_id"], sort=True):
        g = g.merge(ctrl, left_on=["task", "head_id", "wrong"], right_on=["task", "control_of", "wrong"], how="left")
        unaligned = flips[(flips["task"] == task) & (flips["head_id"] == head) & (flips["role"] == "candidate")
                          & flips["patched"].isna()]["wrong"].nunique()
        n = len(g)
        flip = g["patched"].to_numpy(float) > 0
        has_ctrl = g["c_patched"].notna().to_numpy()
        cflip = g["c_patched"].to_numpy(float) > 0
        change = g["patched"].to_numpy(float) - g["clean"].to_numpy(float)
        b = int((flip & ~cflip & has_ctrl).sum())
        c = int((~flip & cflip & has_ctrl).sum())
        p = binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
        idx = resample_within(g["variant"].to_numpy(), n_boot, rng)
        lo, hi = percentile_interval(change[idx].mean(1), level)
        n_c = int(has_ctrl.sum())
        rows.append({"task": task, "head": head, "n_wrong": n, "n_pairs": int(g["sources"].sum()),
                     "n_unaligned": int(unaligned), "flips": int(flip.sum()), "flip_rate": flip.mean(),
                     **dict(zip(("ci_low", "ci_high"), clopper_pearson(int(flip.sum()), n, level))),
                     "control_heads": ",".join(sorted({h for s in g["c_heads"].dropna() for h in s.split(",")})),
                     "control_flips": int(cflip[has_ctrl].sum()),
                     "control_rate": cflip[has_ctrl].mean() if n_c else np.nan,
                     **dict(zip(("control_rate_ci_low", "control_rate_ci_high"),
                                clopper_pearson(int(cflip[has_ctrl].sum()), n_c, level))),
                     "change": change.mean(), "change_ci_low": float(lo), "change_ci_high": float(hi),
                     "control_change": float(np.nanmean(g["c_patched"] - g["clean"])) if n_c else np.nan,
                     "p_value": float(p) if n >= MIN_FLIP_WRONG else np.nan, "q_value": np.nan, "verdict": ""})
    out = pd.DataFrame(rows, columns=FLIP_COLUMNS)
    out["q_value"] = bh_q(out["p_value"].to_numpy(float))
    flips_ = (out["q_value"] < Q) & (out["flip_rate"] > out["control_rate"])
    out["verdict"] = np.where(out["n_wrong"] < MIN_FLIP_WRONG, "underpowered", np.where(flips_, "flips", "no flip"))
    return out.sort_values(["task", "p_value", "head"], na_position="last").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- the record

@dataclass(frozen=True)
class Errors:
    """Why the model errs (module docstring): the screen per (kind, task) and the causal flip tests.

    Attributes:
        groups: right / wrong prompts per template (:data:`GROUP_COLUMNS`).
        tasks: per (kind, task) its usable counts and ``status`` ``tested`` / ``underpowered`` (:data:`TASK_COLUMNS`).
        contrasts: the screen's tests, q over all of them (:data:`CONTRAST_COLUMNS`).
        flips: the causal tests per candidate head (:data:`FLIP_COLUMNS`).
        q: the q-value bar of "differs" and "flips".
        n_boot: bootstrap resamples.
        n_perm: permutations of the screen.
        notes: what the numbers depend on, one line each.
    """

    groups: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=GROUP_COLUMNS))
    tasks: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TASK_COLUMNS))
    contrasts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CONTRAST_COLUMNS))
    flips: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FLIP_COLUMNS))
    q: float = Q
    n_boot: int = 0
    n_perm: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Errors:
        return from_dict(cls, data)

    @property
    def underpowered(self) -> list[str]:
        """``"kind task (right/wrong by template 0: r/w, ...)"`` for every task not tested."""
        rows = self.tasks[self.tasks["status"] == "underpowered"] if len(self.tasks) else self.tasks
        return [f"{r.kind} {r.task} (right/wrong by template {self._by_template(r.kind, r.task)})"
                for r in rows.itertuples()]

    def _by_template(self, kind: str, task: str) -> str:
        g = self.groups[(self.groups["kind"] == kind) & (self.groups["task"] == task)]
        return ", ".join(f"{int(r.variant)}: {int(r.n_right)}/{int(r.n_wrong)}" for r in g.itertuples())

    def findings(self) -> list[Finding]:
        """Per (kind, task), heads first: the ``errs`` headline, its differing units (``errs_unit``), its flip tests."""
        out: list[Finding] = []
        flips = self.flips if len(self.flips) else pd.DataFrame(columns=FLIP_COLUMNS)
        keys = sorted(((str(k), str(t)) for k, t in zip(self.tasks["kind"], self.tasks["task"])),
                      key=lambda kt: (kt[0] != "head", kt[1]))
        keys += [("head", str(t)) for t in flips["task"].unique() if ("head", str(t)) not in keys]
        for kind, task in keys:
            out += self._task_findings(kind, task)
            if kind == "head":
                out += [_flip_finding(r, self.q) for r in flips[flips["task"] == task].to_dict("records")]
        return out

    def _task_findings(self, kind: str, task: str) -> list[Finding]:
        info = self.tasks[(self.tasks["kind"] == kind) & (self.tasks["task"] == task)]
        per = self._by_template(kind, task)
        if info.empty:
            return [Finding(kind="errs", subject=f"{kind}s", task=task, verdict="not evaluated", method="exact",
                            text=f"Why the model errs on {task}: screen not evaluated (no per-prompt effects); "
                                 "flip tests only.")]
        t = info.iloc[0]
        one = "" if t["templated"] else "; templates unknown, all prompts treated as one template"
        base = {"n_right": int(t["n_right"]), "n_wrong": int(t["n_wrong"]), "n_templates": int(t["n_templates"]),
                "n_usable": int(t["n_usable"]), "templated": bool(t["templated"]), "right_wrong_by_template": per}
        if t["status"] == "underpowered":
            text = (f"Why the model errs on {task} ({kind}s): underpowered, not tested: {t['n_right']} right / "
                    f"{t['n_wrong']} wrong prompts in {t['n_usable']} of {t['n_templates']} templates with at least "
                    f"{MIN_PER_TEMPLATE} of each (needs {MIN_RIGHT} right and {MIN_WRONG} wrong); right/wrong by "
                    f"template {per}{one}.")
            return [Finding(kind="errs", subject=f"{kind}s", task=task, verdict="underpowered", method="exact",
                            stats={**base, "min_right": MIN_RIGHT, "min_wrong": MIN_WRONG,
                                   "min_per_template": MIN_PER_TEMPLATE}, text=text)]
        rows = self.contrasts[(self.contrasts["kind"] == kind) & (self.contrasts["task"] == task)].sort_values(
            ["p_value", "effect"], key=lambda c: c if c.name == "p_value" else -c.abs())
        differ = rows[rows["q_value"] < self.q].to_dict("records")
        first = differ[0] if differ else rows.iloc[0].to_dict()
        where = (f"Why the model errs on {task} ({kind}s; {t['n_right']} right / {t['n_wrong']} wrong prompts in "
                 f"{t['n_usable']} of {t['n_templates']} templates{one}; step on wrong prompts within template beyond "
                 f"the clean-margin line)")
        if differ:
            text = f"{where}: {len(differ)} of {len(rows)} tests differ at q < {self.q}; strongest {_unit_text(first)}."
        else:
            text = (f"{where}: none of {len(rows)} tests differs at q < {self.q}; smallest p: {_unit_text(first)}; "
                    f"a step of {num(first['mde'])} would be detected with 80% power at p < 0.05.")
        out = [_unit_finding("errs", kind, task, first, "differs" if differ else "no difference", text,
                             {**base, "n_tests": len(rows), "n_differ": len(differ)})]
        return out + [_unit_finding("errs_unit", kind, task, r, "differs", f"{_unit_text(r)}.", {})
                      for r in differ[1:TOP_UNITS]]


BASELINE = "no step (Freedman-Lane permutations within template)"


def _unit_text(r: dict) -> str:
    iv = "" if r["intervention"] == "edge" else f" ({r['intervention']})"
    return (f"{r['unit']}{iv} step {num(r['effect'])} {ci(r['ci_low'], r['ci_high'])} (unadjusted wrong - right "
            f"{num(r['unadjusted'])}), p = {num(r['p_value'], 3)}, q = {num(r['q_value'], 3)}")


def _unit_finding(kind: str, unit_kind: str, task: str, r: dict, verdict: str, text: str, extra: dict) -> Finding:
    r = jsonable(r)  # NaN -> None: findings travel as strict JSON
    return Finding(kind=kind, subject=f"{unit_kind} {r['unit']}", head=r["unit"] if unit_kind == "head" else None,
                   task=task, effect=r["effect"], ci_low=r["ci_low"], ci_high=r["ci_high"], baseline=0.0,
                   baseline_label=BASELINE, p_value=r["p_value"], verdict=verdict, method="exact",
                   stats={**extra, "intervention": r["intervention"], "q_value": r["q_value"], "se": r["se"],
                          "unadjusted": r["unadjusted"], "mean_right": r["mean_right"], "mean_wrong": r["mean_wrong"],
                          "mde": r["mde"]}, text=text)


def _flip_finding(r: dict, q: float) -> Finding:
    text = (f"{r['head']} patched from right prompts of the same template into {r['n_wrong']} wrong prompts of "
            f"{r['task']} ({r['n_pairs']} pairs): flips {r['flips']}/{r['n_wrong']} = {num(r['flip_rate'])} "
            f"{ci(r['ci_low'], r['ci_high'])}; random control of the same layer {r['control_heads'] or 'none'} flips "
            f"{r['control_flips']}/{r['n_wrong']} = {num(r['control_rate'])} "
            f"{ci(r['control_rate_ci_low'], r['control_rate_ci_high'])}; mean "
            f"change {num(r['change'])} {ci(r['change_ci_low'], r['change_ci_high'])} (control "
            f"{num(r['control_change'])}); paired exact p = {num(r['p_value'], 3)}, q = {num(r['q_value'], 3)}"
            + (f"; {r['n_unaligned']} wrong prompts had no right prompt of their template and length"
               if r["n_unaligned"] else "") + ".")
    r = jsonable(r)  # NaN -> None: findings travel as strict JSON
    return Finding(kind="errs_flip", subject=f"head {r['head']}", head=r["head"], task=r["task"], effect=r["flip_rate"],
                   ci_low=r["ci_low"], ci_high=r["ci_high"], baseline=r["control_rate"],
                   baseline_label="flip rate of a random head of the same layer", p_value=r["p_value"],
                   verdict=r["verdict"], method="exact",
                   stats={k: r[k] for k in ("q_value", "n_wrong", "n_pairs", "n_unaligned", "flips", "control_heads",
                                            "control_flips", "control_rate", "control_rate_ci_low",
                                            "control_rate_ci_high", "change", "change_ci_low", "change_ci_high",
                                            "control_change")} | {"q": q},
                   text=text)


def errors_of_rows(rows: pd.DataFrame | None, flips: pd.DataFrame | None = None, *, n_boot: int = 1000,
                   n_perm: int = 2000, seed: int = 0, notes: Sequence[str] = ()) -> Errors:
    """:class:`Errors` of screen input rows (:func:`head_rows`, :func:`edge_rows`, concatenated) and a flips table."""
    groups, tasks, contrasts = screen(rows, n_perm=n_perm, seed=seed)
    tests = flip_tests(flips, n_boot=n_boot, seed=seed + 7)
    family = [f"BH q over {len(contrasts)} screen tests (all tasks, units and interventions together)"]
    if len(tests):
        family.append(f"BH q over {int(tests['p_value'].notna().sum())} flip tests (a separate family)")
    return Errors(groups=groups, tasks=tasks, contrasts=contrasts, flips=tests, q=Q, n_boot=n_boot, n_perm=n_perm,
                  notes=list(notes) + family)


def error_analysis(view: Any, flips: pd.DataFrame | None = None, *, n_boot: int | None = None, n_perm: int = 2000,
                   seed: int | None = None, alpha: float | None = None) -> Errors:
    """Why the model errs, from a run view (:class:`~cortexmap.analysis.view.RunView`) and its flips table.

    Heads are screened under every claim intervention of the view (``view.interventions``); the
    traced circuit's edges (``circuit_prompts``) too when the run has them.

    Args:
        view: the run's view; reads its ``prompt_effects`` and ``circuit_prompts`` tables.
        flips: :func:`cortexmap.sweep.flips.measure_flips` rows (None: no causal test yet).
        n_boot: bootstrap resamples (None: the view's).
        n_perm: screen permutations.
        seed: seed (None: the view's).
        alpha: amplification alpha of the rows read (None: any).
    """
    rows, reason = head_rows(view.table("prompt_effects"), view.interventions, alpha, view.method)
    frames = [r for r in (rows, edge_rows(view.table("circuit_prompts"))) if r is not None and len(r)]
    return errors_of_rows(pd.concat(frames, ignore_index=True) if frames else None, flips,
                          n_boot=view.n_boot if n_boot is None else n_boot, n_perm=n_perm,
                          seed=view.seed if seed is None else seed, notes=[reason] if reason else [])


def flip_candidates(view: Any, screened: Errors, *, cap: int = FLIP_CAP,
                    critical: int = FLIP_CRITICAL) -> dict[str, list[str]]:
    """Heads to patch per task: up to ``critical`` strongest critical heads, then flagged heads by p, ``cap`` in all.

    Only tasks with a wrong prompt in a template that also has a right prompt are listed.
    """
    out: dict[str, list[str]] = {}
    g = screened.groups
    for task in view.tasks:
        mine = g[(g["kind"] == "head") & (g["task"] == task)]
        if not ((mine["n_wrong"] > 0) & (mine["n_right"] > 0)).any():
            continue
        j = view.tasks.index(task)
        crit = [h for h in np.asarray(view.grid.index)[np.argsort(-view.weight[:, j], kind="stable")]
                if view.important[view.grid.index.get_loc(h), j]][:critical]
        c = screened.contrasts
        flagged = c[(c["kind"] == "head") & (c["task"] == task) & (c["q_value"] < screened.q)].sort_values("p_value")
        heads = list(dict.fromkeys(crit + list(flagged["unit"])))[:cap]
        if heads:
            out[task] = heads
    return out
