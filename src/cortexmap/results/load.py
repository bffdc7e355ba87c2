"""Reading a run: :func:`load_results` checks what it opens and says what to do when it is not a run.

A :class:`Results` carries the measured tables and the manifest; the analysed parts (atlas,
findings, influence, pairs) are read on demand, ``None`` until ``cortexmap analyze`` wrote them.
In Jupyter a :class:`Results` displays as a short summary (``_repr_html_``).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cortexmap.errors import ResultsError
from cortexmap.results.layout import (
    ATLAS, ATTRIBUTION, EFFECTS, EXACT, FINDINGS, MANIFEST, PATTERNS, PROMPT_EFFECTS, SCHEMA_VERSION, SCREEN,
)


def check_schema(manifest: dict[str, Any], root: Path) -> None:
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(f"{root} has result schema {version}, this cortexmap reads {SCHEMA_VERSION}; re-run it")


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a cortexmap output directory, schema-checked.

    Raises:
        ResultsError: no manifest, or another schema version.
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.exists():
        raise ResultsError(f"{root} is not a cortexmap run (no {MANIFEST}); create one with `cortexmap map --out {root}`")
    manifest = json.loads(path.read_text())
    check_schema(manifest, root)
    return manifest


@dataclass
class Results:
    """A loaded run: effects, probe patterns and manifest; analysed tables on demand."""

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

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)`` of the mapped model."""
        return self.n_layers, self.n_heads

    @property
    def model(self) -> str:
        """The model spec the run mapped."""
        return str(self.manifest["model"].get("spec", self.manifest.get("arguments", {}).get("model", "model")))

    def table(self, name: str) -> pd.DataFrame | None:
        """An optional table of the run (a file name from :mod:`cortexmap.results.layout`), or ``None``."""
        path = self.root / name
        return pd.read_parquet(path) if path.exists() else None

    def prompt_effects(self) -> pd.DataFrame | None:
        return self.table(PROMPT_EFFECTS)

    def atlas(self) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """``(atlas, findings)`` as ``cortexmap analyze`` last wrote them, or ``None``."""
        if not (self.root / ATLAS).exists() or not (self.root / FINDINGS).exists():
            return None
        return pd.read_parquet(self.root / ATLAS), json.loads((self.root / FINDINGS).read_text())

    def _repr_html_(self) -> str:
        effects = self.effects
        methods = effects["method"].value_counts().to_dict() if "method" in effects else {}
        audit = self.manifest.get("audit") or {}
        rows = [("model", self.model), ("heads", f"{self.n_layers} layers x {self.n_heads}"),
                ("tasks", effects["task"].nunique() if "task" in effects else 0),
                ("interventions", ", ".join(self.manifest.get("interventions", []))),
                ("rows", ", ".join(f"{n} {m}" for m, n in methods.items())), ("directory", str(self.root))]
        if audit.get("rate") is not None:
            rows.append(("screen audit", f"{audit['important']} of {audit['audited']} unverified heads important, miss "
                         f"rate {audit['rate']:.3f} [95% CI {audit['ci_low']:.3f}, {audit['ci_high']:.3f}]"))
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td style='text-align:left'>"
                       f"{html.escape(str(v))}</td></tr>" for k, v in rows)
        method = next((m for m in (EXACT, SCREEN, ATTRIBUTION) if m in methods), None)
        rows_of = effects[effects["method"] == method] if method else effects
        top = rows_of.reindex(rows_of["effect"].abs().sort_values(ascending=False).index).head(10)
        cols = [c for c in ("task", "intervention", "head_id", "effect", "ci_low", "ci_high", "n_prompts") if c in top]
        return (f"<div><b>cortexmap run</b><table>{body}</table><p>Largest {html.escape(str(method))} effects:</p>"
                f"{top[cols].to_html(index=False, float_format=lambda v: f'{v:.3g}')}</div>")


def load_results(run_dir: str | Path) -> Results:
    """Load a run directory written by ``cortexmap map``.

    Raises:
        ResultsError: not a run directory, an unfinished run, or another schema version.
    """
    root = Path(run_dir)
    manifest = read_manifest(root)
    if not (root / EFFECTS).exists():
        raise ResultsError(f"{root} is an unfinished run (no {EFFECTS}); finish it with `cortexmap map --resume --out {root}`")
    effects = pd.read_parquet(root / EFFECTS)
    patterns = pd.read_parquet(root / PATTERNS) if (root / PATTERNS).exists() else pd.DataFrame()
    return Results(root, effects, patterns, manifest)


__all__ = ["Results", "load_results", "read_manifest", "check_schema"]
