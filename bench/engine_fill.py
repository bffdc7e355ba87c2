"""Engine fill: heads of several layers per pass vs one layer per pass, on the default battery.

Usage::

    python bench/engine_fill.py --prompts 32 --screen 6 --full-tasks capitals,antonyms,ioi

For every built-in task (zero ablation, SmolLM2 by default) both engines measure every head on the
screen's subsample (``--screen`` prompts, the default map's main cost); on ``--full-tasks`` they
also measure every head on all ``--prompts`` prompts. Same process, same prepared batches,
alternating order; the table gives wall seconds, the ratio, and the largest difference between
the two engines' numbers (they must agree to float precision).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch

import cortexmap
from cortexmap.sweep.compute import exact_matrix, prepare
from cortexmap.sweep.plan import auto_rows
from cortexmap.sweep.runner import subsample_task
from cortexmap.tasks import build_task, encode_task, tasks_for


def timed(handle, batches, rows, mix):  # noqa: ANN001, ANN201
    t0 = time.perf_counter()
    out = exact_matrix(handle, batches, "zero", rows_per_pass=rows, mix_layers=mix)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--screen", type=int, default=6)
    parser.add_argument("--tasks", default="all")
    parser.add_argument("--full-tasks", default="capitals,antonyms,ioi")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    handle = cortexmap.load_model(args.model)
    print(f"{args.model}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs", flush=True)
    rows = []
    for name in tasks_for(args.tasks):
        task = build_task(name, handle.tokenizer, n=args.prompts, seed=args.seed)
        cases = [("screen", subsample_task(task, args.screen, args.seed)[0])]
        if name in args.full_tasks.split(","):
            cases.append(("all prompts", task))
        for label, t in cases:
            batches = prepare(handle, encode_task(t, handle.tokenizer, max_batch=64), need_corrupt=False)
            seq = max(b.input_ids.shape[1] for b in batches)
            budget = auto_rows(handle, seq)
            times = {}
            results = {}
            for mix in (False, True, True, False):  # alternate, keep the faster of two runs each
                s, out = timed(handle, batches, budget, mix)
                times[mix] = min(times.get(mix, np.inf), s)
                results[mix] = out
            rows.append({"task": name, "case": label, "prompts": len(t.pairs), "tokens": seq,
                         "one_layer_s": times[False], "mixed_s": times[True], "speedup": times[False] / times[True],
                         "max_diff": float(np.nanmax(np.abs(results[False] - results[True])))})
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    print(frame.round(3).to_string(index=False))
    for label, part in frame.groupby("case"):
        print(f"{label}: {len(part)} tasks, one layer per pass {part['one_layer_s'].sum():.1f} s, mixed "
              f"{part['mixed_s'].sum():.1f} s, speed-up {part['one_layer_s'].sum() / part['mixed_s'].sum():.2f}x "
              f"(median per task {part['speedup'].median():.2f}x), max diff {part['max_diff'].max():.1e}")


if __name__ == "__main__":
    main()
