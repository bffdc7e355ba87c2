"""Analysing a run directory: its atlas, written beside its effects, and cross-run comparisons.

The one module of :mod:`cortexmap.analysis` that reads and writes files (through
:mod:`cortexmap.results`); everything it computes comes from the pure functions of the package.
Model-side measurements (regulators, redundancy, flips) are taken first by
:func:`cortexmap.sweep.measure_run` and read here from the run's files, so analysing is torch-free:
``cortexmap analyze`` calls both, ``cortexmap report`` only this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cortexmap.analysis.atlas import AtlasOptions, AtlasRecords, build_atlas
from cortexmap.analysis.compare import Conservation, compare, scale_comparison
from cortexmap.analysis.records import jsonable
from cortexmap.analysis.view import view_of_run
from cortexmap.results import Results, load_results, write_card, write_json, write_parquet
from cortexmap.results.layout import ATLAS, COMPARE, FINDINGS


def analyze_run(run_dir: str | Path, *, seed: int = 0, n_perm: int = 2000) -> tuple[pd.DataFrame, AtlasRecords]:
    """Build and write ``atlas.parquet`` and ``atlas.json`` of a run (with every stored table).

    Returns:
        ``(atlas, records)`` as :func:`~cortexmap.analysis.build_atlas` returns them.

    Raises:
        ResultsError: not a finished run.
    """
    results = load_results(run_dir)
    atlas, records = build_atlas(results, options=AtlasOptions(n_perm=n_perm, seed=seed))
    write_parquet(atlas, results.root / ATLAS)
    write_json({**records.to_dict(), "manifest_model": results.manifest["model"]}, results.root / FINDINGS)
    write_card(results.root, results.manifest)
    return atlas, records


def load_atlas(results: Results) -> tuple[pd.DataFrame, AtlasRecords] | None:
    """The atlas ``cortexmap analyze`` last wrote, or None when there is none or it predates this cortexmap."""
    stored = results.atlas()
    if stored is None:
        return None
    table, data = stored
    try:
        return table, AtlasRecords.from_dict(data)
    except (KeyError, TypeError, ValueError):  # written by an older cortexmap: rebuild
        return None


def error_candidates(run_dir: str | Path, *, seed: int = 0, n_perm: int = 2000) -> dict[str, list[str]]:
    """Heads to patch from right into wrong prompts, per task (why the model errs; torch-free).

    The screen of :func:`cortexmap.analysis.mistakes.error_analysis`, seeded as the atlas seeds it,
    and the tasks' strongest critical heads (:func:`cortexmap.analysis.mistakes.flip_candidates`);
    empty for a run without per-prompt effects or without wrong prompts beside right ones.
    """
    from cortexmap.analysis.mistakes import error_analysis, flip_candidates

    results = load_results(run_dir)
    if results.prompt_effects() is None:
        return {}
    view = view_of_run(results, n_boot=50, seed=seed)
    return flip_candidates(view, error_analysis(view, n_perm=n_perm, seed=seed))


@dataclass(frozen=True)
class Comparison:
    """Cross-model comparison of runs: the first against each other, and the scale table."""

    base: str
    comparisons: list[Conservation]
    scale: pd.DataFrame

    def to_dict(self) -> dict:
        return {"base": self.base, "comparisons": [c.to_dict() for c in self.comparisons], "scale": jsonable(self.scale)}


def compare_runs(run_dirs: list[str | Path], *, seed: int = 0, n_perm: int = 2000) -> Comparison:
    """Compare two or more runs (the first against each other) and write ``compare.json`` in the first.

    Each comparison is :func:`cortexmap.analysis.compare.compare` of the two runs' views (profile
    shapes over the claim interventions and tasks they share; heads permuted within tasks as the
    null); ``scale`` is :func:`cortexmap.analysis.compare.scale_comparison` of every run.
    """
    runs = [load_results(d) for d in run_dirs]
    views = [view_of_run(r, seed=seed) for r in runs]
    comparisons = [compare(views[0], other, n_perm=n_perm, seed=seed) for other in views[1:]]
    out = Comparison(str(runs[0].root), comparisons, scale_comparison(views))
    write_json(json.loads(json.dumps(out.to_dict(), default=float)), runs[0].root / COMPARE)
    return out
