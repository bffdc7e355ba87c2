"""Cost of verified recall: which screen finds the heads that matter, for a budget of exact measurements.

Usage (after the truth, an all-exact map of the battery, exists)::

    cortexmap map --method exact --prompts 32 --out runs/exact32
    python bench/screens.py --truth runs/exact32 --out bench/results/screens.csv

For every task of the truth run (zero ablation) the screens rank all heads; a budget of ``B``
exact head measurements verifies the top ``B``. Verified recall is the share of the exact top-10
heads (largest ``|effect|``, either sign) and of all heads with exact ``|effect_normalized| >= 0.05``
that the top ``B`` holds. Screens:

* ``attribution``: the first-order estimate (one forward, one backward pass per batch);
* ``graddrop``: AtP*'s GradDrop (Kramár et al. 2024) at decoder-block granularity: for each block
  ``l`` the attribution estimate with the gradient through that block's residual branches dropped
  (the block is an identity on the backward pass), scored ``mean_l |estimate_l|``;
* ``exact-sS``: exact on a seeded subsample of ``S`` prompts (the runner's own
  :func:`~cortexmap.sweep.runner.subsample_task`), read from the truth's per-prompt effects,
  which are the numbers the exact engine computes on those prompts;
* ``adaptive``: what ``--method screen`` verifies: ``exact-s4`` ranked, then
  :func:`~cortexmap.sweep.verify.adaptive_verify` with its default policy (exact effects from the truth).

Costs are measured seconds on this machine (attribution, graddrop: timed here; exact-sS: the truth
run's own per-task time scaled by S / n_prompts, as a pass's cost is linear in its rows).
``--tuned`` names the tasks the policy was chosen on; the summary is printed for the others
(held out) and for all tasks.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch

import cortexmap
from cortexmap.results import load_results
from cortexmap.sweep.compute import attribution_matrix, clean_metrics, prepare
from cortexmap.sweep.runner import subsample_task
from cortexmap.rules import BAR
from cortexmap.sweep.verify import VerifyPolicy, adaptive_verify, is_important, screen_order
from cortexmap.tasks import build_task, encode_task

BUDGETS = (10, 20, 32, 48, 64, 96)
TUNED = "ioi,capitals,subject_verb_agreement,past_tense,antonyms"  # the tasks the policy was chosen on


def graddrop_scores(handle: Any, batches: list[Any]) -> np.ndarray:
    """``mean_l |sum over prompts of (-z) . dM/dz with block l's branches dropped on the backward pass|`` per head."""
    n_l, n_h = handle.n_layers, handle.n_heads
    total = np.zeros((n_l, n_l * n_h))
    blocks = handle.blocks()
    for dropped in range(n_l):
        def identity_backward(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
            hidden = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output
            new = hidden + (out - hidden).detach()
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        hook = blocks[dropped].register_forward_hook(identity_backward, with_kwargs=True)
        try:
            est = attribution_matrix(handle, batches, "zero")  # estimate + clean, per prompt
        finally:
            hook.remove()
        total[dropped] = np.nanmean(est - clean_metrics(batches)[:, None], axis=0)
    return np.abs(total).mean(axis=0)


def recall_row(score: np.ndarray, truth: np.ndarray, budgets: tuple[int, ...]) -> dict[str, float]:
    order = screen_order(score)
    top10 = set(np.argsort(-np.abs(truth))[:10])
    active = set(np.flatnonzero(np.abs(truth) >= BAR))
    row = {}
    for b in budgets:
        picked = set(order[:b])
        row[f"top10@{b}"] = len(picked & top10) / 10
        row[f"bar@{b}"] = len(picked & active) / len(active) if active else np.nan
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", required=True, help="an all-exact run directory (zero ablation)")
    parser.add_argument("--out", default="bench/results/screens.csv")
    parser.add_argument("--tuned", default=TUNED)
    parser.add_argument("--sizes", default="2,4,6,8")  # the default policy's size must be among them
    parser.add_argument("--graddrop", default="all", help="tasks to run GradDrop on (all, none, or a comma list): "
                        "it costs one backward pass per block")
    args = parser.parse_args()
    truth_run = load_results(args.truth)
    mf = truth_run.manifest
    n_prompts, seed = int(mf["arguments"]["n_prompts"]), int(mf["arguments"]["seed"])
    handle = cortexmap.load_model(mf["model"]["spec"])
    effects = truth_run.effects
    prompts = truth_run.prompt_effects()
    effects = effects[(effects["intervention"] == "zero") & (effects["method"] == "exact")]
    prompts = prompts[(prompts["intervention"] == "zero") & (prompts["method"] == "exact")]
    n_cols = handle.n_layers * handle.n_heads
    tuned = set(args.tuned.split(","))
    rows = []
    for task_name, eff in effects.groupby("task", sort=True):
        truth, z = np.full(n_cols, np.nan), np.full(n_cols, np.nan)
        cols = (eff["layer"] * handle.n_heads + eff["head"]).to_numpy()
        truth[cols] = eff["effect_normalized"].to_numpy()
        se = (eff["ci_high"] - eff["ci_low"]) / (2 * 1.959964) / eff["clean"].abs()
        z[cols] = (eff["effect_normalized"] / se).to_numpy()
        clean_scale = abs(float(eff["clean"].iloc[0]))
        exact_s = float(mf["timings"].get(f"{task_name}__zero__exact", np.nan))
        task = build_task(task_name, handle.tokenizer, n=n_prompts, seed=seed)
        common = {"task": task_name, "held_out": task_name not in tuned, "n_active": int((np.abs(truth) >= BAR).sum())}
        per_prompt = prompts[prompts["task"] == task_name].pivot_table(index="prompt", columns=["layer", "head"],
                                                                        values="effect")
        for size in map(int, args.sizes.split(",")):
            _, picked = subsample_task(task, size, seed)
            sub = per_prompt.loc[picked]
            score = np.full(n_cols, np.nan)
            score[[l * handle.n_heads + h for l, h in sub.columns]] = sub.mean(axis=0).to_numpy() / clean_scale
            rows.append({**common, "screen": f"exact-s{size}", "cost_s": exact_s * size / n_prompts,
                         **recall_row(score, truth, BUDGETS)})
            if size == VerifyPolicy().screen_prompts:
                policy = VerifyPolicy()
                result = adaptive_verify(screen_order(score), lambda cs: {c: (float(truth[c]), float(z[c])) for c in cs},
                                         policy, seed=seed)
                verified = np.array(result.verified)
                top10 = set(np.argsort(-np.abs(truth))[:10])
                active = {c for c in range(n_cols) if is_important(truth[c], z[c], policy)}
                rows.append({**common, "screen": "adaptive", "verified": len(verified), "stopped": result.stopped,
                             "cost_s": exact_s * (size / n_prompts + (len(verified) + len(result.audited)) / n_cols),
                             "top10": len(set(verified) & top10) / 10,
                             "important": len(set(verified) & active) / len(active) if active else np.nan})
        batches = prepare(handle, encode_task(task, handle.tokenizer, max_batch=64), need_corrupt=False)
        t0 = time.perf_counter()
        est = attribution_matrix(handle, batches, "zero")
        attr_s = time.perf_counter() - t0
        score = np.nanmean(est - clean_metrics(batches)[:, None], axis=0) / clean_scale
        rows.append({**common, "screen": "attribution", "cost_s": attr_s, **recall_row(score, truth, BUDGETS)})
        if args.graddrop == "all" or task_name in args.graddrop.split(","):
            t0 = time.perf_counter()
            score = graddrop_scores(handle, batches)
            rows.append({**common, "screen": "graddrop", "cost_s": time.perf_counter() - t0,
                         **recall_row(score, truth, BUDGETS)})
        print(f"{task_name}: done", flush=True)
    frame = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    for label, part in (("held-out tasks", frame[frame["held_out"]]), ("all tasks", frame)):
        cols = ["cost_s"] + [c for c in frame.columns if c.startswith(("top10@", "bar@"))]
        table = part[part["screen"] != "adaptive"].groupby("screen")[cols].median()
        table["tasks"] = part[part["screen"] != "adaptive"].groupby("screen")["task"].nunique()
        print(f"\nmedian over {part['task'].nunique()} {label} (torch threads {torch.get_num_threads()}):")
        print(table.round(2).to_string())
        adaptive = part[part["screen"] == "adaptive"]
        print(f"adaptive: verified median {adaptive['verified'].median():.0f} (max {adaptive['verified'].max():.0f}); "
              f"top-10 recall median {adaptive['top10'].median():.2f}, min {adaptive['top10'].min():.2f}; "
              f"important-head recall median {adaptive['important'].median():.2f}, min {adaptive['important'].min():.2f}; "
              f"cost median {adaptive['cost_s'].median():.1f} s")


if __name__ == "__main__":
    main()
