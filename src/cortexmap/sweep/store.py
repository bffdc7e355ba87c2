"""The result store: a run directory of tidy Parquet files plus a JSON manifest (schema in docs/schema.md).

Every write goes to a temporary sibling first and is renamed into place, so a run killed at any
moment (SIGKILL included) leaves either the old file or the new one, never half of one. Each
finished (task, intervention) unit is its own file under ``units/``; ``effects.parquet`` is
rebuilt from them, so ``--resume`` redoes exactly the units without a file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cortexmap.errors import ResultsError

SCHEMA_VERSION = 1
EFFECTS = "effects.parquet"
PROMPT_EFFECTS = "prompt_effects.parquet"
PATTERNS = "patterns.parquet"
MANIFEST = "manifest.json"


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Atomically write ``df`` to ``path`` as Parquet."""
    tmp = _tmp(path)
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_json(data: Any, path: Path) -> None:
    """Atomically write ``data`` to ``path`` as indented JSON."""
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def unit_key(task: str, intervention: str, method: str) -> str:
    """File-safe key of a (task, intervention, method) unit."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{task}__{intervention}__{method}")


@dataclass
class RunStore:
    """Files of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def units_dir(self) -> Path:
        return self.root / "units"

    def has_unit(self, key: str) -> bool:
        return (self.units_dir / f"{key}.effects.parquet").exists()

    def write_unit(self, key: str, effects: pd.DataFrame, prompt_effects: pd.DataFrame) -> None:
        """Store one finished unit; the effects file is written last and marks it done."""
        self.units_dir.mkdir(parents=True, exist_ok=True)
        write_parquet(prompt_effects, self.units_dir / f"{key}.prompts.parquet")
        write_parquet(effects, self.units_dir / f"{key}.effects.parquet")

    def read_manifest(self) -> dict[str, Any] | None:
        path = self.root / MANIFEST
        return json.loads(path.read_text()) if path.exists() else None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(manifest, self.root / MANIFEST)

    def finalize(self, keys: list[str]) -> pd.DataFrame:
        """Concatenate the units ``keys`` into ``effects.parquet`` and ``prompt_effects.parquet``."""
        effects = [pd.read_parquet(self.units_dir / f"{k}.effects.parquet") for k in keys]
        prompts = [pd.read_parquet(self.units_dir / f"{k}.prompts.parquet") for k in keys]
        table = pd.concat(effects, ignore_index=True) if effects else pd.DataFrame()
        write_parquet(table, self.root / EFFECTS)
        write_parquet(pd.concat(prompts, ignore_index=True) if prompts else pd.DataFrame(), self.root / PROMPT_EFFECTS)
        return table


@dataclass
class Results:
    """A loaded run: effects, probe patterns and manifest."""

    root: Path
    effects: pd.DataFrame
    patterns: pd.DataFrame
    manifest: dict[str, Any]

    @property
    def n_layers(self) -> int:
        return int(self.manifest["model"]["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.manifest["model"]["n_heads"])

    def prompt_effects(self) -> pd.DataFrame | None:
        path = self.root / PROMPT_EFFECTS
        return pd.read_parquet(path) if path.exists() else None


def load_results(run_dir: str | Path) -> Results:
    """Load a run directory written by ``cortexmap map``.

    Raises:
        ResultsError: not a run directory, an unfinished run, or another schema version.
    """
    root = Path(run_dir)
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise ResultsError(f"{root} is not a cortexmap run (no {MANIFEST}); create one with `cortexmap map --out {root}`")
    manifest = json.loads(manifest_path.read_text())
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(f"{root} has result schema {version}, this cortexmap reads {SCHEMA_VERSION}; re-run the map")
    if not (root / EFFECTS).exists():
        raise ResultsError(f"{root} is an unfinished run (no {EFFECTS}); finish it with `cortexmap map --resume --out {root}`")
    effects = pd.read_parquet(root / EFFECTS)
    patterns = pd.read_parquet(root / PATTERNS) if (root / PATTERNS).exists() else pd.DataFrame()
    return Results(root, effects, patterns, manifest)
