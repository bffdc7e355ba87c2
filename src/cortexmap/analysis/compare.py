"""Cross-model comparison: are head functions conserved between two models, and at what depth?

A *column* is one ``(intervention, task)`` pair both models measured (``"<intervention>:<task>"``
in profile tables); :func:`compare` uses the claim interventions of each run
(:mod:`cortexmap.analysis.view`) that both share, and the tasks both share. Values are
``effect_normalized``.

* **Profiles are shapes.** Each column is z-scored *within its model*, over that model's compared
  heads (NaN read as the column mean, 0): a task whose effects are large in both models (a fragile
  task) weighs no more than any other, so a per-task scale shared by the models cannot look like
  conserved heads. Each head's z-profile is then **centred** (its mean over columns removed;
  ``centre_rows``): what is compared is *which tasks a head matters for more than others*. Without
  centring, a head that matters for every task matches any other such head in the other model
  just for that (on simulated models with generic heads and no conserved head the test then
  rejects almost always).
* **Similarity** of two heads = covariance of their centred z-profiles over the columns (inner
  product / number of columns), so a head weighs by how far its profile departs from flat. Not the
  correlation (cosine): that gives a flat head (a generic or inert one) full weight for a shape
  that is only noise, or the imprint of its columns' spreads, which all generic heads of a model
  share; clusters of such heads then line up with the other model by chance as one block, and the
  test rejects 10-30% of the time on simulated models with no conserved head. The ``matches``
  table gives both (``similarity`` = covariance, ``correlation``). Heads are paired one-to-one by
  the assignment that maximises the total similarity (``scipy.optimize.linear_sum_assignment``;
  ``min(n_a, n_b)`` pairs).
* **Conservation** = mean similarity of the matched pairs (in units of a column's variance: a model
  against an exact copy of itself scores the mean variance of its centred z-profiles, at most 1).
  Null: B's heads are permuted within each task, independently per task (a task's intervention
  columns move together, so a head keeps its cell of a task under every intervention), heads
  re-matched and the mean recomputed. This breaks which head does what and keeps every column's
  values, so the z-scoring is unchanged. (Permuting each intervention's column on its own would
  break the agreement of patching and mean ablation on every head of B only, and any two models
  with task-specific heads would read as conserved.) One-sided p ``(1 + #{null >= observed}) / (1 +
  n_perm)`` (:func:`cortexmap.stats.permutation_p`); a p at the resolution limit ``1 / (1 +
  n_perm)`` is printed as ``p < 1/(n_perm + 1)``. "conserved" when ``p < alpha``; the baseline is
  the null's mean.
* **Depth correspondence.** Spearman correlation of the relative depths of matched pairs whose
  *correlation* is at least ``min_similarity``, with a bootstrap interval over those pairs.
* **Scale table** (:func:`scale_comparison`): per model, head count, mean specialization, share of
  *active* heads (:func:`~cortexmap.analysis.selection.active_heads`; reported as
  ``active_share``), and redundancy when joint-ablation pairs are given
  (:func:`~cortexmap.analysis.specialization.redundancy_summary`).

The calibration of the conservation test on pairs of models with no conserved head but a shared
per-task scale, generic heads in both, or both, with one or two interventions per task, is in
tests/analysis/test_compare.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata, spearmanr

from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.analysis.profiles import EFFECT_PREFIX_SEP, effect_columns, standardize
from cortexmap.analysis.records import from_dict, to_dict
from cortexmap.analysis.view import COUNTERFACTUAL, OFF_DISTRIBUTION, RunView, build_view, claim_interventions
from cortexmap.errors import ResultsError
from cortexmap.rules import ACTIVE
from cortexmap.stats import percentile_interval, permutation_p, smallest_p

N_PERM = 2000
PERM_CHUNK = 64  # permutations drawn and matched per batch (memory: chunk x heads x columns)


def _row_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row pair of [B, n] arrays (NaN for a constant row)."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=1) / np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))


def profile_shapes(z: np.ndarray, centre_rows: bool = True) -> np.ndarray:
    """Profiles whose inner products are covariances: centred z-scores / sqrt(columns).

    Args:
        z: column z-scores ``[..., heads, columns]``
            (:func:`~cortexmap.analysis.profiles.standardize`), any leading axes; NaN read as 0.
        centre_rows: remove each row's mean over columns first (module docstring).

    Returns:
        An array of the same shape.
    """
    z = np.nan_to_num(np.asarray(z, dtype=float))
    if centre_rows:
        z = z - z.mean(axis=-1, keepdims=True)
    return z / np.sqrt(z.shape[-1])


def _correlation(shape_a: np.ndarray, shape_b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``[n, columns]`` shape arrays (0 where a row is flat)."""
    norms = np.linalg.norm(shape_a, axis=-1) * np.linalg.norm(shape_b, axis=-1)
    dots = (shape_a * shape_b).sum(-1)
    return np.where(norms > 1e-12, dots / np.where(norms > 1e-12, norms, 1.0), 0.0)


def _matched_means(shape_a: np.ndarray, shape_b: np.ndarray) -> np.ndarray:
    """Mean matched similarity of A against each ``[p, heads_b, columns]`` replicate of B: ``[p]``."""
    sims = np.einsum("ac,pbc->pab", shape_a, shape_b)
    out = np.empty(len(sims))
    for i, s in enumerate(sims):
        rows, cols = linear_sum_assignment(s, maximize=True)
        out[i] = s[rows, cols].mean()
    return out


def _task_blocks(tasks: np.ndarray | list | None, n_columns: int) -> list[np.ndarray]:
    """The column indices of each task (a task's interventions), in order of first appearance."""
    labels = np.arange(n_columns) if tasks is None else np.asarray(tasks)
    if len(labels) != n_columns:
        raise ResultsError(f"{len(labels)} task labels for {n_columns} columns: pass one label per column")
    return [np.flatnonzero(labels == t) for t in dict.fromkeys(labels.tolist())]


def permute_within_tasks(z: np.ndarray, blocks: list[np.ndarray], n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_perm, heads, columns]`` copies of ``z`` with heads permuted within each task, independently.

    A task's columns (its interventions) move together, so a head keeps its cell of a task under
    every intervention; each column keeps its values, so its z-scoring is unchanged.
    """
    n_heads = z.shape[0]
    out = np.empty((n_perm,) + z.shape)
    for block in blocks:
        order = np.argsort(rng.random((n_perm, n_heads)), axis=1)  # [p, heads]
        out[:, :, block] = z[:, block][order]
    return out


def conservation_null(
    values_a: np.ndarray,
    values_b: np.ndarray,
    *,
    tasks: np.ndarray | list | None = None,
    n_perm: int = N_PERM,
    seed: int = 0,
    centre_rows: bool = True,
) -> tuple[float, np.ndarray]:
    """The conservation score of two models' head x column arrays and its head-permutation null.

    Args:
        values_a: ``[heads_a, columns]`` effects of model A (NaN allowed).
        values_b: ``[heads_b, columns]`` effects of model B, the same columns in the same order.
        tasks: the task of each column (B's heads are permuted within each task, its columns
            together); None: each column its own task.
        n_perm: permutations of the null.
        seed: seed of the permutations.
        centre_rows: centre each head's z-profile (module docstring).

    Returns:
        ``(observed, null)``: the mean similarity of the matched heads and its ``[n_perm]`` null.

    Raises:
        ResultsError: column counts differ, fewer than two heads in a model, or ``n_perm`` < 1.
    """
    values_a, values_b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    if values_a.ndim != 2 or values_b.ndim != 2 or values_a.shape[1] != values_b.shape[1]:
        raise ResultsError(f"profiles of shapes {values_a.shape} and {values_b.shape} do not share columns: "
                           "pass [heads, columns] arrays with the same columns")
    if n_perm < 1:
        raise ResultsError(f"n_perm={n_perm} gives no null: pass a positive number of permutations")
    if len(values_a) < 2 or len(values_b) < 2:
        raise ResultsError(f"{len(values_a)} and {len(values_b)} heads are too few to compare: "
                           "lower the activity rule or pass more heads")
    blocks = _task_blocks(tasks, values_b.shape[1])
    shape_a = profile_shapes(standardize(values_a), centre_rows)
    z_b = standardize(values_b)
    observed = float(_matched_means(shape_a, profile_shapes(z_b, centre_rows)[None])[0])
    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    for start in range(0, n_perm, PERM_CHUNK):
        size = min(PERM_CHUNK, n_perm - start)
        shuffled = permute_within_tasks(z_b, blocks, size, rng)
        null[start:start + size] = _matched_means(shape_a, profile_shapes(shuffled, centre_rows))
    return observed, null


def shared_columns(profiles_a: pd.DataFrame, profiles_b: pd.DataFrame) -> list[str]:
    """Effect columns present in both profile tables, in A's order.

    Raises:
        ResultsError: the two tables share no effect column.
    """
    columns = [c for c in effect_columns(profiles_a) if c in set(effect_columns(profiles_b))]
    if not columns:
        raise ResultsError("the two models share no task (intervention:task column): run both on a common battery")
    return columns


def match_heads(profiles_a: pd.DataFrame, profiles_b: pd.DataFrame, *, centre_rows: bool = True) -> pd.DataFrame:
    """One-to-one matching of heads by the similarity of their standardised profiles (module docstring).

    Columns are z-scored over the rows given, so pass the heads to compare (e.g. active ones).

    Args:
        profiles_a: head x ``"<intervention>:<task>"`` table of model A (with ``rel_depth``), e.g.
            :func:`~cortexmap.analysis.profiles.head_profiles`.
        profiles_b: the same for model B.
        centre_rows: centre each head's z-profile.

    Returns:
        DataFrame sorted by similarity: head_a, head_b, similarity (covariance of the centred
        z-profiles), correlation (their cosine), rel_depth_a, rel_depth_b.
    """
    columns = shared_columns(profiles_a, profiles_b)
    shape_a = profile_shapes(standardize(profiles_a[columns].to_numpy(dtype=float)), centre_rows)
    shape_b = profile_shapes(standardize(profiles_b[columns].to_numpy(dtype=float)), centre_rows)
    sims = shape_a @ shape_b.T
    rows, cols = linear_sum_assignment(sims, maximize=True)
    out = pd.DataFrame({"head_a": profiles_a.index[rows], "head_b": profiles_b.index[cols],
                        "similarity": sims[rows, cols], "correlation": _correlation(shape_a[rows], shape_b[cols]),
                        "rel_depth_a": profiles_a["rel_depth"].to_numpy()[rows],
                        "rel_depth_b": profiles_b["rel_depth"].to_numpy()[cols]})
    return out.sort_values("similarity", ascending=False, kind="stable").reset_index(drop=True)


def _p_text(p: float | None, n_perm: int) -> str:
    """``p = x``; at the resolution limit ``1 / (1 + n_perm)`` it says ``p < 1/(n_perm + 1)`` instead."""
    if p is None:
        return "p = n/a"
    if p <= smallest_p(n_perm) * (1 + 1e-9):
        return f"p < {num(smallest_p(n_perm) * 1.0001, 4)}"
    return f"p = {num(p, 4)}"


@dataclass(frozen=True)
class Conservation:
    """Cross-model conservation of head profiles and depth correspondence of matched heads (module docstring).

    ``null_mean`` / ``null_p95`` describe the head-permutation null. ``matches``: one row per
    matched pair, by similarity: ``head_a, head_b, similarity, correlation, rel_depth_a,
    rel_depth_b``.
    """

    model_a: str
    model_b: str
    verdict: str
    conservation: float
    null_mean: float
    null_p95: float
    p_value: float
    n_perm: int
    n_tasks: int
    n_columns: int
    n_heads_a: int
    n_heads_b: int
    n_pairs: int
    interventions: tuple[str, ...] = ()
    alpha: float = 0.05
    centre_rows: bool = True
    active_only: bool = True
    depth_rho: float | None = None
    depth_ci_low: float | None = None
    depth_ci_high: float | None = None
    n_depth_pairs: int = 0
    min_similarity: float = 0.5
    counterfactual: bool = True
    method: str = ""
    matches: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Conservation:
        return from_dict(cls, data)

    def as_legacy_dict(self) -> dict:
        """The fields by name, ``matches`` still a DataFrame (what :func:`compare_models` returns)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def findings(self) -> list[Finding]:
        """One ``conservation`` finding: the score against its null, the depth correspondence in ``stats``."""
        subject = f"{self.model_a} vs {self.model_b}"
        ivs = " and ".join(self.interventions) or "the shared interventions"
        off = "" if self.counterfactual else " (zero ablation only: off-distribution effects)"
        if self.depth_rho is not None:
            depth = (f"relative depth of the {self.n_depth_pairs} matched pairs correlating >= "
                     f"{num(self.min_similarity)}: Spearman {num(self.depth_rho)} "
                     f"{ci(self.depth_ci_low, self.depth_ci_high)} (pairs resampled)")
        else:
            depth = (f"depth correspondence not evaluated ({self.n_depth_pairs} matched pairs correlating >= "
                     f"{num(self.min_similarity)}; it needs 3 at two depths)")
        shape = "centred z-profiles" if self.centre_rows else "z-profiles (not centred)"
        heads = "active heads" if self.active_only else "heads"
        size = "" if self.verdict == "conserved" else f" (sample size: {self.n_pairs} pairs, {self.n_columns} columns)"
        text = (f"Cross-model conservation, {subject}: {self.verdict}: the covariance of matched heads' {shape} is "
                f"{num(self.conservation, 3)} on average over {self.n_pairs} one-to-one pairs ({self.n_heads_a} and "
                f"{self.n_heads_b} {heads}; {self.n_columns} columns = {self.n_tasks} shared tasks x {ivs}{off}, each "
                f"z-scored within its model) vs {num(self.null_mean, 3)} with B's heads permuted within each task "
                f"(95th pct {num(self.null_p95, 3)}), {_p_text(self.p_value, self.n_perm)} ({self.n_perm} "
                f"permutations){size}; {depth}.")
        return [Finding(kind="conservation", subject=subject, effect=self.conservation, baseline=self.null_mean,
                        baseline_label="mean of the head-permutation null (B's heads permuted within each task)",
                        p_value=self.p_value, verdict=self.verdict, method=self.method,
                        stats={"null_p95": self.null_p95, "n_perm": self.n_perm, "n_pairs": self.n_pairs,
                               "n_columns": self.n_columns, "n_tasks": self.n_tasks, "n_heads_a": self.n_heads_a,
                               "n_heads_b": self.n_heads_b, "depth_rho": self.depth_rho,
                               "depth_rho_ci_low": self.depth_ci_low, "depth_rho_ci_high": self.depth_ci_high,
                               "n_depth_pairs": self.n_depth_pairs, "centre_rows": self.centre_rows},
                        text=text)]


def _depth_correspondence(matches: pd.DataFrame, min_similarity: float, n_boot: int,
                          rng: np.random.Generator) -> tuple[float | None, float | None, float | None, int]:
    close = matches[matches["correlation"] >= min_similarity]
    if len(close) < 3 or close["rel_depth_a"].nunique() < 2 or close["rel_depth_b"].nunique() < 2:
        return None, None, None, int(len(close))
    depth_a, depth_b = close["rel_depth_a"].to_numpy(), close["rel_depth_b"].to_numpy()
    rho = float(spearmanr(depth_a, depth_b).statistic)
    idx = rng.integers(0, len(close), (n_boot, len(close)))
    low, high = percentile_interval(_row_spearman(depth_a[idx], depth_b[idx]))
    return rho, float(low), float(high), int(len(close))


def conservation_test(
    profiles_a: pd.DataFrame,
    profiles_b: pd.DataFrame,
    *,
    heads_a: list[str] | None = None,
    heads_b: list[str] | None = None,
    n_perm: int = N_PERM,
    n_boot: int = 1000,
    min_similarity: float = 0.5,
    alpha: float = 0.05,
    centre_rows: bool = True,
    seed: int = 0,
    models: tuple[str, str] = ("A", "B"),
    method: str = "",
    counterfactual: bool = True,
    active_only: bool = False,
) -> Conservation:
    """Conservation of standardised profiles against the head-permutation null, and depth correspondence.

    Args:
        profiles_a: head x ``"<intervention>:<task>"`` table of model A with ``rel_depth``
            (e.g. :func:`~cortexmap.analysis.profiles.head_profiles`).
        profiles_b: the same for model B.
        heads_a: restrict A to these head ids (e.g. its active heads) before z-scoring; None keeps all.
        heads_b: restrict B likewise.
        n_perm: permutations of the null (the smallest p they allow is ``1 / (1 + n_perm)``).
        n_boot: bootstrap replicates over matched pairs for the depth correlation.
        min_similarity: matched pairs correlating at least this much enter the depth correlation.
        alpha: the verdict's level.
        centre_rows: centre each head's z-profile (module docstring).
        seed: random seed.
        models: names of A and B for the finding.
        method: what the numbers rest on, for the finding.
        counterfactual: whether the columns are counterfactual interventions.
        active_only: recorded: whether ``heads_a`` / ``heads_b`` are the active heads.

    Returns:
        The :class:`Conservation` record.

    Raises:
        ResultsError: no shared columns, fewer than two heads, or ``n_perm`` < 1.
    """
    profiles_a = profiles_a if heads_a is None else profiles_a.loc[list(heads_a)]
    profiles_b = profiles_b if heads_b is None else profiles_b.loc[list(heads_b)]
    columns = shared_columns(profiles_a, profiles_b)
    tasks = [c.split(EFFECT_PREFIX_SEP, 1)[1] for c in columns]
    observed, null = conservation_null(profiles_a[columns].to_numpy(dtype=float),
                                       profiles_b[columns].to_numpy(dtype=float), tasks=tasks, n_perm=n_perm,
                                       seed=seed, centre_rows=centre_rows)
    matches = match_heads(profiles_a, profiles_b, centre_rows=centre_rows)
    rho, low, high, n_close = _depth_correspondence(matches, min_similarity, n_boot, np.random.default_rng(seed + 1))
    p = float(permutation_p(observed, null))
    ivs = tuple(dict.fromkeys(c.split(EFFECT_PREFIX_SEP, 1)[0] for c in columns))
    return Conservation(model_a=str(models[0]), model_b=str(models[1]),
                        verdict="conserved" if p < alpha else "not conserved", conservation=observed,
                        null_mean=float(null.mean()), null_p95=float(np.percentile(null, 95)), p_value=p,
                        n_perm=int(n_perm), n_tasks=len(set(tasks)), n_columns=len(columns),
                        n_heads_a=len(profiles_a), n_heads_b=len(profiles_b),
                        n_pairs=int(min(len(profiles_a), len(profiles_b))), interventions=ivs, alpha=alpha,
                        centre_rows=centre_rows, active_only=active_only, depth_rho=rho, depth_ci_low=low,
                        depth_ci_high=high, n_depth_pairs=n_close, min_similarity=min_similarity,
                        counterfactual=counterfactual, method=method, matches=matches)


def _view_profiles(view: RunView, interventions: list[str], tasks: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """A view's ``"<intervention>:<task>"`` profile table over its grid, and its heads active on those columns."""
    cols, active = {}, np.zeros(len(view.grid), dtype=bool)
    for iv in interventions:
        arrays = view.arrays[iv]
        index = [arrays.tasks.index(t) for t in tasks]
        for t, j in zip(tasks, index):
            cols[f"{iv}{EFFECT_PREFIX_SEP}{t}"] = arrays.effect[:, j]
        active |= ACTIVE.mask(arrays.effect[:, index], arrays.se[:, index]).any(axis=1)
    profiles = pd.concat([view.grid[["layer", "head", "rel_depth"]],
                          pd.DataFrame(cols, index=view.grid.index)], axis=1)
    return profiles, active


def compare(
    view_a: RunView,
    view_b: RunView,
    *,
    active_only: bool = True,
    centre_rows: bool = True,
    n_perm: int = N_PERM,
    n_boot: int = 1000,
    min_similarity: float = 0.5,
    alpha: float = 0.05,
    seed: int | None = None,
) -> Conservation:
    """Are head functions conserved between two models? (module docstring).

    The columns are the claim interventions both views share (``view.interventions``) crossed
    with the tasks both share, each measured in both models.

    Args:
        view_a: :func:`~cortexmap.analysis.view.build_view` of model A's run.
        view_b: the same of model B's run.
        active_only: compare only heads :data:`~cortexmap.rules.ACTIVE` on some shared column in
            their own model, so that matching the noise profiles of inert heads does not dilute
            the score.
        centre_rows: centre each head's z-profile (module docstring).
        n_perm: permutations of the head-permutation null.
        n_boot: bootstrap replicates of the depth correlation.
        min_similarity: correlation floor of matched pairs in the depth correlation.
        alpha: the verdict's level.
        seed: random seed; None uses view A's.

    Returns:
        The :class:`Conservation` record.

    Raises:
        ResultsError: no shared claim intervention or task, or fewer than two heads to compare.
    """
    interventions = [iv for iv in view_a.interventions if iv in view_b.interventions]
    if not interventions:
        raise ResultsError(f"the runs share no claim intervention ({', '.join(view_a.interventions)} vs "
                           f"{', '.join(view_b.interventions)}): map both with the same interventions")
    tasks = []
    for t in view_a.tasks:
        if t in view_b.tasks and all(np.isfinite(v.arrays[iv].effect[:, v.tasks.index(t)]).any()
                                     for v in (view_a, view_b) for iv in interventions):
            tasks.append(t)
    if not tasks:
        raise ResultsError("the two models share no task measured under their shared interventions: "
                           "run both on a common battery")
    profiles_a, active_a = _view_profiles(view_a, interventions, tasks)
    profiles_b, active_b = _view_profiles(view_b, interventions, tasks)
    heads_a = list(profiles_a.index[active_a]) if active_only else None
    heads_b = list(profiles_b.index[active_b]) if active_only else None
    both = view_a.counterfactual and view_b.counterfactual
    method = (f"{' and '.join(interventions)} ({view_a.method} / {view_b.method}); "
              + ("counterfactual" if both else "zero ablation: off-distribution"))
    return conservation_test(profiles_a, profiles_b, heads_a=heads_a, heads_b=heads_b, n_perm=n_perm, n_boot=n_boot,
                             min_similarity=min_similarity, alpha=alpha, centre_rows=centre_rows,
                             seed=view_a.seed if seed is None else seed, models=(view_a.model, view_b.model),
                             method=method, counterfactual=both, active_only=active_only)


def compare_models(
    effects_a: pd.DataFrame,
    effects_b: pd.DataFrame,
    shape_a: tuple[int, int],
    shape_b: tuple[int, int],
    *,
    intervention: str | None = None,
    method: str | None = None,
    n_perm: int = N_PERM,
    n_boot: int = 1000,
    min_similarity: float = 0.5,
    active_only: bool = True,
    seed: int = 0,
) -> dict:
    """:func:`compare` on two effects tables, as a dict (the fields of :class:`Conservation`).

    Args:
        effects_a: effects table of model A.
        effects_b: effects table of model B.
        shape_a: (n_layers, n_heads) of A.
        shape_b: (n_layers, n_heads) of B.
        intervention: compare this intervention only; None uses the runs' shared claim
            interventions (:mod:`cortexmap.analysis.view`), or, when they share none, the first
            intervention both measured (counterfactual first, zero last; the record says which).
        method: the rows' method; None prefers exact.
        n_perm: permutations of the null.
        n_boot: bootstrap replicates for the depth correlation.
        min_similarity: correlation floor of matched pairs in the depth correlation.
        active_only: compare only active heads.
        seed: random seed.

    Returns:
        :meth:`Conservation.as_legacy_dict` (``matches`` a DataFrame).
    """
    interventions = None if intervention is None else (intervention,)
    if interventions is None:
        claims = [claim_interventions(e, method)[0] for e in (effects_a, effects_b)]
        if not set(claims[0]) & set(claims[1]):  # e.g. one run mapped with mean ablation, the other zero only
            present = [set(map(str, e["intervention"].unique())) for e in (effects_a, effects_b)]
            shared = [iv for iv in COUNTERFACTUAL + OFF_DISTRIBUTION if iv in present[0] & present[1]]
            interventions = tuple(shared[:1]) or None
    views = [build_view(e, s, interventions=interventions, method=method, n_boot=n_boot, seed=seed)
             for e, s in ((effects_a, shape_a), (effects_b, shape_b))]
    return compare(views[0], views[1], active_only=active_only, n_perm=n_perm, n_boot=n_boot,
                   min_similarity=min_similarity, seed=seed).as_legacy_dict()


def scale_comparison(views: list[RunView]) -> pd.DataFrame:
    """One row per model: size, specialization, share of active heads, redundancy.

    Args:
        views: one :class:`~cortexmap.analysis.view.RunView` per model (with its ``pairs`` table
            when ``cortexmap analyze --redundancy`` measured one).

    Returns:
        DataFrame: model, n_layers, n_heads, n_heads_total, specialization_mean over active heads
        (+ ci_low/ci_high; :mod:`cortexmap.analysis.specialization`), active_share (share of
        :data:`~cortexmap.rules.ACTIVE` heads, + ci over heads), fraction_redundant (+ ci; pairs
        whose interaction interval lies below 0) and mean_relative_interaction (+ ci; NaN without
        pairs; :mod:`cortexmap.analysis.redundancy`).
    """
    from cortexmap.analysis.redundancy import pair_redundancy
    from cortexmap.analysis.specialization import specialization

    rows = []
    for view in views:
        rng = np.random.default_rng(view.seed)
        spec = specialization(view)
        active = view.active.astype(float)
        low, high = percentile_interval(active[rng.integers(0, len(active), (view.n_boot, len(active)))].mean(axis=1))
        row = {"model": view.model, "n_layers": view.n_layers, "n_heads": view.n_heads,
               "n_heads_total": view.n_layers * view.n_heads, "specialization_mean": spec.mean,
               "specialization_ci_low": spec.ci_low, "specialization_ci_high": spec.ci_high,
               "active_share": float(active.mean()), "active_share_ci_low": float(low), "active_share_ci_high": float(high),
               "fraction_redundant": np.nan, "fraction_redundant_ci_low": np.nan, "fraction_redundant_ci_high": np.nan,
               "mean_relative_interaction": np.nan, "mean_relative_interaction_ci_low": np.nan,
               "mean_relative_interaction_ci_high": np.nan}
        if view.table("pairs") is not None:
            red = pair_redundancy(view)
            row.update({"fraction_redundant": red.fraction_redundant,
                        "fraction_redundant_ci_low": red.fraction_redundant_ci_low,
                        "fraction_redundant_ci_high": red.fraction_redundant_ci_high,
                        "mean_relative_interaction": red.mean_relative_interaction,
                        "mean_relative_interaction_ci_low": red.ci_low, "mean_relative_interaction_ci_high": red.ci_high})
        rows.append(row)
    return pd.DataFrame(rows)
