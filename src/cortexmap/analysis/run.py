"""Analysing a run directory: its atlas, written beside its effects, and cross-run comparisons.

The one module of :mod:`cortexmap.analysis` that reads and writes files (through
:mod:`cortexmap.results`); everything it computes comes from the pure functions of the package.
Model-side measurements (regulators, redundancy) are taken first by
:func:`cortexmap.sweep.measure_run` and read here from the run's files, so analysing is
torch-free: ``cortexmap analyze`` calls both, ``cortexmap report`` only this.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from cortexmap.results import load_results, write_card, write_json, write_parquet
from cortexmap.results.layout import ATLAS, COMPARE, FINDINGS, PAIRS


def analyze_run(run_dir: str | Path, *, seed: int = 0, n_perm: int = 2000) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Build and write ``atlas.parquet`` and ``atlas.json`` of a run (with its stored influence and pairs).

    Returns:
        ``(atlas, findings)`` as :func:`~cortexmap.analysis.build_atlas` returns them.

    Raises:
        ResultsError: not a finished run.
    """
    from cortexmap.analysis.atlas import AtlasOptions, build_atlas

    results = load_results(run_dir)
    atlas, findings = build_atlas(results, options=AtlasOptions(n_perm=n_perm, seed=seed))
    findings["model"] = results.manifest["model"]
    write_parquet(atlas, results.root / ATLAS)
    write_json(findings, results.root / FINDINGS)
    write_card(results.root, results.manifest)
    return atlas, findings


def compare_runs(run_dirs: list[str | Path], *, seed: int = 0) -> dict[str, Any]:
    """Cross-model comparison of two or more runs (the first against each other).

    Returns (and writes to ``compare.json`` of the first run): ``comparisons``, one dict per
    other run with :func:`~cortexmap.analysis.compare_models`'s statistics and ``matches`` as
    records (head_a, head_b, similarity, rel_depth_a, rel_depth_b), and ``scale``: one record per
    model with its specialization and share of important heads (and redundancy when
    ``analyze --redundancy`` stored ``pairs.parquet``), each with a bootstrap interval.
    """
    from cortexmap.analysis.compare import compare_models, scale_comparison

    runs = [load_results(d) for d in run_dirs]
    base = runs[0]
    out: dict[str, Any] = {"base": str(base.root), "comparisons": []}
    for other in runs[1:]:
        result = compare_models(base.effects, other.effects, base.shape, other.shape, seed=seed)
        result["matches"] = result["matches"].to_dict(orient="records")
        out["comparisons"].append({"a": base.model, "b": other.model, "run_b": str(other.root), **result})
    effects = pd.concat([r.effects for r in runs], ignore_index=True)
    shapes = {str(r.effects["model"].iloc[0]): r.shape for r in runs}
    pairs = {str(r.effects["model"].iloc[0]): r.table(PAIRS) for r in runs if (r.root / PAIRS).exists()}
    out["scale"] = scale_comparison(effects, shapes, pairs=pairs or None, seed=seed).to_dict(orient="records")
    write_json(json.loads(json.dumps(out, default=float)), base.root / COMPARE)
    return out
