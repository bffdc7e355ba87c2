"""Pruning curve of the bundled SmolLM2-135M: gradient (one-shot and iterative), random and layer baselines.

Usage::

    python bench/prune_curve.py --out /tmp/prune-curve --heal 20 --threads 1

Writes ``curve.parquet``, ``curve.csv``, ``curve.png`` and ``importance.parquet`` to ``--out`` and
prints the table. Held-out loss is measured on 32 x 128 tokens of the held-out split of
:mod:`cortexmap.apply.corpus`; importance, head means and healing use the training split.
On a shared 2-core machine ``--threads 1`` is several times faster than 2 (less contention).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

import cortexmap
from cortexmap.apply import battery_scorer, gradient_scorer, layer_order_importance, pruning_curve, random_importance, token_chunks
from cortexmap.apply.run import plot_curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default="/tmp/cortexmap-prune-curve")
    parser.add_argument("--fractions", default="0.1,0.2,0.3,0.4")
    parser.add_argument("--heal", type=int, default=20, help="distillation steps (0: no healing)")
    parser.add_argument("--heal-methods", default="gradient/mean")
    parser.add_argument("--n-chunks", type=int, default=32)
    parser.add_argument("--importance-chunks", type=int, default=16)
    parser.add_argument("--no-iterative", action="store_true")
    parser.add_argument("--methods", default="gradient,random,layer", help="subset of gradient,random,layer")
    parser.add_argument("--replace", default="zero,mean")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--battery", type=int, default=16, help="pairs per task of the task battery (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def say(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {line}", flush=True)

    handle = cortexmap.load_model(args.model)
    train = token_chunks(handle.tokenizer, "train", 128)
    grad_ids = train.ids[: args.importance_chunks]
    say("gradient importance ...")
    builders = {  # gradient importance is computed per replacement mode (zero, or towards the mean)
        "gradient": lambda: gradient_scorer(handle, grad_ids, batch_size=4, iterative=False),
        "random": lambda: random_importance(handle, seed=0),
        "layer": lambda: layer_order_importance(handle, "last"),
    }
    importances = {name: builders[name]() for name in args.methods.split(",")}
    tables = {m: (t([], None) if callable(t) else t) for m, t in importances.items()}
    pd.concat([t.assign(method=m) for m, t in tables.items()]).to_parquet(out / "importance.parquet", index=False)
    if not args.no_iterative:
        importances["gradient_iter"] = gradient_scorer(handle, grad_ids, batch_size=4)
    fractions = [float(f) for f in args.fractions.split(",")]
    curve = pruning_curve(handle, importances, fractions, args.replace.split(","), heal_steps=args.heal,
                          heal_methods=args.heal_methods.split(","), train_text=train, n_chunks=args.n_chunks,
                          task_score=battery_scorer(handle, n_prompts=args.battery) if args.battery else None,
                          progress=say)
    curve.to_parquet(out / "curve.parquet", index=False)
    curve.to_csv(out / "curve.csv", index=False)
    plot_curve(curve, out / "curve.png")
    columns = ["method", "replace", "healed", "fraction", "heads_pruned", "kv_heads_removed",
               "attn_params_removed_frac", "total_params_removed_frac", "heldout_loss", "loss_delta_pct", "ppl_delta_pct", "task_delta_pct"]
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(curve[columns].round(4).to_string(index=False))
    say("done")


if __name__ == "__main__":
    main()
