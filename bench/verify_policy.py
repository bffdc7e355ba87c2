"""Choose the screen's budget from a full exact map: replay the screen on the exact numbers, no model needed.

Usage::

    python bench/verify_policy.py runs/smollm2-exact --tune ioi,capitals,subject_verb_agreement,past_tense,antonyms

The screen measures every head *exactly* on a seeded subsample of prompts, so its numbers are the
exact map's numbers on those prompts: for any policy, :func:`cortexmap.sweep.verify.adaptive_verify`
run on the exact run's per-prompt effects verifies the heads the real screen would (same
subsample as :func:`cortexmap.sweep.runner.subsample_task` draws, the same refined heads and
prompts, the same joint order over the interventions). For each policy this prints, per intervention, how many of the exact top-10
heads (largest ``|effect|``, either sign) each task measures exactly (median and worst over
tasks, the tuning tasks apart from the rest), and the predicted sweep time: each unit's exact
time scaled by the share of (head, prompt) evaluations the policy spends.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace

import numpy as np
import pandas as pd

from cortexmap.results import load_results
from cortexmap.sweep.verify import VerifyPolicy, adaptive_verify, refined_order, screen_order


def task_arrays(prompts: pd.DataFrame, n_cols: int, n_heads: int, interventions: list[str]) -> dict:
    """Per intervention ``[n_prompts, n_cols]`` per-prompt effects and the ``[n_prompts]`` clean metric."""
    out = {}
    for iv in interventions:
        rows = prompts[prompts["intervention"] == iv]
        n = int(rows["prompt"].max()) + 1
        delta = np.full((n, n_cols), np.nan)
        delta[rows["prompt"].to_numpy(int), (rows["layer"] * n_heads + rows["head"]).to_numpy(int)] = rows["effect"]
        clean = rows.groupby("prompt")["clean"].first().reindex(range(n)).to_numpy(float)
        out[iv] = (delta, clean)
    return out


def replay(arrays: dict, policy: VerifyPolicy, seed: int) -> dict:
    """What the screen would measure on one task (the runner's ``_screen_task`` on exact numbers)."""
    ivs = list(arrays)
    n, n_cols = arrays[ivs[0]][0].shape
    picked = np.sort(np.random.default_rng(seed).choice(n, size=min(policy.screen_prompts, n), replace=False))
    left = np.setdiff1d(np.arange(n), picked)
    second = np.sort(np.random.default_rng(seed + 1).choice(left, size=min(policy.refine_prompts, len(left)),
                                                             replace=False))

    def screened(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.stack([np.nanmean(arrays[iv][0][np.ix_(rows, cols)], axis=0)
                         / (abs(float(np.nanmean(arrays[iv][1][rows]))) or 1.0) for iv in ivs])

    first = screen_order(screened(picked, np.arange(n_cols)))
    refine = np.sort(first[:min(policy.refine_heads, n_cols)]) if len(second) else np.array([], dtype=int)
    order = refined_order(first, screened(np.concatenate([picked, second]), refine), refine) if len(refine) else first

    def measure(cols: list[int]) -> dict:
        out = {}
        for c in cols:
            pairs = []
            for iv in ivs:
                delta, clean = arrays[iv]
                d = delta[:, c]
                z = d.mean() / (d.std(ddof=1) / np.sqrt(len(d))) if d.std() > 0 else float("nan")
                pairs.append((float(d.mean()) / (abs(float(clean.mean())) or float("nan")), float(z)))
            out[c] = tuple(pairs)
        return out

    result = adaptive_verify(order, measure, policy, seed=seed)
    measured = set(result.verified) | set(result.audited)
    recall = {}
    for iv in ivs:
        top = np.argsort(-np.abs(np.nanmean(arrays[iv][0], axis=0)), kind="stable")[:10]
        recall[iv] = sum(int(c) in measured for c in top)
    refined = set(refine.tolist())
    evaluations = (len(picked) * n_cols + len(refine) * len(second)
                   + sum(n - len(picked) - (len(second) if c in refined else 0) for c in measured))
    return {"recall": recall, "share": evaluations / (n * n_cols), "measured": len(measured), "stopped": result.stopped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("truth", help="a run made with --method exact")
    parser.add_argument("--tune", default="ioi,capitals,subject_verb_agreement,past_tense,antonyms",
                        help="tasks the policy is chosen on (the others are held out)")
    parser.add_argument("--screen-prompts", default="2,3,4")
    parser.add_argument("--refine-heads", default="0,60,120")
    parser.add_argument("--refine-prompts", default="4")
    parser.add_argument("--min-heads", default="32")
    parser.add_argument("--max-heads", default="32,40,48")
    parser.add_argument("--audit", default="8")
    args = parser.parse_args()
    truth = load_results(args.truth)
    geometry = truth.manifest["model"]
    n_layers, n_heads = int(geometry["n_layers"]), int(geometry["n_heads"])
    seed = int(truth.manifest.get("seed", 0))
    prompts = truth.prompt_effects()
    prompts = prompts[prompts["method"] == "exact"]
    interventions = sorted(prompts["intervention"].unique())
    timings = truth.manifest.get("timings", {})
    tasks = sorted(prompts["task"].unique())
    tune = set(args.tune.split(","))
    arrays = {t: task_arrays(prompts[prompts["task"] == t], n_layers * n_heads, n_heads, interventions) for t in tasks}
    exact_s = {t: sum(float(timings.get(f"{t}__{iv}__exact", np.nan)) for iv in interventions) for t in tasks}
    print(f"truth: {args.truth} ({len(tasks)} tasks, {interventions}, exact sweep {np.nansum(list(exact_s.values())):.0f} s)")
    grid = itertools.product(*(map(int, getattr(args, k).split(",")) for k in
                               ("screen_prompts", "refine_heads", "refine_prompts", "min_heads", "max_heads", "audit")))
    rows = []
    for sp, rh, rp, lo, hi, audit in grid:
        policy = replace(VerifyPolicy(), screen_prompts=sp, refine_heads=rh, refine_prompts=rp, min_heads=min(lo, hi),
                         max_heads=hi, audit=audit)
        res = {t: replay(arrays[t], policy, seed) for t in tasks}
        row = {"screen": sp, "refine": f"{rh}x{rp}", "min": min(lo, hi), "max": hi, "audit": audit,
               "predicted_s": float(np.nansum([res[t]["share"] * exact_s[t] for t in tasks]))}
        for iv in interventions:
            for part, names in (("tune", [t for t in tasks if t in tune]), ("held", [t for t in tasks if t not in tune])):
                r = [res[t]["recall"][iv] for t in names]
                if r:
                    row[f"{iv}_{part}_median"], row[f"{iv}_{part}_worst"] = float(np.median(r)), int(min(r))
        row["all_heads_tasks"] = sum(res[t]["stopped"] == "none-important" for t in tasks)
        rows.append(row)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
