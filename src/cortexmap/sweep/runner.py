"""``run_sweep``: every head x task x intervention of a model, stored as a resumable run directory."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from cortexmap.errors import CortexmapError, TaskError
from cortexmap.sweep.compute import attribution_matrix, clean_metrics, exact_matrix, prepare
from cortexmap.sweep.config import SweepConfig
from cortexmap.sweep.manifest import base_manifest
from cortexmap.sweep.plan import auto_rows
from cortexmap.sweep.store import PATTERNS, RunStore, unit_key, write_parquet
from cortexmap.sweep.summary import effect_rows

log = logging.getLogger(__name__)


class Progress(Protocol):
    """What the runner reports; the CLI renders it as a rich progress bar with an ETA."""

    def start(self, total: float, description: str) -> None: ...
    def advance(self, amount: float, description: str | None = None) -> None: ...
    def note(self, message: str) -> None: ...


class _Quiet:
    def start(self, total: float, description: str) -> None:
        pass

    def advance(self, amount: float, description: str | None = None) -> None:
        pass

    def note(self, message: str) -> None:
        log.info(message)


@dataclass
class SweepResult:
    """What a finished sweep produced."""

    run_dir: Path
    effects: pd.DataFrame
    patterns: pd.DataFrame
    manifest: dict[str, Any]


def build_tasks(config: SweepConfig, tokenizer: Any, note: Callable[[str], None]) -> tuple[list[Any], dict[str, str]]:
    """Build the selected tasks; built-ins chosen by level or ``all`` that cannot be built are skipped."""
    from cortexmap.tasks import build_task, tasks_for

    if config.task_file:
        from cortexmap.tasks import load_task_file

        return [load_task_file(config.task_file, tokenizer)], {}
    names = tasks_for(config.tasks)
    explicit = {part.strip() for part in config.tasks.split(",")}
    tasks, skipped = [], {}
    for name in names:
        try:
            tasks.append(build_task(name, tokenizer, n=config.n_prompts, seed=config.seed))
        except TaskError as exc:
            if name in explicit:
                raise
            skipped[name] = str(exc)
            note(f"skipping task {name}: {exc}")
    if not tasks:
        raise TaskError("no task could be built for this model; see the skipped reasons above")
    return tasks, skipped


def _units(config: SweepConfig, tasks: list[Any]) -> list[tuple[Any, Any, str]]:
    base, _ = config.method_parts
    units = []
    patchable = [t for t in tasks if t.has_corrupt]
    for spec in config.specs:
        if spec.kind == "patch" and not patchable:
            raise CortexmapError("activation patching needs corrupt prompts, and none of the selected tasks has them")
        for task in tasks:
            if spec.kind == "patch" and not task.has_corrupt:
                continue
            units.append((task, spec, base))
    return units


def _unit_result(handle: Any, batches: list[Any], task: Any, spec: Any, config: SweepConfig, rows: int,
                 tick: Callable[[float], None]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    base, verify_k = config.method_parts
    alpha = 0.0 if math.isnan(spec.alpha) else spec.alpha
    seed = config.seed
    clean = clean_metrics(batches)
    meta = {"model": config.model, "task": task.name, "level": task.level, "intervention": spec.kind,
            "alpha": spec.alpha}
    geometry = (handle.n_layers, handle.n_heads)
    info: dict[str, Any] = {}
    if base == "exact":
        matrix = exact_matrix(handle, batches, spec.kind, alpha, rows_per_pass=rows, seed=seed, tick=tick)
        return (*effect_rows(matrix, clean, {**meta, "method": "exact"}, *geometry, seed), info)
    estimate = attribution_matrix(handle, batches, spec.kind, alpha, seed=seed)
    tick(handle.n_layers * handle.n_heads * 0.05)
    eff, prompts = effect_rows(estimate, clean, {**meta, "method": "attribution"}, *geometry, seed)
    if verify_k:
        order = np.argsort(-np.abs(np.nanmean(estimate - clean[:, None], axis=0)))[:verify_k]
        heads = [divmod(int(c), handle.n_heads) for c in order]
        exact = exact_matrix(handle, batches, spec.kind, alpha, rows_per_pass=rows, heads=heads, seed=seed, tick=tick)
        ex_eff, ex_prompts = effect_rows(exact, clean, {**meta, "method": "exact"}, *geometry, seed)
        merged = eff.merge(ex_eff[["layer", "head", "effect"]], on=["layer", "head"], suffixes=("", "_exact"))
        rho = spearmanr(merged["effect"], merged["effect_exact"]).statistic if len(merged) > 2 else float("nan")
        info = {"verified_heads": len(merged), "spearman": None if np.isnan(rho) else float(rho),
                "max_abs_error": float((merged["effect"] - merged["effect_exact"]).abs().max())}
        eff, prompts = pd.concat([eff, ex_eff], ignore_index=True), pd.concat([prompts, ex_prompts], ignore_index=True)
    return eff, prompts, info


def _unit_weight(config: SweepConfig, n_heads_total: int) -> float:
    base, verify_k = config.method_parts
    return float(n_heads_total) if base == "exact" else n_heads_total * 0.05 + verify_k


def run_sweep(config: SweepConfig, out_dir: str | Path, *, resume: bool = False, handle: Any = None,
              progress: Progress | None = None) -> SweepResult:
    """Map every head of a model on a task battery and store the run in ``out_dir``.

    Args:
        config: what to map (see :class:`SweepConfig`).
        out_dir: the run directory; must not hold another run unless ``resume``.
        resume: continue a killed run, redoing only its unfinished units (same numbers).
        handle: an already-loaded model handle (else ``config.model`` is loaded).
        progress: a :class:`Progress` sink (the CLI passes a rich progress bar).

    Raises:
        CortexmapError: bad arguments, an existing run without ``resume``, or a mismatched resume.
    """
    progress = progress or _Quiet()
    store = RunStore(Path(out_dir))
    previous = store.read_manifest()
    if previous is not None and not resume:
        raise CortexmapError(f"{store.root} already holds a run; pass --resume to continue it or choose another --out")
    if previous is not None and previous.get("arguments_identity") != config.identity():
        raise CortexmapError(f"{store.root} holds a run with other arguments; resume it with the same ones or use another --out")
    if config.backend == "ray":
        from cortexmap.sweep.ray_backend import run_sweep_ray

        return run_sweep_ray(config, store, progress=progress)
    started = time.time()
    if handle is None:
        from cortexmap.models import load_model

        handle = load_model(config.model, device=config.device, dtype=config.dtype, progress=progress.note)
    tasks, skipped = build_tasks(config, handle.tokenizer, progress.note)
    units = _units(config, tasks)
    manifest = base_manifest(config, handle, tasks, skipped)
    if previous:
        manifest.update(previous)
    manifest["arguments_identity"] = config.identity()
    manifest.setdefault("units", {})
    manifest.setdefault("attribution", {})
    store.write_manifest(manifest)
    n_total = handle.n_layers * handle.n_heads
    todo = [u for u in units if not store.has_unit(unit_key(u[0].name, u[1].label, u[2]))]
    do_probes = config.probes and not (store.root / PATTERNS).exists()
    progress.start(len(todo) * _unit_weight(config, n_total) + (n_total * 0.1 if do_probes else 0), "mapping heads")
    timings = manifest.setdefault("timings", {})
    if do_probes:
        from cortexmap.tasks.probes import run_probes

        t0 = time.time()
        patterns = run_probes(handle, n=config.probe_prompts, seed=config.seed)
        write_parquet(patterns, store.root / PATTERNS)
        timings["probes_s"] = round(time.time() - t0, 2)
        progress.advance(n_total * 0.1, "probes")
    for task in tasks:
        task_units = [u for u in todo if u[0] is task]
        if not task_units:
            continue
        from cortexmap.tasks import encode_task

        need_corrupt = any(u[1].kind == "patch" for u in task_units)
        batches = prepare(handle, encode_task(task, handle.tokenizer, max_batch=64), need_corrupt)
        seq = max(b.input_ids.shape[1] for b in batches)
        rows = config.rows_per_pass(auto_rows(handle, seq))
        for _, spec, base in task_units:
            key = unit_key(task.name, spec.label, base)
            t0 = time.time()
            progress.advance(0, f"{task.name} · {spec.label}")
            effects, prompts, info = _unit_result(handle, batches, task, spec, config, rows, lambda n: progress.advance(n))
            store.write_unit(key, effects, prompts)
            manifest["units"][key] = "done"
            timings[key] = round(time.time() - t0, 2)
            if info:
                manifest["attribution"][key] = info
            store.write_manifest(manifest)
    keys = [unit_key(t.name, s.label, b) for t, s, b in units]
    effects = store.finalize(keys)
    timings["total_s"] = round(timings.get("total_s", 0) + time.time() - started, 2)
    manifest["complete"] = True
    store.write_manifest(manifest)
    patterns = pd.read_parquet(store.root / PATTERNS) if (store.root / PATTERNS).exists() else pd.DataFrame()
    return SweepResult(store.root, effects, patterns, manifest)
