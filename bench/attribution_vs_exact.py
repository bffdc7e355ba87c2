"""Attribution screen vs exact sweep: zero ablation of every head of SmolLM2-135M on the IOI task.

Usage::

    python bench/attribution_vs_exact.py --prompts 16 --reps 3 --threads 1

Both contenders run as the local backend runs them, clean pass included: ``prepare`` then
:func:`~cortexmap.sweep.compute.exact_matrix` or
:func:`~cortexmap.sweep.compute.attribution_matrix`, on the same prompts (the largest
equal-length IOI batch), alternately in one process; the table reports medians of process CPU
time (robust to other jobs on the machine with ``--threads 1``) and of wall time. Agreement is the
Spearman correlation of the per-head mean effects (intervened - clean), of their magnitudes, and
the overlap of the top-10 heads by magnitude.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from scipy.stats import spearmanr

import cortexmap
from cortexmap.sweep.compute import (
    TaskBatch,
    attribution_matrix,
    clean_metrics,
    exact_matrix,
    prepare,
)
from cortexmap.tasks import build_task, encode_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kind", default="zero", choices=["zero", "mean", "resample", "amplify"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    handle = cortexmap.load_model(args.model)
    task = build_task("ioi", handle.tokenizer, n=max(128, 4 * args.prompts), seed=0)
    batch = max(encode_task(task, handle.tokenizer), key=len)
    n = min(args.prompts, len(batch))
    tb = TaskBatch(batch.input_ids[:n], None, batch.target_ids[:n], batch.foil_ids[:n], list(range(n)))
    print(f"{args.model}: {handle.n_layers * handle.n_heads} heads, {n} IOI prompts of {tb.input_ids.shape[1]} "
          f"tokens, {args.kind} ablation, torch threads={torch.get_num_threads()}", flush=True)

    def run(method: str) -> tuple[np.ndarray, np.ndarray]:
        prepared = prepare(handle, [tb], need_corrupt=False)
        fn = exact_matrix if method == "exact" else attribution_matrix
        return fn(handle, prepared, args.kind, 0.5 if args.kind == "amplify" else 0.0), clean_metrics(prepared)

    times: dict[str, list[float]] = {"exact": [], "attribution": []}
    cpu: dict[str, list[float]] = {"exact": [], "attribution": []}
    effects: dict[str, np.ndarray] = {}
    for rep in range(args.reps):
        for method in (["exact", "attribution"] if rep % 2 == 0 else ["attribution", "exact"]):
            start, cpu_start = time.perf_counter(), time.process_time()
            matrix, clean = run(method)
            times[method].append(time.perf_counter() - start)
            cpu[method].append(time.process_time() - cpu_start)
            effects[method] = (matrix - clean[:, None]).mean(0)  # per head: mean effect over prompts
            print(f"  rep {rep + 1}: {method:<12} wall {times[method][-1]:8.2f} s   cpu {cpu[method][-1]:8.2f} s",
                  flush=True)

    median = {m: statistics.median(t) for m, t in times.items()}
    med_cpu = {m: statistics.median(t) for m, t in cpu.items()}
    exact, attr = effects["exact"], effects["attribution"]
    top = 10
    overlap = len(set(np.argsort(-np.abs(exact))[:top]) & set(np.argsort(-np.abs(attr))[:top]))
    print("\n| method | median CPU s | CPU runs (s) | median wall s | wall runs (s) |\n|---|---:|---|---:|---|")
    for m, runs in times.items():
        print(f"| {m} | {med_cpu[m]:.2f} | {', '.join(f'{t:.1f}' for t in cpu[m])} | {median[m]:.2f} "
              f"| {', '.join(f'{t:.1f}' for t in runs)} |")
    print(f"\nattribution is {med_cpu['exact'] / med_cpu['attribution']:.1f}x faster by CPU time "
          f"({median['exact'] / median['attribution']:.1f}x by wall time); "
          f"Spearman(effect) = {spearmanr(exact, attr).statistic:.3f}, "
          f"Spearman(|effect|) = {spearmanr(np.abs(exact), np.abs(attr)).statistic:.3f}, "
          f"top-{top} overlap = {overlap}/{top}")


if __name__ == "__main__":
    main()
