"""Ray backend: global work units on workers that load the model once each.

``--backend ray --address ADDR`` joins a running cluster; without an address a local Ray
instance with ``n_workers`` CPUs starts. Each worker holds one model replica: with a CUDA
device it reserves ``gpus_per_worker`` GPUs, and with ``device="auto"`` it shards the replica
over them (``device_map="auto"``; Ray shows each worker only its own GPUs).

Work is scheduled over the whole run, not unit by unit (:meth:`RayBackend.units`): every
unfinished (task, intervention) of an exact run is cut into head blocks of equal cost (a head at
layer ``l`` reruns ``L - l`` blocks), and all blocks of all units go into one queue that keeps
every worker busy; a unit is assembled and stored as soon as its last block returns. Attribution
and screen units run whole, one per worker, all of them in flight. Workers run the same
computations as the local backend (:func:`~cortexmap.sweep.runner.unit_results`), so the numbers
are the same. ``stats`` (stored in the manifest as ``ray``) records the busy fraction: worker
compute seconds / (workers x wall seconds).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator

import numpy as np

from cortexmap.errors import CortexmapError
from cortexmap.sweep.backends import LocalBackend
from cortexmap.sweep.compute import Tick
from cortexmap.sweep.config import SweepConfig


class _Worker:
    """One model replica on a Ray worker."""

    def __init__(self, config: SweepConfig) -> None:
        self.backend = LocalBackend(config)

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()

    def probes(self) -> Any:
        return self.backend.probes()

    def evidence(self, tasks: list[Any], probes: bool = True) -> Any:
        return self.backend.evidence(tasks, probes)

    def matrix(self, task: Any, spec: Any, method: str, heads: list[tuple[int, int]] | None, means_of: Any = None) -> Any:
        return self.backend.matrix(task, spec, method, heads=heads, means_of=means_of)

    def block(self, key: int, task: Any, spec: Any, heads: list[tuple[int, int]]) -> Any:
        """``(key, matrix, clean, compute seconds)`` of one head block, exactly."""
        t0 = time.perf_counter()
        matrix, clean = self.backend.matrix(task, spec, "exact", heads=heads)
        return key, matrix, clean, time.perf_counter() - t0

    def unit(self, key: int, task: Any, specs: list[Any], base: str, config: SweepConfig) -> Any:
        """``(key, [(spec, effects, prompt effects, info)], compute seconds)`` of a whole work item."""
        from cortexmap.sweep.runner import unit_results

        t0 = time.perf_counter()
        done = unit_results(self.backend, task, specs, base, config, lambda n: None)
        return key, done, time.perf_counter() - t0


def balanced_blocks(heads: list[tuple[int, int]], n_layers: int, n_blocks: int) -> list[list[tuple[int, int]]]:
    """Cut ``heads`` (sorted by layer) into at most ``n_blocks`` runs of about equal cost ``sum(L - layer)``."""
    heads = sorted(heads)
    total = sum(n_layers - layer for layer, _ in heads)
    target = total / max(1, n_blocks)
    blocks: list[list[tuple[int, int]]] = [[]]
    cost = 0.0
    for layer, head in heads:
        if cost >= target * len(blocks) and len(blocks) < n_blocks:
            blocks.append([])
        blocks[-1].append((layer, head))
        cost += n_layers - layer
    return [b for b in blocks if b]


class RayBackend:
    """Fans each unit out over Ray workers by layer blocks and reassembles the matrix."""

    def __init__(self, config: SweepConfig, note: Callable[[str], None] | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise CortexmapError("the ray backend needs the ray extra: pip install 'cortexmap[ray]'") from None
        from cortexmap.models import load_tokenizer

        self.ray = ray
        self.config = config
        if not ray.is_initialized():
            if config.address:
                ray.init(address=config.address, log_to_driver=False)
            else:
                ray.init(num_cpus=config.n_workers, include_dashboard=False, log_to_driver=False)
        device = config.resolved_device
        on_gpu = device.startswith("cuda") or (device == "auto" and bool(ray.cluster_resources().get("GPU")))
        gpus = config.gpus_per_worker if on_gpu else 0
        worker = ray.remote(num_cpus=1, num_gpus=gpus)(_Worker)
        if note:
            note(f"starting {config.n_workers} Ray workers (one model replica each) ...")
        self.workers = [worker.remote(config) for _ in range(config.n_workers)]
        self.tokenizer = load_tokenizer(config.model)
        self._facts: dict[str, Any] = ray.get(self.workers[0].describe.remote())
        self.stats: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        return self._facts

    def probes(self) -> Any:
        return self.ray.get(self.workers[0].probes.remote())

    def evidence(self, tasks: list[Any]) -> Any:
        """:meth:`LocalBackend.evidence` with the tasks spread over the workers (the probes on the first);
        each task's rows depend on that task alone, so the table equals the local one."""
        import pandas as pd

        n = max(1, min(len(self.workers), len(tasks)))
        shares = [tasks[i::n] for i in range(n)]
        pending = [self.workers[i].evidence.remote(share, i == 0) for i, share in enumerate(shares)]
        frames = self.ray.get(pending)
        order = {task.name: i for i, task in enumerate(tasks)}
        table = pd.concat(frames, ignore_index=True)
        key = table["name"].map(order).fillna(len(tasks)) if len(table) else table["name"]
        return table.assign(_order=key).sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)

    def matrix(self, task: Any, spec: Any, method: str, heads: list[tuple[int, int]] | None = None,
               tick: Tick | None = None, means_of: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Split the unit's heads into layer blocks, one Ray task each, and merge the columns."""
        from ray.util import ActorPool

        n_layers, n_heads = self._facts["n_layers"], self._facts["n_heads"]
        if method == "attribution":  # one pass covers every head: no split
            matrix, clean = self.ray.get(self.workers[0].matrix.remote(task, spec, method, None))
            if tick:
                tick(n_layers * n_heads * 0.05)
            return matrix, clean
        wanted = heads if heads is not None else [(l, h) for l in range(n_layers) for h in range(n_heads)]
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for layer, head in wanted:
            by_layer.setdefault(layer, []).append((layer, head))
        blocks = list(by_layer.values())
        pool = ActorPool(self.workers)
        merged: np.ndarray | None = None
        clean = None
        for part, block_clean in pool.map_unordered(lambda a, b: a.matrix.remote(task, spec, "exact", b, means_of), blocks):
            columns = ~np.isnan(part).all(0)
            if merged is None:
                merged = np.full_like(part, np.nan)
            merged[:, columns] = part[:, columns]
            clean = block_clean
            if tick:
                tick(int(columns.sum()))
        return merged, clean

    def units(self, todo: list[tuple[Any, list[Any], str]], config: SweepConfig, progress: Any) -> Iterator[tuple]:
        """Run every work item of ``todo`` (``(task, specs, base)``) with several in flight; yield each unit as it completes.

        Yields ``(task, spec, base, effects, prompt effects, info, compute seconds)``.
        """
        from ray.util import ActorPool

        from cortexmap.sweep.runner import unit_meta, unit_weight, with_variants
        from cortexmap.sweep.summary import effect_rows

        facts = self._facts
        n_layers, n_heads = facts["n_layers"], facts["n_heads"]
        every = [(l, h) for l in range(n_layers) for h in range(n_heads)]
        pool = ActorPool(self.workers)
        started, busy = time.perf_counter(), 0.0
        pending: dict[int, dict[str, Any]] = {}
        n_blocks = max(1, math.ceil(2 * len(self.workers) / max(1, len(todo))))
        for key, (task, specs, base) in enumerate(todo):
            spec = specs[0]
            if base == "exact":
                blocks = balanced_blocks(every, n_layers, min(n_blocks, n_layers))
                pending[key] = {"left": len(blocks), "matrix": None, "clean": None, "seconds": 0.0}
                for block in blocks:
                    pool.submit(lambda a, v: a.block.remote(*v), (key, task, spec, block))
            else:
                pending[key] = {"left": 1}
                pool.submit(lambda a, v: a.unit.remote(*v), (key, task, specs, base, config))
        while pool.has_next():
            result = pool.get_next_unordered()
            key = result[0]
            task, specs, base = todo[key]
            spec = specs[0]
            state = pending[key]
            if base == "exact":
                _, part, clean, seconds = result
                columns = ~np.isnan(part).all(0)
                if state["matrix"] is None:
                    state["matrix"] = np.full_like(part, np.nan)
                state["matrix"][:, columns] = part[:, columns]
                state["clean"], state["seconds"] = clean, state["seconds"] + seconds
                busy += seconds
                progress.advance(float(columns.sum()))
                state["left"] -= 1
                if state["left"]:
                    continue
                meta = {**unit_meta(facts, task, spec), "method": "exact"}
                effects, prompts = effect_rows(state["matrix"], state["clean"], meta, n_layers, n_heads, config.seed)
                info, seconds = {}, state["seconds"]
            else:
                _, done, seconds = result
                busy += seconds
                progress.advance(len(done) * unit_weight(base, config, n_layers * n_heads))
                self._stats(started, busy)
                for spec, effects, prompts, info in done:
                    yield task, spec, base, effects, prompts, info, seconds / len(done)
                continue
            self._stats(started, busy)
            yield task, spec, base, effects, with_variants(prompts, task), info, seconds

    def _stats(self, started: float, busy: float) -> None:
        wall = time.perf_counter() - started
        self.stats = {"workers": len(self.workers), "wall_s": round(wall, 2), "busy_s": round(busy, 2),
                      "busy_fraction": round(busy / (len(self.workers) * wall), 3) if wall > 0 else None}

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)
        self.workers = []
