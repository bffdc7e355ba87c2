"""The model-side measurements of ``cortexmap analyze``: regulator influence and pairwise redundancy.

Both need the model, so they are measured once and stored in the run directory
(``influence.parquet``, ``pairs.parquet``); the atlas is then rebuilt from files, torch-free
(:func:`cortexmap.analysis.run.analyze_run`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from cortexmap.results import Results, load_results, write_card, write_parquet
from cortexmap.results.layout import EXACT, FLIPS, INFLUENCE, PAIRS, SCREEN_CONDITION

CONDITION_VARIANTS = {"reasoning": ("easy", "multi_step"), "ambiguity": ("clear", "ambiguous"),
                      "length": ("short", "long")}


def condition_prompts(tokenizer: Any, n: int, seed: int) -> dict[str, list[str]]:
    """The condition sets' prompts keyed ``"set:variant"`` (e.g. ``"reasoning:multi_step"``).

    The ``i``-th prompts of a set's two variants are a matched pair of equal token length
    (:func:`cortexmap.tasks.condition_sets`).
    """
    from cortexmap.tasks.conditions import condition_sets

    prompts = {}
    for name, (first, second) in condition_sets(tokenizer, n=n, seed=seed).items():
        a, b = CONDITION_VARIANTS.get(name, ("a", "b"))
        prompts[f"{name}:{a}"], prompts[f"{name}:{b}"] = list(first), list(second)
    return prompts


def _screen_set(tokenizer: Any, prompts: dict[str, list[str]], size: int) -> list[str]:
    """``size`` prompts for the screen, one per matched pair, shortest pairs first (module docstring of
    :func:`measure_regulators`)."""
    by_set: dict[str, list[tuple[int, tuple[str, str]]]] = {}
    names = list(prompts)
    for first, second in zip(names[::2], names[1::2]):
        pairs = zip(prompts[first], prompts[second])
        by_set[first.split(":")[0]] = sorted((len(tokenizer(p[0])["input_ids"]), p) for p in pairs)
    floor = min((pairs[0][0] for pairs in by_set.values() if pairs), default=0)
    eligible = [pairs for pairs in by_set.values() if pairs and pairs[0][0] <= 2 * floor]
    chosen: list[str] = []
    for rank in range(max(map(len, eligible), default=0)):
        for index, pairs in enumerate(eligible):
            if rank < len(pairs) and len(chosen) < size:
                chosen.append(pairs[rank][1][(rank + index) % 2])  # easy and demanding sides in turn
    return chosen


def measure_regulators(handle: Any, *, screen_prompts: int = 12, top: int = 6, n_prompts: int = 8, seed: int = 0,
                       ablation: str = "mean", note: Callable[[str], None] = lambda m: None) -> pd.DataFrame:
    """Screen every head's influence on a few prompts, then measure the top candidates on every condition.

    The screen takes ``screen_prompts`` prompts, one from each of the shortest matched pairs, the
    easy and the demanding side in turn (so both weigh alike and no two screen prompts share their
    items), from each set in turn among the sets whose shortest pair is at most twice as long as
    the shortest set's (the screen's cost grows with its prompts' length; ``length`` prompts are
    long by design). Its rows carry ``condition == "screen"``; the candidates are chosen relative
    to their own layer (:func:`~cortexmap.sweep.influence.screen_sources`) and
    :mod:`cortexmap.analysis.regulators` ranks every head within its layer on each screen prompt,
    so more prompts give more power (12 allow p down to ``270 * 9**-12`` on SmolLM2). The ``top``
    candidates are then measured on every prompt of every condition set (``n_prompts`` per side). Every source is
    ``ablation``-ablated, by default replaced by its mean output over all the condition prompts
    (one replacement for the screen and every condition; ``zero`` is off-distribution).

    Cost on SmolLM2-135M (30 layers x 9 heads), defaults, this 2-core CPU when idle: 65 s (screen
    of 12 prompts 43 s, candidates on the 48 condition prompts 18 s, prompts and means 3 s);
    8 screen prompts: 46 s, 16: 91 s. The screen grows with its prompts' total token length.
    """
    from cortexmap.sweep.influence import condition_means, measure_influence, screen_sources

    prompts = condition_prompts(handle.tokenizer, n_prompts, seed)
    means = condition_means(handle, prompts) if ablation == "mean" else None
    screen_set = {SCREEN_CONDITION: _screen_set(handle.tokenizer, prompts, screen_prompts)}
    note(f"screening all {handle.n_layers * handle.n_heads} heads' influence on {len(screen_set[SCREEN_CONDITION])} "
         f"prompts ({ablation} ablation)")
    screened = measure_influence(handle, screen_set, progress=note, ablation=ablation, means=means)
    candidates = screen_sources(screened, top)
    note(f"measuring the top {len(candidates)} candidates on {sum(map(len, prompts.values()))} condition prompts")
    measured = measure_influence(handle, prompts, sources=candidates, progress=note, ablation=ablation, means=means)
    return pd.concat([screened.assign(condition=SCREEN_CONDITION), measured], ignore_index=True)


def measure_redundancy(results: Results, handle: Any, *, per_task: int = 4, intervention: str | None = None,
                       rows_per_pass: int = 256) -> pd.DataFrame:
    """Joint intervention on the ``per_task`` strongest heads of each task, alone and two at a time, per prompt.

    The intervention is the run's claim intervention (:mod:`cortexmap.analysis.view`: patching from
    the corrupt prompt, or mean / resample ablation), so a pair is measured the way its heads were
    found; zero ablation only in a run that measured nothing else. The strongest heads of a task
    are the most harmful (most negative ``effect_normalized``) under that intervention, exactly
    measured rows first.

    Args:
        results: the loaded run.
        handle: the model the run mapped.
        per_task: heads per task (``per_task * (per_task - 1) / 2`` pairs).
        intervention: ``patch``, ``mean``, ``resample`` or ``zero``; None takes, per task, the
            first claim intervention of the run that measured it (patch before mean).
        rows_per_pass: prompt rows x configurations per forward pass.

    Returns:
        :func:`cortexmap.sweep.pairs.measure_pairs` rows of every task (empty without a task to
        measure): task, intervention, head_a, head_b, prompt, effect_a, effect_b, effect_ab, clean.
    """
    from cortexmap.analysis.view import claim_interventions
    from cortexmap.sweep.compute import prepare
    from cortexmap.sweep.pairs import PAIR_KINDS, measure_pairs
    from cortexmap.tasks import build_task, encode_task

    args = results.manifest["arguments"]
    effects = results.effects
    order = (intervention,) if intervention is not None else claim_interventions(effects)[0]
    order = tuple(iv for iv in order if iv in PAIR_KINDS)
    frames = []
    for task_name, group in effects.groupby("task"):
        kinds = [iv for iv in order if (group["intervention"] == iv).any()]
        if not kinds or task_name not in results.manifest.get("tasks", {}):
            continue
        kind = kinds[0]
        rows = group[(group["intervention"] == kind) & group["effect_normalized"].notna()]
        exact = rows[rows["method"] == EXACT]
        pool = exact if len(exact) >= per_task else rows
        harmful = pool[pool["effect_normalized"] < 0].sort_values("effect_normalized", kind="stable")
        top = harmful.drop_duplicates(["layer", "head"]).head(per_task)
        heads = [(int(r.layer), int(r.head)) for r in top.itertuples()]
        if len(heads) < 2:
            continue
        try:
            task = build_task(task_name, handle.tokenizer, n=int(args["n_prompts"]), seed=int(args["seed"]))
        except Exception:  # noqa: BLE001 - user tasks from files are not rebuilt here
            continue
        batches = prepare(handle, encode_task(task, handle.tokenizer, max_batch=64), need_corrupt=kind == "patch")
        frames.append(measure_pairs(handle, batches, task_name, heads, kind, rows_per_pass=rows_per_pass,
                                    seed=int(args.get("seed", 0))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def measure_run(run_dir: str | Path, *, regulators: bool = False, redundancy: bool = False,
                flips: Mapping[str, list[str]] | None = None, seed: int = 0, handle: Any = None,
                note: Callable[[str], None] = lambda m: None) -> Results:
    """Store the run's ``influence.parquet`` / ``pairs.parquet`` / ``flips.parquet`` when asked and missing.

    ``flips`` (why the model errs, causally): task -> candidate heads, as
    :func:`cortexmap.analysis.run.error_candidates` picks them from the run;
    :func:`cortexmap.sweep.flips.measure_error_flips` patches each from right into wrong prompts of the
    same template (an empty mapping writes an empty table without loading the model). The model is
    the one the run mapped (its manifest's spec, on the run's device), unless ``handle`` is given.

    Raises:
        ResultsError: not a finished run.
    """
    results = load_results(run_dir)
    root = results.root
    need_influence = regulators and not (root / INFLUENCE).exists()
    need_pairs = redundancy and not (root / PAIRS).exists()
    candidates = dict(flips or {}) if flips is not None and not (root / FLIPS).exists() else {}
    if flips is not None and not candidates and not (root / FLIPS).exists():
        from cortexmap.sweep.flips import FLIP_ROWS

        write_parquet(pd.DataFrame(columns=FLIP_ROWS), root / FLIPS)
    if not (need_influence or need_pairs or candidates):
        return results
    if handle is None:
        from cortexmap.models import load_model

        args = results.manifest["arguments"]
        device = args.get("device") or results.manifest.get("device", "cpu")
        handle = load_model(results.model, device=device, dtype=args.get("dtype", "float32"), progress=note)
    if need_influence:
        write_parquet(measure_regulators(handle, seed=seed, note=note), root / INFLUENCE)
    if need_pairs:
        note("measuring joint interventions on each task's strongest heads, two at a time")
        write_parquet(measure_redundancy(results, handle), root / PAIRS)
    if candidates:
        from cortexmap.sweep.flips import measure_error_flips

        note(f"patching {sum(map(len, candidates.values()))} heads from right into wrong prompts on {len(candidates)} tasks")
        write_parquet(measure_error_flips(results, handle, candidates, seed=seed, note=note), root / FLIPS)
    write_card(root, results.manifest)
    return results
