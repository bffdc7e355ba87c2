"""Everything one report shows, loaded from run directories (no torch, no model).

A run directory is read with :func:`cortexmap.results.load_results`, which refuses a directory
without ``manifest.json`` and an unfinished run. The atlas (``atlas.parquet`` + ``atlas.json``) is
built in-process when it is missing, with the same function ``cortexmap analyze`` calls, and
written atomically; an existing atlas is used as it is (``effects.parquet`` only exists once a run
is complete, so it cannot change under its atlas; modification times are not trusted, since
copying a run directory changes them). Optional parts are ``None`` when absent:
``influence.parquet`` (regulator measurements) and ``prune/curve.parquet`` (a pruning curve).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cortexmap.errors import CortexmapError
from cortexmap.analysis.run import analyze_run
from cortexmap.results import Results, load_results
from cortexmap.results.layout import CIRCUIT, CIRCUIT_CURVES, INFLUENCE, PRUNE_CURVE, SCREEN_CONDITION

log = logging.getLogger(__name__)

@dataclass
class Comparison:
    """One cross-model comparison of the report's run (A) against another run (B)."""

    model_a: str
    model_b: str
    run_b: Path
    result: dict[str, Any] | None  # compare_models() output, or None when it could not be computed
    error: str | None = None


@dataclass
class ReportData:
    """A loaded run with its atlas and every optional measurement the report can show."""

    results: Results
    atlas: pd.DataFrame
    findings: dict[str, Any]
    influence: pd.DataFrame | None = None
    prune_curve: pd.DataFrame | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    circuits: pd.DataFrame | None = None  # circuit.parquet (cortexmap circuit)
    circuit_curves: pd.DataFrame | None = None  # circuit_curves.parquet

    @property
    def model_name(self) -> str:
        """The model spec as given to ``cortexmap map``."""
        return str(self.results.manifest["model"].get("spec", "model"))


def ensure_atlas(run_dir: str | Path, *, seed: int = 0, n_perm: int = 2000) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Return a run's atlas, building and writing it first when it is missing.

    Building uses the stored influence (``--regulators``) and pair (``--redundancy``) measurements
    when present but never loads the model; ``cortexmap analyze`` rebuilds it with other settings.

    Args:
        run_dir: a run directory written by ``cortexmap map``.
        seed: random seed of the analyses (as ``cortexmap analyze --seed``).
        n_perm: permutations of each null (as ``cortexmap analyze --permutations``).

    Returns:
        ``(atlas, findings)`` as :func:`cortexmap.analysis.build_atlas` returns them.

    Raises:
        ResultsError: not a run directory, an unfinished run, or another schema version.
    """
    results = load_results(run_dir)
    stored = results.atlas()
    if stored is not None:
        return stored
    log.info("building the atlas of %s", results.root)
    return analyze_run(results.root, seed=seed, n_perm=n_perm)


def _influence(root: Path) -> pd.DataFrame | None:
    path = root / INFLUENCE
    if not path.exists():
        return None
    table = pd.read_parquet(path)
    table = table[table["condition"] != SCREEN_CONDITION]  # the screen pass is not a condition
    return table if len(table) else None


def _prune_curve(root: Path) -> pd.DataFrame | None:
    path = root / PRUNE_CURVE
    if not path.exists():
        return None
    curve = pd.read_parquet(path)
    return curve if len(curve) else None


def _compare(base: Results, other_dir: str | Path, seed: int) -> Comparison:
    from cortexmap.analysis import compare_models

    other = load_results(other_dir)
    spec_a, spec_b = base.model, other.model
    try:
        result = compare_models(base.effects, other.effects, base.shape, other.shape, seed=seed)
    except CortexmapError as err:  # e.g. no shared task: the panel says so instead of failing the report
        return Comparison(spec_a, spec_b, other.root, None, str(err))
    return Comparison(spec_a, spec_b, other.root, result)


def load_report_data(run_dir: str | Path, compare: Sequence[str | Path] = (), *, seed: int = 0) -> ReportData:
    """Load a run, its atlas (built if needed), optional measurements and comparisons.

    Args:
        run_dir: the run the report is about.
        compare: other runs to compare it with (cross-model panels).
        seed: random seed of the atlas (when built here) and of the comparisons' nulls.

    Returns:
        The loaded :class:`ReportData`.

    Raises:
        ResultsError: ``run_dir`` or a ``compare`` entry is not a finished run.
    """
    atlas, findings = ensure_atlas(run_dir, seed=seed)
    results = load_results(run_dir)
    comparisons = [_compare(results, other, seed) for other in compare]
    return ReportData(results, atlas, findings, _influence(results.root), _prune_curve(results.root), comparisons,
                      results.table(CIRCUIT), results.table(CIRCUIT_CURVES))
