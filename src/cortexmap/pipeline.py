"""From a finished run to an atlas: optional model-side measurements, then the pure analyses.

``analyze_run`` is what ``cortexmap analyze`` calls. Influence (regulator heads) and pairwise
ablation (redundancy) need the model; they are measured once and stored in the run directory
(``influence.parquet``, ``pairs.parquet``), so re-analysing is cheap and torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from cortexmap.sweep.store import Results, load_results, write_json, write_parquet

INFLUENCE = "influence.parquet"
PAIRS = "pairs.parquet"
ATLAS = "atlas.parquet"
FINDINGS = "atlas.json"

CONDITION_VARIANTS = {"reasoning": ("easy", "multi_step"), "ambiguity": ("clear", "ambiguous"),
                      "length": ("short", "long")}


def _condition_prompts(tokenizer: Any, n: int, seed: int) -> dict[str, list[str]]:
    from cortexmap.tasks.conditions import condition_sets

    prompts = {}
    for name, (first, second) in condition_sets(tokenizer, n=n, seed=seed).items():
        a, b = CONDITION_VARIANTS.get(name, ("a", "b"))
        prompts[f"{name}:{a}"], prompts[f"{name}:{b}"] = list(first), list(second)
    return prompts


def measure_regulators(results: Results, handle: Any, *, screen_prompts: int = 4, top: int = 6,
                       n_prompts: int = 8, seed: int = 0, note: Callable[[str], None] = lambda m: None) -> pd.DataFrame:
    """Screen every head's influence on a few prompts, then measure the top candidates on every condition.

    The screen uses the ``screen_prompts`` shortest condition prompts (one per condition first),
    so its cost is about one exact sweep of that many short prompts.
    """
    from cortexmap.sweep.influence import measure_influence, screen_sources

    prompts = _condition_prompts(handle.tokenizer, n_prompts, seed)
    firsts = sorted((min(texts, key=len) for texts in prompts.values()), key=len)
    screen_set = {"screen": firsts[:screen_prompts]}
    note(f"screening all {handle.n_layers * handle.n_heads} heads' influence on {len(screen_set['screen'])} prompts")
    screened = measure_influence(handle, screen_set, progress=note)
    candidates = screen_sources(screened, top)
    note(f"measuring the top {len(candidates)} candidates on {sum(map(len, prompts.values()))} condition prompts")
    measured = measure_influence(handle, prompts, sources=candidates, progress=note)
    return pd.concat([screened.assign(condition="screen"), measured], ignore_index=True)


def measure_redundancy(results: Results, handle: Any, *, per_task: int = 4) -> pd.DataFrame:
    """Joint ablation of the ``per_task`` strongest heads of each task, two at a time."""
    from cortexmap.sweep.compute import prepare
    from cortexmap.sweep.influence import measure_pairs
    from cortexmap.tasks import build_task, encode_task

    args = results.manifest["arguments"]
    effects = results.effects[(results.effects["intervention"] == "zero")]
    frames = []
    for task_name, group in effects.groupby("task"):
        exact = group[group["method"] == "exact"]
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


def analyze_run(run_dir: str | Path, *, regulators: bool = False, redundancy: bool = False, seed: int = 0,
                n_perm: int = 2000, note: Callable[[str], None] = lambda m: None) -> tuple[pd.DataFrame, dict]:
    """Build ``atlas.parquet`` and ``atlas.json`` for a run; measure influence / pairs first if asked.

    Raises:
        ResultsError: not a finished run.
    """
    from cortexmap.analysis import build_atlas

    results = load_results(run_dir)
    root = results.root
    if (regulators and not (root / INFLUENCE).exists()) or (redundancy and not (root / PAIRS).exists()):
        from cortexmap.models import load_model

        args = results.manifest["arguments"]
        spec = results.manifest["model"].get("spec", args["model"])  # the model mapped, also when passed as a handle
        handle = load_model(spec, device=args.get("device") or results.manifest.get("device", "cpu"), dtype=args.get("dtype", "float32"), progress=note)
        if regulators and not (root / INFLUENCE).exists():
            write_parquet(measure_regulators(results, handle, seed=seed, note=note), root / INFLUENCE)
        if redundancy and not (root / PAIRS).exists():
            note("measuring pairwise ablations of each task's strongest heads")
            write_parquet(measure_redundancy(results, handle), root / PAIRS)
    influence = pd.read_parquet(root / INFLUENCE) if (root / INFLUENCE).exists() else None
    pairs = pd.read_parquet(root / PAIRS) if (root / PAIRS).exists() else None
    atlas, findings = build_atlas(results, influence=influence, pairs=pairs, n_perm=n_perm, seed=seed)
    findings["model"] = results.manifest["model"]
    write_parquet(atlas, root / ATLAS)
    write_json(findings, root / FINDINGS)
    return atlas, findings


def compare_runs(run_dirs: list[str | Path], *, seed: int = 0) -> dict:
    """Cross-model comparison of two or more runs (the first against each other).

    Returns (and writes to ``compare.json`` of the first run): ``comparisons``, one dict per
    other run with :func:`~cortexmap.analysis.compare_models`'s statistics and ``matches`` as
    records (head_a, head_b, similarity, rel_depth_a, rel_depth_b), and ``scale``: one record per
    model with its specialization and share of important heads (and redundancy when
    ``analyze --redundancy`` stored ``pairs.parquet``), each with a bootstrap interval.
    """
    from cortexmap.analysis import compare_models
    from cortexmap.analysis.compare import scale_comparison

    runs = [load_results(d) for d in run_dirs]
    base = runs[0]
    out: dict[str, Any] = {"base": str(base.root), "comparisons": []}
    for other in runs[1:]:
        result = compare_models(base.effects, other.effects, (base.n_layers, base.n_heads),
                                (other.n_layers, other.n_heads), seed=seed)
        result["matches"] = result["matches"].to_dict(orient="records")
        out["comparisons"].append({"a": base.manifest["model"]["spec"], "b": other.manifest["model"]["spec"],
                                   "run_b": str(other.root), **result})
    effects = pd.concat([r.effects for r in runs], ignore_index=True)
    shapes = {str(r.effects["model"].iloc[0]): (r.n_layers, r.n_heads) for r in runs}
    pairs = {str(r.effects["model"].iloc[0]): pd.read_parquet(r.root / PAIRS) for r in runs if (r.root / PAIRS).exists()}
    out["scale"] = scale_comparison(effects, shapes, pairs=pairs or None, seed=seed).to_dict(orient="records")
    write_json(json.loads(json.dumps(out, default=float)), base.root / "compare.json")
    return out
