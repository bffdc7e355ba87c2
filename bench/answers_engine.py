"""Exact engine vs a plain per-head loop on a task with multi-token answers (padded rows, teacher forcing).

Usage::

    python bench/answers_engine.py --task landmarks --prompts 16 --reps 3 --sample-layers 5

Workload: a built-in task (``landmarks`` by default: multi-token cities such as " New York" and
corrupt prompts of other lengths, aligned) or ``--task-file`` on SmolLM2, every pair in the
batches :func:`~cortexmap.tasks.encode_task` makes of it (right-padded where rows differ in length),
metric = the task's (``logprob_diff``: teacher-forced log-probability difference), per prompt.

Contenders, same process, same prepared batches and replacement activations, alternating order:

* ``cortexmap``: :func:`~cortexmap.sweep.compute.exact_matrix` (prefix reuse, heads on the batch
  axis, patching past the shared prefix, logits at the read positions only);
* ``plain loop``: one full forward pass of the padded batch per head, the head's output replaced by a
  hook (the same :class:`~cortexmap.interventions.edit.LayerEdit` values), logits at the reads.

The plain loop runs the heads of ``--sample-layers`` evenly spaced layers and is scaled to every
head (each of its head interventions is one full forward, whatever the layer); cortexmap runs all
heads. The table gives median wall seconds, the ratio, and the largest difference between the two
on the heads both ran.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import cortexmap
from cortexmap.interventions.edit import register_edits
from cortexmap.sweep.compute import exact_matrix, prepare, replaced_positions, replacement, task_means
from cortexmap.sweep.engine import head_block_edit
from cortexmap.sweep.plan import auto_rows
from cortexmap.tasks import build_task, encode_task, load_task_file
from cortexmap.tasks.evaluate import logits_at


@torch.no_grad()
def plain_loop(handle, batches, kind: str, heads: list[tuple[int, int]], means) -> np.ndarray:  # noqa: ANN001
    """One hooked full forward of each batch per head."""
    n = sum(len(b.indices) for b in batches)
    out = np.full((n, handle.n_layers * handle.n_heads), np.nan)
    for tb in batches:
        reads = tb.reads()
        for layer, head in heads:
            repl = replacement(kind, tb, layer, means, 0, handle)
            edit = head_block_edit(handle.n_heads, [head], tb.n_rows, kind, 0.0, repl, replaced_positions(kind, tb))
            hooks = register_edits(handle, {layer: edit})
            try:
                logits = logits_at(handle.model, tb.input_ids, reads)
            finally:
                for h in hooks:
                    h.remove()
            out[tb.indices, layer * handle.n_heads + head] = tb.metric(logits).cpu().numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="landmarks")
    parser.add_argument("--task-file", default="")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--interventions", default="patch,mean")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sample-layers", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    handle = cortexmap.load_model(args.model)
    task = (load_task_file(args.task_file, handle.tokenizer) if args.task_file
            else build_task(args.task, handle.tokenizer, n=args.prompts, seed=0))
    batches = encode_task(task, handle.tokenizer, max_batch=64)
    rows = [b.n_rows for b in batches]
    padded = sum(b.lengths is not None for b in batches)
    seq = max(b.input_ids.shape[1] for b in batches)
    print(f"{args.model} on {task.name} ({task.metric}): {len(task.pairs)} pairs in {len(batches)} batches "
          f"({padded} padded), {sum(rows)} rows of <= {seq} tokens; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}", flush=True)
    layers = np.unique(np.linspace(0, handle.n_layers - 1, args.sample_layers).round().astype(int)).tolist()
    sampled = [(l, h) for l in layers for h in range(handle.n_heads)]
    scale = handle.n_layers / len(layers)
    budget = auto_rows(handle, seq)
    print("| intervention | cortexmap median s (all heads) | plain loop median s (scaled to all heads) | speed-up "
          "| largest difference |")
    print("|---|---:|---:|---:|---:|")
    for kind in args.interventions.split(","):
        prepared = prepare(handle, batches, need_corrupt=kind == "patch")
        means = task_means(prepared) if kind == "mean" else None
        fast_t, slow_t = [], []
        fast = slow = None
        for rep in range(args.reps):
            order = ("fast", "slow") if rep % 2 == 0 else ("slow", "fast")
            for who in order:
                t0 = time.perf_counter()
                if who == "fast":
                    fast = exact_matrix(handle, prepared, kind, rows_per_pass=budget, means=means)
                    fast_t.append(time.perf_counter() - t0)
                else:
                    slow = plain_loop(handle, prepared, kind, sampled, means)
                    slow_t.append((time.perf_counter() - t0) * scale)
        cols = [l * handle.n_heads + h for l, h in sampled]
        diff = float(np.nanmax(np.abs(fast[:, cols] - slow[:, cols])))
        f, s = float(np.median(fast_t)), float(np.median(slow_t))
        print(f"| {kind} | {f:.1f} ({', '.join(f'{t:.1f}' for t in fast_t)}) | {s:.1f} "
              f"({', '.join(f'{t:.1f}' for t in slow_t)}) | {s / f:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
