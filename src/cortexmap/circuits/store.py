"""A task's circuit in a run directory: ``circuit.parquet``, ``circuit_curves.parquet`` and the manifest's ``circuits``.

Both tables hold every traced task; tracing a task again replaces its rows (each file is rewritten
whole and atomically). The manifest's ``circuits`` entry maps the task to the arguments, timings,
the circuit's ranking and the summary rows of :class:`~cortexmap.circuits.run.CircuitResult`.
Columns are documented in docs/schema.md. Pandas only: no torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from cortexmap.atomic import write_json, write_parquet
from cortexmap.results.card import write_card
from cortexmap.results.layout import CIRCUIT, CIRCUIT_CURVES, MANIFEST
from cortexmap.results.load import read_manifest


def _replace(path: Path, task: str, rows: pd.DataFrame) -> None:
    rows = rows.copy()
    rows.insert(0, "task", task)
    if path.exists():
        old = pd.read_parquet(path)
        rows = pd.concat([old[old["task"] != task], rows], ignore_index=True)
    write_parquet(rows, path)


def _json_ready(value: Any) -> Any:
    """Floats that JSON can hold: inf (not reached) and NaN become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_circuit(run_dir: str | Path, task_name: str, result: Any) -> list[Path]:
    """Write (or replace) one task's circuit in a run directory.

    Args:
        run_dir: a run directory written by ``cortexmap map``.
        task_name: the task the circuit is of.
        result: a :class:`~cortexmap.circuits.run.CircuitResult`.

    Returns:
        The two tables' paths.

    Raises:
        ResultsError: not a run directory, or one of another schema version.
    """
    root = Path(run_dir)
    manifest = read_manifest(root)
    model = str(manifest.get("model", {}).get("spec", ""))
    edges = result.edges.assign(model=model, ablation=result.arguments.get("ablation"),
                                screen=result.arguments.get("screen"))
    _replace(root / CIRCUIT, task_name, edges)
    _replace(root / CIRCUIT_CURVES, task_name, result.curves.assign(model=model))
    summary = [{k: _json_ready(v) for k, v in row.items()} for row in result.summary.to_dict("records")]
    manifest.setdefault("circuits", {})[task_name] = {
        "arguments": result.arguments, "timings": result.timings, "circuit_method": result.circuit_method,
        "circuit_heads": list(result.top_heads["node"]), "end_heads": result.end_heads, "summary": summary,
    }
    write_json(manifest, root / MANIFEST)
    write_card(root, manifest)
    return [root / CIRCUIT, root / CIRCUIT_CURVES]
