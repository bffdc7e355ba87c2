"""Ray backend with global work units: busy fraction and speed-up for 1, 2 and 4 workers.

Usage::

    python bench/ray_busy.py --tasks ioi,capitals,antonyms,past_tense --prompts 8 --workers 1,2,4

The same exact map (zero ablation, probes off) runs on the local backend (this process, torch's
default threads) and on a local Ray cluster of CPU workers (one model replica and one CPU each).
For each: wall seconds of the sweep (model loading excluded: the runs reuse a warm cache of the
model on disk, and Ray workers start before the clock), the busy fraction (worker compute seconds
/ (workers x wall)) and the largest difference from the local backend's effects.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd

from cortexmap.sweep import SweepConfig, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="ioi,capitals,antonyms,past_tense")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    base = dict(model=args.model, tasks=args.tasks, n_prompts=args.prompts, method="exact", probes=False)
    root = Path(tempfile.mkdtemp(prefix="ray-busy-"))
    t0 = time.perf_counter()
    local = run_sweep(SweepConfig(**base), root / "local")
    units = [v for k, v in local.manifest["timings"].items() if "__" in k]
    rows = [{"backend": "local", "workers": "-", "sweep_s": sum(units),
             "wall_s": time.perf_counter() - t0, "busy_fraction": None, "max_diff": 0.0}]
    key = ["task", "layer", "head"]
    reference = local.effects.sort_values(key).reset_index(drop=True)
    import ray

    for n in map(int, args.workers.split(",")):
        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        result = run_sweep(SweepConfig(**base, backend="ray", n_workers=n), root / f"ray{n}")
        stats = result.manifest["ray"]
        got = result.effects.sort_values(key).reset_index(drop=True)
        rows.append({"backend": "ray", "workers": n, "sweep_s": stats["wall_s"], "wall_s": time.perf_counter() - t0,
                     "busy_fraction": stats["busy_fraction"],
                     "max_diff": float(np.abs(got["effect"].to_numpy() - reference["effect"].to_numpy()).max())})
        print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    one = frame.loc[frame["workers"] == 1, "sweep_s"]
    if len(one):
        frame["speedup_vs_1_worker"] = float(one.iloc[0]) / frame["sweep_s"]
    print(f"{os.cpu_count()} CPUs; {args.tasks} x zero, {args.prompts} prompts, exact")
    print(frame.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
