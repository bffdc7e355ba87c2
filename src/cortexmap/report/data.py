"""Everything one report shows, loaded from run directories (no torch, no model).

A run directory is read with :func:`cortexmap.results.load_results`, which refuses a directory
without ``manifest.json`` and an unfinished run. The atlas is the typed
:class:`~cortexmap.analysis.atlas.AtlasRecords` that ``cortexmap analyze`` wrote
(:func:`cortexmap.analysis.run.load_atlas`); when it is missing, half written or written by an
older cortexmap (``load_atlas`` returns None), it is rebuilt in-process with the same function
``cortexmap analyze`` calls (:func:`~cortexmap.analysis.run.analyze_run`) and written atomically.
An existing atlas is used as it is (``effects.parquet`` only exists once a run is complete, so it
cannot change under its atlas; modification times are not trusted, since copying a run directory
changes them).

The report reads records' fields and :class:`~cortexmap.analysis.findings.Finding` records only,
never keys of a nested dict. The run's :class:`~cortexmap.analysis.view.RunView` (the claim's
interventions and method, as the atlas used them) is built once, on first use, for the figures
that draw per-layer importance and for the cross-model comparisons. Optional parts are ``None``
when absent: ``influence.parquet`` (regulator measurements) and ``prune/curve.parquet`` (a
pruning curve).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from cortexmap.analysis.atlas import AtlasRecords
from cortexmap.analysis.compare import Conservation
from cortexmap.analysis.compare import compare as compare_views
from cortexmap.analysis.run import analyze_run, load_atlas
from cortexmap.analysis.view import RunView, view_of_run
from cortexmap.errors import CortexmapError
from cortexmap.results import Results, load_results
from cortexmap.results.layout import CIRCUIT, CIRCUIT_CURVES, INFLUENCE, PRUNE_CURVE, SCREEN_CONDITION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comparison:
    """One cross-model comparison of the report's run (A) against another run (B).

    Attributes:
        model_a: the report's model.
        model_b: the other model.
        run_b: the other run's directory.
        record: :func:`cortexmap.analysis.compare.compare` of the two views, or None when it
            could not be computed.
        error: why not (one line), when ``record`` is None.
    """

    model_a: str
    model_b: str
    run_b: Path
    record: Conservation | None
    error: str | None = None


@dataclass
class ReportData:
    """A loaded run with its atlas records and every optional measurement the report can show.

    Attributes:
        results: the loaded run.
        atlas: the per-head atlas table (:data:`~cortexmap.analysis.atlas.ATLAS_COLUMNS` and probes).
        records: the atlas's typed records.
        influence: regulator measurements without the screen pass, or None.
        prune_curve: ``prune/curve.parquet``, or None.
        comparisons: one per compared run.
        circuits: ``circuit.parquet`` (``cortexmap circuit``), or None.
        circuit_curves: ``circuit_curves.parquet``, or None.
        seed: the seed of the view (and of the atlas when built here).
    """

    results: Results
    atlas: pd.DataFrame
    records: AtlasRecords
    influence: pd.DataFrame | None = None
    prune_curve: pd.DataFrame | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    circuits: pd.DataFrame | None = None
    circuit_curves: pd.DataFrame | None = None
    seed: int = 0

    @property
    def model_name(self) -> str:
        """The model spec as given to ``cortexmap map``."""
        return str(self.results.manifest["model"].get("spec", "model"))

    @cached_property
    def view(self) -> RunView:
        """The run's view over the atlas's claim interventions and method (built on first use)."""
        return view_of_run(self.results, seed=self.seed, interventions=tuple(self.records.interventions),
                           method=self.records.method)


def ensure_atlas(run_dir: str | Path, *, seed: int = 0, n_perm: int = 2000) -> tuple[pd.DataFrame, AtlasRecords]:
    """Return a run's atlas, building and writing it first when it is missing or stale.

    Building uses the stored influence (``--regulators``), pair (``--redundancy``) and flip
    measurements when present but never loads the model; ``cortexmap analyze`` measures them.

    Args:
        run_dir: a run directory written by ``cortexmap map``.
        seed: random seed of the analyses (as ``cortexmap analyze --seed``).
        n_perm: permutations of each null (as ``cortexmap analyze --permutations``).

    Returns:
        ``(atlas, records)`` as :func:`cortexmap.analysis.build_atlas` returns them.

    Raises:
        ResultsError: not a run directory, an unfinished run, or another schema version.
    """
    results = load_results(run_dir)
    stored = load_atlas(results)
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


def compare_with(data: ReportData, other_dir: str | Path) -> Comparison:
    """The conservation record of the report's run against another run (or why it has none).

    Raises:
        ResultsError: ``other_dir`` is not a finished run.
    """
    other = load_results(other_dir)
    try:
        record = compare_views(data.view, view_of_run(other, seed=data.seed), seed=data.seed)
    except CortexmapError as err:  # e.g. no shared task: the panel says so instead of failing the report
        return Comparison(data.results.model, other.model, other.root, None, str(err))
    return Comparison(data.results.model, other.model, other.root, record)


def _circuit_rows(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """The rows the circuit view draws: protocol cortexmap's, and its held-out curves where it has them."""
    if table is None:
        return None
    if "protocol" in table:
        table = table[table["protocol"] == "cortexmap"]
    if "split" in table:
        table = table[table["split"] == ("heldout" if (table["split"] == "heldout").any() else "discovery")]
    return table.reset_index(drop=True)


def load_report_data(run_dir: str | Path, compare: Sequence[str | Path] = (), *, seed: int = 0) -> ReportData:
    """Load a run, its atlas records (built if needed), optional measurements and comparisons.

    Args:
        run_dir: the run the report is about.
        compare: other runs to compare it with (cross-model panels).
        seed: random seed of the atlas (when built here), of the view and of the comparisons' nulls.

    Returns:
        The loaded :class:`ReportData`.

    Raises:
        ResultsError: ``run_dir`` or a ``compare`` entry is not a finished run.
    """
    atlas, records = ensure_atlas(run_dir, seed=seed)
    results = load_results(run_dir)
    data = ReportData(results, atlas, records, _influence(results.root), _prune_curve(results.root), [],
                      _circuit_rows(results.table(CIRCUIT)), _circuit_rows(results.table(CIRCUIT_CURVES)), seed)
    data.comparisons = [compare_with(data, other) for other in compare]
    return data
