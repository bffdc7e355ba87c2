"""``run_sweep``: every head x task x intervention of a model, stored as a resumable run directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from cortexmap.errors import CortexmapError, TaskError
from cortexmap.sweep.config import SweepConfig
from cortexmap.sweep.manifest import base_manifest
from cortexmap.results import Results, RunStore, unit_key, write_card, write_parquet
from cortexmap.results.layout import EVIDENCE, EXACT, PATTERNS, SCREEN
from cortexmap.sweep.summary import effect_rows
from cortexmap.sweep.verify import pooled_audit

log = logging.getLogger(__name__)


class SweepProgress(Protocol):
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


def build_tasks(config: SweepConfig, tokenizer: Any, note: Callable[[str], None]) -> tuple[list[Any], dict[str, str]]:
    """Build the selected tasks; built-ins chosen by level or ``all`` that cannot be built are skipped."""
    from cortexmap.tasks import build_task, tasks_for

    if config.task_file:
        from cortexmap.tasks import load_task_file

        return [load_task_file(config.task_file, tokenizer)], {}
    names = tasks_for(config.tasks)
    explicit = set(config.tasks)
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


def longest_prompt(tasks: list[Any], tokenizer: Any) -> int:
    """Tokens in the longest row of ``tasks``: a clean or corrupt prompt with its longest teacher-forced answer."""
    from cortexmap.tasks.core import answer_ids, prompt_ids

    def answer(pair: Any) -> int:
        return max(len(answer_ids(tokenizer, a)) for a in pair.targets + pair.foils) - 1

    return max(len(prompt_ids(tokenizer, text)) + answer(pair) for task in tasks for pair in task.pairs
               for text in (pair.prompt, pair.corrupt) if text)


def _require_fit(backend: Any, config: SweepConfig, tasks: list[Any]) -> None:
    """Refuse, before any work, a local run whose weights and caches cannot fit (no calibration)."""
    handle = getattr(backend, "handle", None)
    if handle is None:
        return
    from cortexmap.sweep.plan import plan_run, require_fit

    seq = longest_prompt(tasks, handle.tokenizer)
    require_fit(plan_run(handle, config, len(tasks), seq, device=handle.device, calibrated=False))


def _units(config: SweepConfig, tasks: list[Any], base: str) -> list[tuple[Any, Any, str]]:
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


def subsample_task(task: Any, n: int, seed: int) -> tuple[Any, np.ndarray]:
    """A copy of ``task`` with ``n`` of its pairs drawn without replacement (seeded), and their indices."""
    picked = np.sort(np.random.default_rng(seed).choice(len(task.pairs), size=min(n, len(task.pairs)), replace=False))
    return _with_pairs(task, picked), picked


def _with_pairs(task: Any, indices: np.ndarray) -> Any:
    from dataclasses import replace

    return replace(task, pairs=[task.pairs[i] for i in indices])


def _screen_task(backend: Any, task: Any, specs: list[Any], config: SweepConfig, metas: list[dict[str, Any]],
                 tick: Callable[[float], None]) -> list[tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]]:
    """Screen every head on a subsample, refine the best, verify adaptively, audit the rest (:mod:`cortexmap.sweep.verify`).

    A task's interventions are screened each on the same subsample, the ``refine_heads`` best
    (interleaved over interventions) on ``refine_prompts`` more, and then verified *jointly*:
    every verified or audited head measured exactly under each, until the stopping rule holds for
    all of them. So wherever one intervention finds a head important, the others' numbers for it
    are exact too, and a disagreement between interventions rests on measurements, not on the screen.

    A verified head is measured on the prompts the screen has not measured it on: there the
    screen already measured it exactly, with the same per-prompt numbers (mean ablation replaces a
    head by its mean over *every* prompt of the task, in the screen too). Resample ablation is the
    exception: its partner prompts depend on the batch, so verified heads are measured on every
    prompt, exactly as ``--method exact`` measures them.
    """
    from cortexmap.sweep.verify import adaptive_verify, refined_order, screen_order, unit_record

    policy = config.policy
    facts = backend.describe()
    n_layers, n_heads = facts["n_layers"], facts["n_heads"]
    n_cols, n = n_layers * n_heads, len(task.pairs)
    seed = config.seed
    _, picked = subsample_task(task, policy.screen_prompts, seed)
    left = np.setdiff1d(np.arange(n), picked)
    second = np.sort(np.random.default_rng(seed + 1).choice(left, size=min(policy.refine_prompts, len(left)),
                                                             replace=False))
    states = [{"spec": spec, "reuse": spec.kind != "resample", "screen": np.full((n, n_cols), np.nan),
               "clean": np.full(n, np.nan), "exact": np.full((n, n_cols), np.nan)} for spec in specs]

    def run(s: dict[str, Any], prompts: np.ndarray, cols: list[int] | None, into: str) -> None:
        """Measure ``cols`` (None: every head) of one intervention exactly on ``prompts``, into ``s[into]``."""
        heads = None if cols is None else [divmod(int(c), n_heads) for c in cols]
        where = slice(None) if cols is None else cols
        matrix, clean = backend.matrix(_with_pairs(task, prompts), s["spec"], EXACT, heads=heads, means_of=task,
                                       tick=lambda k: tick(k * len(prompts) / n / len(specs)))
        s["clean"][prompts] = clean
        s[into][np.ix_(prompts, np.arange(n_cols)[where])] = matrix[:, where]

    def screened(cols: np.ndarray) -> np.ndarray:
        """``[n_interventions, len(cols)]`` screened effects normalised by the clean metric of the screened prompts."""
        out = []
        for s in states:
            rows = np.isfinite(s["screen"][:, cols]).any(axis=1)
            with np.errstate(invalid="ignore"):
                delta = np.nanmean(s["screen"][rows][:, cols] - s["clean"][rows, None], axis=0)
            out.append(delta / (abs(float(np.nanmean(s["clean"][rows]))) or 1.0))
        return np.stack(out)

    for s in states:
        run(s, picked, None, "screen")
    everyone = np.arange(n_cols)
    first = screen_order(screened(everyone))
    refine = np.sort(first[:min(policy.refine_heads, n_cols)]) if len(second) else np.array([], dtype=int)
    if len(refine):
        for s in states:
            run(s, second, refine.tolist(), "screen")

    def measure(cols: list[int]) -> dict[int, tuple[tuple[float, float], ...]]:
        out: dict[int, list[tuple[float, float]]] = {c: [] for c in cols}
        for s in states:
            if s["reuse"]:  # the screen's exact numbers stand; measure each head where it has none
                s["exact"][:, cols] = s["screen"][:, cols]
            groups: dict[bytes, list[int]] = {}
            for c in cols:
                groups.setdefault(np.isnan(s["exact"][:, c]).tobytes(), []).append(c)
            for mask, group in groups.items():
                missing = np.flatnonzero(np.frombuffer(mask, dtype=bool))
                if len(missing):
                    run(s, missing, group, "exact")
            scale = abs(float(np.nanmean(s["clean"]))) or float("nan")
            delta = s["exact"][:, cols] - s["clean"][:, None]
            mean = np.nanmean(delta, axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                z = mean / (np.nanstd(delta, axis=0, ddof=1) / np.sqrt(np.isfinite(delta).sum(0)))
            for c, m, zz in zip(cols, mean, z):
                out[c].append((float(m) / scale, float(zz)))
        return {c: tuple(v) for c, v in out.items()}

    order = refined_order(first, screened(refine), refine) if len(refine) else first
    result = adaptive_verify(order, measure, policy, seed=seed)
    out = []
    for i, (s, meta) in enumerate(zip(states, metas)):
        screen_clean = np.where(np.isfinite(s["screen"]).any(axis=1), s["clean"], np.nan)
        sc_eff, sc_prompts = effect_rows(s["screen"], screen_clean, {**meta, "method": SCREEN}, n_layers, n_heads, seed)
        ex_eff, ex_prompts = effect_rows(s["exact"], s["clean"], {**meta, "method": EXACT}, n_layers, n_heads, seed)
        record = unit_record(result, n_cols, policy, index=i)
        record["joint"] = [sp.label for sp in specs]
        record["refined"] = int(len(refine))
        merged = sc_eff.merge(ex_eff[["layer", "head", "effect"]], on=["layer", "head"], suffixes=("", "_exact"))
        rho = spearmanr(merged["effect"], merged["effect_exact"]).statistic if len(merged) > 2 else float("nan")
        record["spearman_screen_exact"] = None if np.isnan(rho) else float(rho)
        out.append((pd.concat([sc_eff, ex_eff], ignore_index=True), pd.concat([sc_prompts, ex_prompts], ignore_index=True),
                    record))
    return out


def unit_meta(facts: dict[str, Any], task: Any, spec: Any) -> dict[str, Any]:
    """The columns every effect row of one unit shares (``method`` is added per row set)."""
    return {"model": facts["spec"], "task": task.name, "level": task.level, "intervention": spec.kind,
            "alpha": spec.alpha}


def with_variants(prompts: pd.DataFrame, task: Any) -> pd.DataFrame:
    """Per-prompt rows with each prompt's template (``variant``: the index of the task variant it was rendered from)."""
    if prompts.empty:
        return prompts
    variants = np.array([int(getattr(pair, "variant", 0)) for pair in task.pairs])
    return prompts.assign(variant=variants[prompts["prompt"].to_numpy(int)])


def unit_results(backend: Any, task: Any, specs: list[Any], base: str, config: SweepConfig,
                 tick: Callable[[float], None]) -> list[tuple[Any, pd.DataFrame, pd.DataFrame, dict[str, Any]]]:
    """``(spec, effects, per-prompt effects, manifest info)`` of one task under ``specs``, computed on ``backend``.

    ``screen`` verifies the specs jointly (:func:`_screen_task`); the other methods measure each
    spec on its own.
    """
    facts = backend.describe()
    metas = [unit_meta(facts, task, spec) for spec in specs]
    if base == SCREEN:
        done = _screen_task(backend, task, list(specs), config, metas, tick)
        return [(spec, eff, with_variants(pr, task), info) for spec, (eff, pr, info) in zip(specs, done)]
    out = []
    for spec, meta in zip(specs, metas):
        eff, prompts, info = _unit_result(backend, task, spec, base, config, meta, tick)
        out.append((spec, eff, with_variants(prompts, task), info))
    return out


def _unit_result(backend: Any, task: Any, spec: Any, base: str, config: SweepConfig, meta: dict[str, Any],
                 tick: Callable[[float], None]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Effects, per-prompt effects and manifest info of one exact or attribution unit."""
    verify_k = config.verify
    seed = config.seed
    facts = backend.describe()
    geometry = (facts["n_layers"], facts["n_heads"])
    matrix, clean = backend.matrix(task, spec, base, tick=tick)
    eff, prompts = effect_rows(matrix, clean, {**meta, "method": base}, *geometry, seed)
    if base == EXACT or not verify_k:
        return eff, prompts, {}
    order = np.argsort(-np.abs(np.nanmean(matrix - clean[:, None], axis=0)))[:verify_k]
    heads = [divmod(int(c), geometry[1]) for c in order]
    exact, _ = backend.matrix(task, spec, EXACT, heads=heads, tick=tick)
    ex_eff, ex_prompts = effect_rows(exact, clean, {**meta, "method": EXACT}, *geometry, seed)
    merged = eff.merge(ex_eff[["layer", "head", "effect"]], on=["layer", "head"], suffixes=("", "_exact"))
    rho = spearmanr(merged["effect"], merged["effect_exact"]).statistic if len(merged) > 2 else float("nan")
    info = {"verified_heads": len(merged), "spearman": None if np.isnan(rho) else float(rho),
            "max_abs_error": float((merged["effect"] - merged["effect_exact"]).abs().max())}
    return pd.concat([eff, ex_eff], ignore_index=True), pd.concat([prompts, ex_prompts], ignore_index=True), info


def unit_weight(base: str, config: SweepConfig, n_heads_total: int) -> float:
    """Expected cost of one unit, in exact head measurements on every prompt."""
    if base == EXACT:
        return float(n_heads_total)
    if base == SCREEN:
        policy = config.policy
        return policy.screen_heads(n_heads_total, config.n_prompts) + policy.expected_heads(n_heads_total)
    return n_heads_total * 0.05 + config.verify


def work_items(units: list[tuple[Any, Any, str]]) -> list[tuple[Any, list[Any], str]]:
    """Units as they are computed: ``(task, specs, base)``; a ``screen`` task's interventions go together."""
    items: list[tuple[Any, list[Any], str]] = []
    by_task: dict[str, int] = {}
    for task, spec, base in units:
        if base == SCREEN and task.name in by_task:
            items[by_task[task.name]][1].append(spec)
            continue
        if base == SCREEN:
            by_task[task.name] = len(items)
        items.append((task, [spec], base))
    return items


def _audits(verification: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """The pooled audit of every screen unit, and of each intervention's units."""
    out = pooled_audit(verification)
    if len(labels) > 1:
        out["by_intervention"] = {label: pooled_audit({k: v for k, v in verification.items()
                                                        if k.split("__")[-2] == unit_key("", label, "").split("__")[-2]})
                                  for label in labels}
    return out


def _run_units(backend: Any, config: SweepConfig, store: RunStore, previous: dict[str, Any] | None,
               progress: SweepProgress, check: dict[str, Any] | None = None) -> list[tuple[Any, Any, str]]:
    """Compute and store every unfinished unit; return all units of the run."""
    tasks, skipped = build_tasks(config, backend.tokenizer, progress.note)
    facts = backend.describe()
    on_gpu = str(facts.get("device", "cpu")).startswith("cuda") or bool(facts.get("device_map"))
    base = config.resolved_method(on_gpu)
    units = _units(config, tasks, base)
    _require_fit(backend, config, tasks)
    manifest = base_manifest(config, facts, tasks, skipped)
    manifest["method"] = base
    if base == SCREEN:
        manifest["verify_policy"] = config.policy.to_dict()
    if previous:
        manifest.update(previous)
    manifest["arguments_identity"] = config.identity()
    if check is not None or "check" not in manifest:
        manifest["check"] = check or {"status": "not run", "reason": "run_sweep was not given a check record "
                                                                    "(cortexmap map runs cortexmap.checks.gate first)"}
    manifest.setdefault("units", {})
    manifest.setdefault("attribution", {})
    manifest.setdefault("verification", {})
    store.write_manifest(manifest)
    n_total = facts["n_layers"] * facts["n_heads"]

    def missing(item: tuple[Any, list[Any], str]) -> bool:
        return any(not store.has_unit(unit_key(item[0].name, spec.label, item[2])) for spec in item[1])

    todo = [item for item in work_items(units) if missing(item)]  # a screen task is redone whole (same numbers)
    do_probes = config.probes and not (store.root / PATTERNS).exists()
    do_evidence = config.probes and hasattr(backend, "evidence") and not (store.root / EVIDENCE).exists()
    extra = n_total * 0.1 * (do_probes + do_evidence)
    progress.start(sum(len(i[1]) for i in todo) * unit_weight(base, config, n_total) + extra, "mapping heads")
    timings = manifest.setdefault("timings", {})
    if do_probes:
        t0 = time.time()
        write_parquet(backend.probes(), store.root / PATTERNS)
        timings["probes_s"] = round(time.time() - t0, 2)
        progress.advance(n_total * 0.1, "probes")
    if do_evidence:
        t0 = time.time()
        write_parquet(backend.evidence(tasks), store.root / EVIDENCE)
        timings["evidence_s"] = round(time.time() - t0, 2)
        progress.advance(n_total * 0.1, "attention and OV evidence")
    if hasattr(backend, "units"):  # several units in flight over the workers, stored as each finishes
        results = backend.units(todo, config, progress)
    else:
        results = _in_turn(backend, todo, config, progress)
    for task, spec, base, effects, prompts, info, seconds in results:
        key = unit_key(task.name, spec.label, base)
        if store.has_unit(key):
            continue
        store.write_unit(key, effects, prompts)
        manifest["units"][key] = "done"
        timings[key] = round(seconds, 2)
        if getattr(backend, "stats", None):
            manifest["ray"] = backend.stats
        if info:
            manifest["verification" if base == SCREEN else "attribution"][key] = info
        if base == SCREEN:
            manifest["audit"] = _audits(manifest["verification"], config.labels)
        store.write_manifest(manifest)
    return units


def _in_turn(backend: Any, todo: list[tuple[Any, list[Any], str]], config: SweepConfig, progress: SweepProgress) -> Any:
    """Work items one after another in this process, per spec: ``(task, spec, base, effects, prompts, info, seconds)``."""
    for task, specs, base in todo:
        t0 = time.time()
        progress.advance(0, f"{task.name} · {'+'.join(s.label for s in specs)}")
        done = unit_results(backend, task, specs, base, config, lambda n: progress.advance(n))
        seconds = (time.time() - t0) / len(done)
        for spec, effects, prompts, info in done:
            yield task, spec, base, effects, prompts, info, seconds


def run_sweep(config: SweepConfig, out_dir: str | Path, *, resume: bool = False, handle: Any = None,
              progress: SweepProgress | None = None, check: dict[str, Any] | None = None) -> Results:
    """Map every head of a model on a task battery and store the run in ``out_dir``.

    Args:
        config: what to map (see :class:`SweepConfig`).
        out_dir: the run directory; must not hold another run unless ``resume``.
        resume: continue a killed run, redoing only its unfinished units (same numbers).
        handle: an already-loaded model handle (else ``config.model`` is loaded).
        progress: a :class:`SweepProgress` (the CLI passes a rich progress bar).
        check: the record of the invariant check run on the model first
            (:func:`cortexmap.checks.gate`), written to the manifest's ``check``.

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
    started = time.time()
    if config.backend == "ray":
        from cortexmap.sweep.ray_backend import RayBackend

        backend: Any = RayBackend(config, note=progress.note)
    else:
        from cortexmap.sweep.backends import LocalBackend

        backend = LocalBackend(config, handle, note=progress.note)
    try:
        units = _run_units(backend, config, store, previous, progress, check)
    finally:
        backend.close()
    keys = [unit_key(t.name, s.label, b) for t, s, b in units]
    effects = store.finalize(keys)
    manifest = store.read_manifest()
    timings = manifest.setdefault("timings", {})
    timings["total_s"] = round(timings.get("total_s", 0) + time.time() - started, 2)
    manifest["complete"] = True
    store.write_manifest(manifest)
    write_card(store.root, manifest)
    patterns = pd.read_parquet(store.root / PATTERNS) if (store.root / PATTERNS).exists() else pd.DataFrame()
    return Results(store.root, effects, patterns, manifest)
