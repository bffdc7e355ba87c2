"""The model-side measurements of ``cortexmap analyze``: regulator influence and pairwise redundancy.

Both need the model, so they are measured once and stored in the run directory
(``influence.parquet``, ``pairs.parquet``); the atlas is then rebuilt from files, torch-free
(:func:`cortexmap.analysis.run.analyze_run`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd

from cortexmap.results import Results, load_results, write_card, write_parquet
from cortexmap.results.layout import EXACT, INFLUENCE, PAIRS, SCREEN_CONDITION

CONDITION_VARIANTS = {"reasoning": ("easy", "multi_step"), "ambiguity": ("clear", "ambiguous"),
                      "length": ("short", "long")}


def condition_prompts(tokenizer: Any, n: int, seed: int) -> dict[str, list[str]]:
    """The condition sets' prompts keyed ``"set:variant"`` (e.g. ``"reasoning:multi_step"``)."""
    from cortexmap.tasks.conditions import condition_sets

    prompts = {}
    for name, (first, second) in condition_sets(tokenizer, n=n, seed=seed).items():
        a, b = CONDITION_VARIANTS.get(name, ("a", "b"))
        prompts[f"{name}:{a}"], prompts[f"{name}:{b}"] = list(first), list(second)
    return prompts


def measure_regulators(handle: Any, *, screen_prompts: int = 4, top: int = 6, n_prompts: int = 8, seed: int = 0,
                       note: Callable[[str], None] = lambda m: None) -> pd.DataFrame:
    """Screen every head's influence on a few prompts, then measure the top candidates on every condition.

    The screen uses the ``screen_prompts`` shortest condition prompts (one per condition first),
    so its cost is about one exact sweep of that many short prompts. Its rows carry
    ``condition == "screen"``; the others the condition they were measured on.
    """
    from cortexmap.sweep.influence import measure_influence, screen_sources

    prompts = condition_prompts(handle.tokenizer, n_prompts, seed)
    firsts = sorted((min(texts, key=len) for texts in prompts.values()), key=len)
    screen_set = {SCREEN_CONDITION: firsts[:screen_prompts]}
    note(f"screening all {handle.n_layers * handle.n_heads} heads' influence on {screen_prompts} prompts")
    screened = measure_influence(handle, screen_set, progress=note)
    candidates = screen_sources(screened, top)
    note(f"measuring the top {len(candidates)} candidates on {sum(map(len, prompts.values()))} condition prompts")
    measured = measure_influence(handle, prompts, sources=candidates, progress=note)
    return pd.concat([screened.assign(condition=SCREEN_CONDITION), measured], ignore_index=True)


def measure_redundancy(results: Results, handle: Any, *, per_task: int = 4) -> pd.DataFrame:
    """Joint ablation of the ``per_task`` strongest exactly measured heads of each task, two at a time."""
    from cortexmap.sweep.compute import prepare
    from cortexmap.sweep.influence import measure_pairs
    from cortexmap.tasks import build_task, encode_task

    args = results.manifest["arguments"]
    effects = results.effects[(results.effects["intervention"] == "zero")]
    frames = []
    for task_name, group in effects.groupby("task"):
        exact = group[group["method"] == EXACT]
        pool = exact if len(exact) >= per_task else group
        top = pool.nsmallest(per_task, "effect")
        heads = [(int(r.layer), int(r.head)) for r in top.itertuples()]
        if task_name not in results.manifest.get("tasks", {}) or len(heads) < 2:
            continue
        try:
            task = build_task(task_name, handle.tokenizer, n=int(args["n_prompts"]), seed=int(args["seed"]))
        except Exception:  # noqa: BLE001 - user tasks from files are not rebuilt here
            continue
        batches = prepare(handle, encode_task(task, handle.tokenizer, max_batch=64), need_corrupt=False)
        frames.append(measure_pairs(handle, batches, task_name, heads))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def measure_run(run_dir: str | Path, *, regulators: bool = False, redundancy: bool = False, seed: int = 0,
                handle: Any = None, note: Callable[[str], None] = lambda m: None) -> Results:
    """Store the run's ``influence.parquet`` / ``pairs.parquet`` when asked and missing.

    The model is the one the run mapped (its manifest's spec, on the run's device), unless
    ``handle`` is given.

    Raises:
        ResultsError: not a finished run.
    """
    results = load_results(run_dir)
    root = results.root
    need_influence = regulators and not (root / INFLUENCE).exists()
    need_pairs = redundancy and not (root / PAIRS).exists()
    if not (need_influence or need_pairs):
        return results
    if handle is None:
        from cortexmap.models import load_model

        args = results.manifest["arguments"]
        device = args.get("device") or results.manifest.get("device", "cpu")
        handle = load_model(results.model, device=device, dtype=args.get("dtype", "float32"), progress=note)
    if need_influence:
        write_parquet(measure_regulators(handle, seed=seed, note=note), root / INFLUENCE)
    if need_pairs:
        note("measuring pairwise ablations of each task's strongest heads")
        write_parquet(measure_redundancy(results, handle), root / PAIRS)
    write_card(root, results.manifest)
    return results
