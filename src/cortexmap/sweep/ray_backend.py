"""Ray backend: work units (task, intervention, layer block) on workers that load the model once each.

``--backend ray --address ADDR`` joins a running cluster; without an address a local Ray
instance with ``n_workers`` CPUs starts. Each worker holds one model replica: with a CUDA
device it reserves ``gpus_per_worker`` GPUs, and with ``device="auto"`` it shards the replica
over them (``device_map="auto"``; Ray shows each worker only its own GPUs). Workers run the same
per-layer computations as the local backend, so the numbers are the same.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from cortexmap.errors import CortexmapError
from cortexmap.sweep.backends import LocalBackend, Tick
from cortexmap.sweep.config import SweepConfig


class _Worker:
    """One model replica on a Ray worker."""

    def __init__(self, config: SweepConfig) -> None:
        self.backend = LocalBackend(config)

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()

    def probes(self) -> Any:
        return self.backend.probes()

    def matrix(self, task: Any, spec: Any, method: str, heads: list[tuple[int, int]] | None) -> Any:
        return self.backend.matrix(task, spec, method, heads=heads)


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

    def describe(self) -> dict[str, Any]:
        return self._facts

    def probes(self) -> Any:
        return self.ray.get(self.workers[0].probes.remote())

    def matrix(self, task: Any, spec: Any, method: str, heads: list[tuple[int, int]] | None = None,
               tick: Tick | None = None) -> tuple[np.ndarray, np.ndarray]:
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
        for part, block_clean in pool.map_unordered(lambda a, b: a.matrix.remote(task, spec, "exact", b), blocks):
            columns = ~np.isnan(part).all(0)
            if merged is None:
                merged = np.full_like(part, np.nan)
            merged[:, columns] = part[:, columns]
            clean = block_clean
            if tick:
                tick(int(columns.sum()))
        return merged, clean

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)
        self.workers = []
