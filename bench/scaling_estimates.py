"""GPU estimates behind ``docs/scaling.md``: forward passes, FLOPs and hours of a full map, on 1 and N GPUs.

Usage::

    python bench/scaling_estimates.py --utilization 0.4 --small-utilization 0.15 --gpus 1,8,32

Everything here is arithmetic, not measurement: FLOPs from :mod:`cortexmap.sweep.plan`'s
conventions (``2 * n_params * tokens`` per forward-pass equivalent), time at an *assumed*
fraction of the H100's dense bf16 peak. Replace the assumptions with ``bench/scale.py``
measurements on a GPU. Multi-GPU times model the Ray backend as it is now
(:meth:`~cortexmap.sweep.ray_backend.RayBackend.units`): every unit's heads are cut into
``ceil(2 N / units)`` blocks of equal cost (a head at layer ``l`` costs ``n_layers - l``), all
blocks of all units are queued at once and each free replica takes the next one, so replicas
idle only at the very end of the map (``global_efficiency``). ``makespan_efficiency`` is the
earlier design (units one after another, one block per layer), kept for comparison.
"""

from __future__ import annotations

import argparse
import heapq
import math

import torch
from scale import build_config

from cortexmap.sweep.config import SweepConfig
from cortexmap.sweep.plan import ModelFacts, forward_equivalents, plan_run

H100_BF16 = 989e12
GPU_MEMORY = 80e9  # H100 SXM
SMALL = 1e9  # below this many parameters the GEMMs are too small for the large-model utilization


def makespan_efficiency(n_layers: int, replicas: int) -> float:
    """Busy fraction of ``replicas`` running one unit's per-layer blocks largest first."""
    loads = [0.0] * replicas
    for cost in range(n_layers, 0, -1):  # block at layer l costs n_layers - l; the pool hands out layer 0 first
        heapq.heapreplace(loads, loads[0] + cost)
    total = n_layers * (n_layers + 1) / 2
    return total / (replicas * max(loads))


def global_efficiency(n_layers: int, n_heads: int, units: int, replicas: int) -> float:
    """Busy fraction of ``replicas`` on a whole map scheduled as global cost-balanced blocks (FIFO queue)."""
    from cortexmap.sweep.ray_backend import balanced_blocks

    heads = [(l, h) for l in range(n_layers) for h in range(n_heads)]
    per_unit = min(n_layers, max(1, math.ceil(2 * replicas / units)))
    costs = [sum(n_layers - l for l, _ in block) for block in balanced_blocks(heads, n_layers, per_unit)]
    loads = [0.0] * replicas
    for _ in range(units):
        for cost in costs:
            heapq.heapreplace(loads, loads[0] + cost)
    return units * sum(costs) / (replicas * max(loads))


def duration(hours: float) -> str:
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{hours * 60:.1f} min" if hours * 60 >= 1 else f"{hours * 3600:.0f} s"


def gpus_per_replica(facts: ModelFacts, prompts: int, seq: int) -> int:
    """H100s one replica needs: weights + one task's caches + a pass of one batch, pooled over device_map shards."""
    for k in range(1, 17):
        plan = plan_run(facts, SweepConfig(n_prompts=prompts, interventions=["zero", "patch"], method="exact"), 1, seq, device="cuda", memory_bytes=int(k * GPU_MEMORY),
                        host_bytes=10**15)
        if plan.fits:
            return k
    raise SystemExit(f"{facts.name} needs more than 16 GPUs per replica")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2-small,gpt2-medium,gpt2-large,pythia-1.4b,pythia-2.8b,pythia-6.9b,"
                                            "pythia-12b,llama-2-7b,llama-2-13b,llama-2-70b")
    parser.add_argument("--tasks", type=int, default=25)
    parser.add_argument("--interventions", type=int, default=5, help="zero, mean, resample, patch, amplify")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--utilization", type=float, default=0.40, help="assumed fraction of bf16 peak, >= 1B params")
    parser.add_argument("--small-utilization", type=float, default=0.15, help="assumed fraction, < 1B params")
    parser.add_argument("--verify", type=int, default=5, help="K of attribution+verify:K")
    parser.add_argument("--gpus", default="1,2,8,32")
    args = parser.parse_args()
    gpus = [int(g) for g in args.gpus.split(",")]
    units = args.tasks * args.interventions
    batches = math.ceil(args.prompts / 64)
    tokens = min(args.prompts, 64) * args.seq
    print(f"full map: {args.tasks} tasks x {args.interventions} interventions x {args.prompts} prompts of "
          f"{args.seq} tokens; H100 bf16 peak {H100_BF16 / 1e12:.0f} TFLOP/s; utilization ASSUMED "
          f"{args.utilization:.0%} (>= 1B params), {args.small_utilization:.0%} (smaller)\n")
    head = ("| model | params | heads | H100s / replica | head interventions | exact FPE | exact PFLOP | "
            + " | ".join(f"exact, {g} GPU{'s' if g > 1 else ''}" for g in gpus)
            + f" | attribution+verify:{args.verify}, 1 replica |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name in args.models.split(","):
        f = ModelFacts.from_config(build_config(name), dtype=torch.bfloat16, name=name)
        L, H = f.n_layers, f.n_heads
        per_replica = gpus_per_replica(f, args.prompts, args.seq)
        u = args.utilization if f.n_params >= SMALL else args.small_utilization
        # A model sharded over k GPUs with device_map runs them one after another: one GPU's throughput.
        rate = H100_BF16 * u
        exact_fpe = units * batches * forward_equivalents(L, H, args.prompts, 0)
        attr_fpe = units * batches * forward_equivalents(L, H, args.prompts, 0, method="attribution", verify=args.verify)
        flop_per_fpe = 2 * f.n_params * tokens
        exact_h = exact_fpe * flop_per_fpe / rate / 3600
        cells = []
        for g in gpus:
            replicas = g // per_replica
            if replicas == 0:
                cells.append("does not fit")
                continue
            cells.append(duration(exact_h / (replicas * global_efficiency(L, H, units, replicas))))
        print(f"| {name} | {f.n_params / 1e9:.2f}B | {L * H:,} | {per_replica} | {units * L * H:,} | {exact_fpe:,.0f} "
              f"| {exact_fpe * flop_per_fpe / 1e15:,.0f} | " + " | ".join(cells)
              + f" | {duration(attr_fpe * flop_per_fpe / rate / 3600)} |")
    print("\nbusy fraction of N replicas, earlier design (one unit at a time, per-layer blocks) -> global units "
          f"({units} units):")
    for L, H in ((12, 12), (24, 16), (32, 32), (40, 40), (80, 64)):
        print(f"  {L} layers: " + ", ".join(f"{n} -> {makespan_efficiency(L, n):.2f} / {global_efficiency(L, H, units, n):.2f}"
                                          for n in (2, 4, 8, 16, 32)))


if __name__ == "__main__":
    main()
