"""False-positive rates of the atlas's level tests on batteries whose depth is clustered by task.

Each simulated battery has the built-in battery's shape (SmolLM2: 30 layers x 9 heads; 25 tasks
over six levels, 32 prompts, patching and mean ablation) and keeps each task's important heads
around a task-specific depth drawn independently of its level (:mod:`cortexmap.analysis.nulls`):
no level claim is true, yet depth varies a lot between tasks. Side by side on the same data sets:

* ``depth order (shipped)``: level labels permuted across tasks (:func:`cortexmap.analysis.levels.depth_order`);
* ``depth order (layer shuffle)``: the test cortexmap shipped before (cells pooled per level, layers
  shuffled, tasks ignored), re-implemented here;
* ``level depths``: each level against the others, task permutation (per level);
* ``layer bands``: the segmentation's BIC gain against level labels permuted across tasks.

Usage: ``python bench/calibration.py [--sets 1000] [--perm 500]``; prints a markdown table with
the rates and their Clopper-Pearson intervals (record it in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import rankdata

from cortexmap.analysis.levels import DEFAULT_LEVEL_ORDER, depth_order, layer_bands, level_depths, task_depths
from cortexmap.analysis.nulls import task_clustered_battery
from cortexmap.analysis.view import build_view
from cortexmap.stats import clopper_pearson


def layer_shuffle_p(td, rng: np.random.Generator, n_perm: int) -> tuple[float, float]:  # noqa: ANN001
    """The previous depth-order test: rho of ordinal and layer over the levels' pooled distributions, layers shuffled."""
    use = [lev for lev in dict.fromkeys(td.levels) if lev in DEFAULT_LEVEL_ORDER]
    dist = np.stack([np.nanmean(td.observed[[i for i, lv in enumerate(td.levels) if lv == lev]], axis=0) for lev in use])
    ordinals = np.array([DEFAULT_LEVEL_ORDER[lev] for lev in use], dtype=float)
    rx = rankdata(ordinals) / len(ordinals)
    rx = rx - rx.mean()

    def rho(d: np.ndarray) -> np.ndarray:  # d [..., D, L]
        joint = d / d.shape[-2]
        my = joint.sum(-2)
        ry = np.cumsum(my, -1) - my / 2
        mean_y = (my * ry).sum(-1, keepdims=True)
        cov = np.einsum("...dl,d,...l->...", joint, rx, ry - mean_y)
        return cov / np.sqrt((rx**2).mean() * (my * (ry - mean_y) ** 2).sum(-1))

    observed = float(rho(dist))
    perms = np.argsort(rng.random((n_perm, dist.shape[1])), axis=1)
    null = rho(np.moveaxis(dist[:, perms], 0, 1))
    return observed, float((1 + (null >= observed).sum()) / (1 + n_perm))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=1000)
    parser.add_argument("--perm", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    hits = {"depth order (shipped: level labels permuted across tasks)": [],
            "depth order (before: layers shuffled, tasks ignored)": [],
            "level depths, each level vs the rest (task permutation)": [],
            "layer bands (BIC gain vs level labels permuted across tasks)": []}
    keys = list(hits)
    t0 = time.time()
    for i in range(args.sets):
        sim = task_clustered_battery(rng, interventions=("patch", "mean"))
        view = build_view(sim.effects, sim.shape, n_boot=2, seed=i)
        td = task_depths(view)
        hits[keys[0]].append(depth_order(view, td=td, n_perm=args.perm, power=False).verdict == "supported")
        rho, p = layer_shuffle_p(td, rng, args.perm)
        hits[keys[1]].append(p < 0.05 and rho > 0)
        hits[keys[2]].extend((level_depths(view, td=td, n_perm=args.perm).table["p_value"].dropna() < 0.05).tolist())
        hits[keys[3]].append(layer_bands(view, td=td, n_perm=min(args.perm, 200)).p_value < 0.05)
        if (i + 1) % 50 == 0:
            print(f"# {i + 1} sets, {time.time() - t0:.0f} s", flush=True)
    print(f"\n{args.sets} simulated batteries (30 x 9 heads, 25 tasks in 6 levels, 32 prompts, patch + mean), "
          f"{args.perm} permutations, seed {args.seed}, {time.time() - t0:.0f} s\n")
    print("| test | rejections | false-positive rate at nominal 5% [95% CI] |\n|---|---:|---|")
    for name, values in hits.items():
        k, n = int(np.sum(values)), len(values)
        low, high = clopper_pearson(k, n)
        print(f"| {name} | {k} / {n} | {100 * k / n:.1f}% [{100 * low:.1f}%, {100 * high:.1f}%] |")


if __name__ == "__main__":
    main()
