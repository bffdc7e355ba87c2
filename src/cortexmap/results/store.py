"""Writing a run: one file pair per finished unit, then the run's tables, every write atomic.

Each finished (task, intervention, method) unit is its own pair of files under ``units/``;
``effects.parquet`` is rebuilt from them, so ``--resume`` redoes exactly the units without a
file, and a run killed at any moment (SIGKILL included) loses at most the unit in progress.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cortexmap.atomic import write_json, write_parquet
from cortexmap.results.layout import EFFECTS, MANIFEST, PROMPT_EFFECTS, UNITS


def unit_key(task: str, intervention: str, method: str) -> str:
    """File-safe key of a (task, intervention, method) unit."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{task}__{intervention}__{method}")


@dataclass
class RunStore:
    """The files of one run directory being written."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def units_dir(self) -> Path:
        return self.root / UNITS

    def _unit(self, key: str, part: str) -> Path:
        return self.units_dir / f"{key}.{part}.parquet"

    def has_unit(self, key: str) -> bool:
        return self._unit(key, "effects").exists()

    def write_unit(self, key: str, effects: pd.DataFrame, prompt_effects: pd.DataFrame) -> None:
        """Store one finished unit; the effects file is written last and marks it done."""
        write_parquet(prompt_effects, self._unit(key, "prompts"))
        write_parquet(effects, self._unit(key, "effects"))

    def write_table(self, name: str, frame: pd.DataFrame) -> Path:
        return write_parquet(frame, self.root / name)

    def read_manifest(self) -> dict[str, Any] | None:
        path = self.root / MANIFEST
        return json.loads(path.read_text()) if path.exists() else None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(manifest, self.root / MANIFEST)

    def finalize(self, keys: list[str]) -> pd.DataFrame:
        """Concatenate the units ``keys`` into ``effects.parquet`` and ``prompt_effects.parquet``."""
        effects = [pd.read_parquet(self._unit(k, "effects")) for k in keys]
        prompts = [pd.read_parquet(self._unit(k, "prompts")) for k in keys]
        table = pd.concat(effects, ignore_index=True) if effects else pd.DataFrame()
        write_parquet(table, self.root / EFFECTS)
        write_parquet(pd.concat(prompts, ignore_index=True) if prompts else pd.DataFrame(), self.root / PROMPT_EFFECTS)
        return table
