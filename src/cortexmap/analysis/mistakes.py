"""Why the model errs: the heads (and circuit edges) whose effects differ between prompts it gets right and wrong.

A prompt is *right* when its clean metric (logit difference target - foil) is above 0, *wrong*
otherwise. For every unit measured exactly on every prompt of a task (a head under the atlas's
intervention; a verified edge of ``cortexmap circuit``) the contrast is the mean effect on the
wrong prompts minus the mean on the right ones, with a 95% bootstrap interval (prompts resampled
within each group), a two-sided permutation p-value against shuffled right/wrong labels
(:func:`group_contrast`) and a Benjamini-Hochberg q-value over the task's
units. A task needs at least :data:`MIN_GROUP` prompts in each group; others are listed as not
evaluated.

Reading it. Effects are ``intervened - clean``, so on a head that carries the answer they are
negative; a positive contrast means the head contributes less to the answer on the prompts the
model gets wrong (e.g. a name mover that fails to move the right name). Wrong prompts also have
smaller (negative) clean margins, and an effect that scales with the margin differs for that
reason alone, often with its sign flipped (a head that carries the model's preference carries the
foil on a wrong prompt): the contrast says *where* right and wrong prompts part ways, not yet why.
Each finding therefore states both groups' mean clean margins.

Pandas and numpy only (no torch).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from cortexmap.analysis.resampling import percentile_interval
from cortexmap.errors import CortexmapError

MIN_GROUP = 3  # prompts needed in each of the right and wrong groups
CONTRAST_COLUMNS = ["task", "unit", "n_right", "n_wrong", "clean_right", "clean_wrong", "mean_right", "mean_wrong",
                    "diff", "ci_low", "ci_high", "p_value", "q_value"]


def group_contrast(
    values: np.ndarray, in_b: np.ndarray, n_boot: int = 1000, n_perm: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, np.ndarray]:
    """Difference of column means between two groups of rows (``b - a``), its interval and a permutation p-value.

    The interval resamples rows with replacement *within* each group (so the group sizes stay
    fixed); the p-value is two-sided, from ``n_perm`` shufflings of the group labels (the
    shuffled-label baseline), with the ``+1`` correction so it is never 0.

    Args:
        values: ``[n_samples, n_columns]`` (rows = prompts, columns = heads or edges).
        in_b: ``[n_samples]`` booleans: the rows of group ``b``; the others are group ``a``.
        n_boot: bootstrap resamples.
        n_perm: label permutations.
        seed: seed of both.
        level: coverage of the interval.

    Returns:
        ``mean_a, mean_b, diff, ci_low, ci_high, p_value``, each ``[n_columns]``.

    Raises:
        CortexmapError: bad ``n_boot`` / ``n_perm`` / ``level``, NaN values, a label vector of the
            wrong length, or a group with no rows.
    """
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise CortexmapError(f"n_boot must be >= 1 and level in (0, 1), got {n_boot} and {level}")
    x = np.asarray(values, dtype=float)
    b = np.asarray(in_b, dtype=bool)
    if x.ndim != 2 or b.shape != (x.shape[0],):
        raise CortexmapError(f"values must be [n_samples, n_columns] with one label per row, got {x.shape} and {b.shape}")
    if np.isnan(x).any():
        raise CortexmapError("values contain NaN; drop missing samples before contrasting groups")
    if n_perm < 1:
        raise CortexmapError(f"n_perm must be at least 1, got {n_perm}")
    n_b = int(b.sum())
    if n_b == 0 or n_b == len(b):
        raise CortexmapError(f"both groups need rows: {len(b) - n_b} in a, {n_b} in b")
    xa, xb = x[~b], x[b]
    mean_a, mean_b = xa.mean(0), xb.mean(0)
    diff = mean_b - mean_a
    rng = np.random.default_rng(seed)
    boot = (xb[rng.integers(0, len(xb), size=(n_boot, len(xb)))].mean(1)
            - xa[rng.integers(0, len(xa), size=(n_boot, len(xa)))].mean(1))
    low, high = percentile_interval(boot, level)
    labels = np.argsort(rng.random((n_perm, len(b))), axis=1) < n_b  # [n_perm, n]: a random b-group each
    weights_b = labels / n_b
    weights_a = ~labels / (len(b) - n_b)
    null = (weights_b - weights_a) @ x  # [n_perm, n_columns]
    p_value = (1 + (np.abs(null) >= np.abs(diff)[None] - 1e-12).sum(0)) / (1 + n_perm)
    return {"mean_a": mean_a, "mean_b": mean_b, "diff": diff, "ci_low": low, "ci_high": high, "p_value": p_value}


def contrast_units(values: np.ndarray, clean: np.ndarray, units: list[str], *, n_boot: int = 1000,
                   n_perm: int = 1000, seed: int = 0, min_group: int = MIN_GROUP) -> pd.DataFrame | None:
    """The right/wrong contrast of every column of ``values`` (one task), with each group's mean clean margin.

    Args:
        values: ``[n_prompts, n_units]`` per-prompt effects.
        clean: ``[n_prompts]`` clean metrics; ``> 0`` is right.
        units: the columns' names.
        n_boot: bootstrap resamples.
        n_perm: label permutations.
        seed: seed of both.
        min_group: prompts needed in each group.

    Returns:
        One row per unit (:data:`CONTRAST_COLUMNS` without ``task``), or None when a group has
        fewer than ``min_group`` prompts.
    """
    clean = np.asarray(clean, dtype=float)
    wrong = clean <= 0
    if min(wrong.sum(), (~wrong).sum()) < min_group or not units:
        return None
    c = group_contrast(values, wrong, n_boot=n_boot, n_perm=n_perm, seed=seed)
    return pd.DataFrame({"unit": units, "n_right": int((~wrong).sum()), "n_wrong": int(wrong.sum()),
                         "clean_right": float(clean[~wrong].mean()), "clean_wrong": float(clean[wrong].mean()),
                         "mean_right": c["mean_a"], "mean_wrong": c["mean_b"], "diff": c["diff"],
                         "ci_low": c["ci_low"], "ci_high": c["ci_high"], "p_value": c["p_value"],
                         "q_value": false_discovery_control(c["p_value"])})


def head_rows(prompt_effects: pd.DataFrame | None, intervention: str, alpha: float | None = None,
              method: str = "exact") -> tuple[pd.DataFrame | None, str | None]:
    """The run's per-prompt head effects as contrast input (``task, prompt, unit, effect, clean``), or a reason why not."""
    if prompt_effects is None or prompt_effects.empty:
        return None, "why the model errs: no per-prompt effects in this run"
    if "clean" not in prompt_effects:
        return None, ("why the model errs: this run's per-prompt effects lack the per-prompt clean metric (mapped by "
                      "an older cortexmap): re-run cortexmap map")
    rows = prompt_effects
    for column, value in (("intervention", intervention), ("method", method)):
        if column in rows:  # tables built by hand may hold one intervention and method only
            rows = rows[rows[column] == value]
    if alpha is not None and "alpha" in rows:
        rows = rows[np.isclose(rows["alpha"].astype(float), alpha)]
    unit = "L" + rows["layer"].astype(str) + "H" + rows["head"].astype(str)
    return rows.assign(unit=unit)[["task", "prompt", "unit", "effect", "clean"]], None


def edge_rows(circuit_prompts: pd.DataFrame | None) -> pd.DataFrame | None:
    """A run's ``circuit_prompts`` table (verified edges per prompt) as contrast input, ``unit`` = ``S -> R.kind``."""
    if circuit_prompts is None or circuit_prompts.empty:
        return None
    unit = circuit_prompts["sender"] + " -> " + circuit_prompts["receiver"] + "." + circuit_prompts["kind"]
    return circuit_prompts.assign(unit=unit)[["task", "prompt", "unit", "effect", "clean"]]


def error_contrasts(rows: pd.DataFrame | None, *, n_boot: int = 1000, n_perm: int = 1000, seed: int = 0,
                    min_group: int = MIN_GROUP) -> tuple[pd.DataFrame, list[str]]:
    """Per task, the units whose per-prompt effects differ between right and wrong prompts.

    Args:
        rows: ``task, prompt, unit, effect, clean`` (:func:`head_rows`, :func:`edge_rows`); units
            missing on some prompt of their task are left out.
        n_boot, n_perm, seed, min_group: as in :func:`contrast_units`; each task's draws are
            seeded by ``seed`` and its name, so a task gives the same numbers alone or with others.

    Returns:
        ``(contrasts, thin)``: one row per (task, unit) (:data:`CONTRAST_COLUMNS`), and the tasks
        with too few right or wrong prompts, as ``"task (r right / w wrong)"``.
    """
    frames, thin = [], []
    tasks = {} if rows is None else dict(sorted(rows.groupby("task", sort=False), key=lambda kv: str(kv[0])))
    for task, group in tasks.items():
        wide = group.pivot_table(index="prompt", columns="unit", values="effect", aggfunc="first").dropna(axis=1)
        clean = group.groupby("prompt")["clean"].first().reindex(wide.index).to_numpy(float)
        frame = contrast_units(wide.to_numpy(float), clean, list(wide.columns), n_boot=n_boot, n_perm=n_perm,
                               seed=seed + zlib.crc32(str(task).encode()) % 100_000, min_group=min_group)
        if frame is None:
            n_wrong = int((clean <= 0).sum())
            thin.append(f"{task} ({len(clean) - n_wrong} right / {n_wrong} wrong)")
        else:
            frames.append(frame.assign(task=str(task)))
    out = pd.concat(frames, ignore_index=True)[CONTRAST_COLUMNS] if frames else pd.DataFrame(columns=CONTRAST_COLUMNS)
    return out, thin


def error_summary(contrasts: pd.DataFrame, kind: str, q: float = 0.05, top: int = 5) -> list[dict]:
    """Per task: its group sizes, how many units differ at ``q``, and the rows worth stating.

    Args:
        contrasts: rows of :func:`error_contrasts` (heads' or a circuit's edges').
        kind: ``"head"`` or ``"edge"``.
        q: the q-value bar.
        top: differing rows kept per task (smallest p first); with none differing, the one with the
            smallest p is kept as the closest.

    Returns:
        JSON-ready dicts: ``task, kind, n_right, n_wrong, clean_right, clean_wrong`` (mean clean
        margins of the two groups), ``n_units, n_differ, rows``.
    """
    out = []
    for task, group in contrasts.groupby("task", sort=True):
        ordered = group.sort_values(["p_value", "diff"], key=lambda c: c if c.name == "p_value" else -c.abs())
        differ = ordered[ordered["q_value"] < q]
        shown = differ.head(top) if len(differ) else ordered.head(1)
        out.append({"task": str(task), "kind": kind, "n_right": int(group["n_right"].iloc[0]),
                    "clean_right": float(group["clean_right"].iloc[0]), "clean_wrong": float(group["clean_wrong"].iloc[0]),
                    "n_wrong": int(group["n_wrong"].iloc[0]), "n_units": int(len(group)), "n_differ": int(len(differ)),
                    "q": q, "rows": shown.drop(columns="task").to_dict("records")})
    return out
