"""A task's circuit and the edge regulator test in a run directory: their tables and manifest entries.

``circuit.parquet``, ``circuit_curves.parquet`` and ``circuit_prompts.parquet`` with the manifest's
``circuits`` (:func:`write_circuit`); ``regulation.parquet`` with its ``regulation``
(:func:`write_regulation`).

The tables hold every traced task and protocol (column ``protocol``); tracing a task again under a
protocol replaces its rows of that protocol (each file is rewritten whole and atomically). The
manifest's ``circuits`` entry :func:`circuit_key` (the task's name under protocol ``"cortexmap"``,
``"{task}@mib"`` under MIB's) holds the arguments (split and edge counts included), timings, the
circuit's ranking, the held-out ``summary`` rows, the in-sample ``summary_in_sample`` rows and the
paired ``differences`` of :class:`~cortexmap.circuits.run.CircuitResult`.
Columns are documented in docs/schema.md. Pandas only: no torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from cortexmap.atomic import write_json, write_parquet
from cortexmap.results.card import write_card
from cortexmap.results.layout import CIRCUIT, CIRCUIT_CURVES, CIRCUIT_PROMPTS, MANIFEST, REGULATION
from cortexmap.results.load import read_manifest


def _replace(path: Path, rows: pd.DataFrame, key: dict[str, str], fill: dict[str, str] | None = None) -> None:
    """Write ``rows`` to ``path`` in place of the stored rows whose ``key`` columns hold ``key``'s values.

    ``fill`` gives stored rows a key column they lack (tables written before the column existed).
    """
    if path.exists():
        old = pd.read_parquet(path)
        old = old.assign(**{c: v for c, v in (fill or {}).items() if c not in old})
        same = pd.concat([old[column] == value for column, value in key.items()], axis=1).all(axis=1)
        rows = pd.concat([old[~same], rows], ignore_index=True)
    write_parquet(rows, path)


def _replace_task(path: Path, task: str, protocol: str, rows: pd.DataFrame) -> None:
    rows = rows.copy()
    rows.insert(0, "task", task)
    rows["protocol"] = protocol
    _replace(path, rows, {"task": task, "protocol": protocol}, fill={"protocol": "cortexmap"})


def circuit_key(task: str, protocol: str) -> str:
    """The manifest's ``circuits`` key of a task traced under ``protocol``."""
    return task if protocol == "cortexmap" else f"{task}@{protocol}"


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _json_ready(v) for k, v in row.items()} for row in frame.to_dict("records")]


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
        result: a :class:`~cortexmap.circuits.run.CircuitResult` (its ``arguments["protocol"]``
            keys the rows).

    Returns:
        The three tables' paths.

    Raises:
        ResultsError: not a run directory, or one of another schema version.
    """
    root = Path(run_dir)
    manifest = read_manifest(root)
    model = str(manifest.get("model", {}).get("spec", ""))
    protocol = str(result.arguments.get("protocol", "cortexmap"))
    edges = result.edges.assign(model=model, ablation=result.arguments.get("ablation"),
                                screen=result.arguments.get("screen"))
    _replace_task(root / CIRCUIT, task_name, protocol, edges)
    _replace_task(root / CIRCUIT_CURVES, task_name, protocol, result.curves.assign(model=model))
    _replace_task(root / CIRCUIT_PROMPTS, task_name, protocol, result.prompts.assign(model=model))
    split = lambda frame, name: frame[frame["split"] == name].drop(columns="split") if "split" in frame else frame
    judged = result.arguments.get("judged_on") or "heldout"
    manifest.setdefault("circuits", {})[circuit_key(task_name, protocol)] = {
        "task": task_name, "protocol": protocol, "arguments": result.arguments, "timings": result.timings,
        "circuit_method": result.circuit_method, "circuit_heads": list(result.top_heads["node"]),
        "end_heads": result.end_heads, "summary": _records(split(result.summary, judged)),
        "summary_in_sample": _records(split(result.summary, "discovery")) if judged != "discovery" else [],
        "differences": _records(split(result.differences, judged)),
        "differences_in_sample": _records(split(result.differences, "discovery")) if judged != "discovery" else [],
    }
    write_json(manifest, root / MANIFEST)
    write_card(root, manifest)
    return [root / CIRCUIT, root / CIRCUIT_CURVES, root / CIRCUIT_PROMPTS]


def write_regulation(run_dir: str | Path, result: Any) -> Path:
    """Write (or replace) one candidate and condition's edge regulator test in a run directory.

    Rows go to ``regulation.parquet`` (a candidate and condition measured again replace theirs);
    the manifest's ``regulation`` entry ``"{candidate}:{condition}"`` keeps the arguments, timings
    and the edges measured.

    Args:
        run_dir: a run directory written by ``cortexmap map``.
        result: a :class:`~cortexmap.circuits.regulation.RegulationResult`.

    Returns:
        The table's path.

    Raises:
        ResultsError: not a run directory, or one of another schema version.
    """
    root = Path(run_dir)
    manifest = read_manifest(root)
    candidate, condition = result.arguments["head"], result.arguments["condition"]
    rows = result.prompts.assign(model=str(manifest.get("model", {}).get("spec", "")))
    path = root / REGULATION
    _replace(path, rows, {"candidate": candidate, "condition": condition})
    manifest.setdefault("regulation", {})[f"{candidate}:{condition}"] = {
        "arguments": result.arguments, "timings": result.timings, "edges": result.edges}
    write_json(manifest, root / MANIFEST)
    write_card(root, manifest)
    return path
