"""Every file of a run directory, named once (the schema is docs/schema.md).

A run directory holds what ``cortexmap map`` measured, what ``cortexmap analyze`` built from it,
and what the uses of the map added. Nothing else in cortexmap spells these names.
"""

from __future__ import annotations

from pathlib import Path

SCHEMA_VERSION = 1  # of every table and manifest cortexmap writes (runs and apply outputs alike)

# map
MANIFEST = "manifest.json"
EFFECTS = "effects.parquet"
PROMPT_EFFECTS = "prompt_effects.parquet"
PATTERNS = "patterns.parquet"
EVIDENCE = "evidence.parquet"  # per (task or probe, head): attention, OV and direct-logit evidence for role names
UNITS = "units"  # one file pair per finished (task, intervention, method) unit: resumable runs
# analyze
INFLUENCE = "influence.parquet"  # analyze --regulators
PAIRS = "pairs.parquet"  # analyze --redundancy
FLIPS = "flips.parquet"  # analyze: heads patched from right into wrong prompts of the same template
ATLAS = "atlas.parquet"
FINDINGS = "atlas.json"
COMPARE = "compare.json"
# circuit
CIRCUIT = "circuit.parquet"
CIRCUIT_CURVES = "circuit_curves.parquet"
REGULATION = "regulation.parquet"  # cortexmap regulate: the edge regulator test's per-prompt rows
CIRCUIT_PROMPTS = "circuit_prompts.parquet"  # the verified edges' effects per prompt, with its clean metric
# report and the dataset card
REPORT = "report.html"
CARD = "README.md"
# apply outputs (their own directories; prune/ inside a run is read by the report)
IMPORTANCE = "importance.parquet"
CURVE = "curve.parquet"
CURVE_PLOT = "curve.png"
GENERATIONS = "generations.parquet"
MONITOR = "monitor.parquet"
PRUNE_CURVE = Path("prune") / CURVE

# values of the tables' ``method`` column
EXACT, SCREEN, ATTRIBUTION = "exact", "screen", "attribution"
# the ``condition`` of influence rows measured on the regulator screen's prompts (not a condition set)
SCREEN_CONDITION = "screen"

TABLES = {"effects": EFFECTS, "prompt_effects": PROMPT_EFFECTS, "patterns": PATTERNS, "evidence": EVIDENCE, "atlas": ATLAS,
          "influence": INFLUENCE, "pairs": PAIRS, "flips": FLIPS, "circuit": CIRCUIT,
          "circuit_curves": CIRCUIT_CURVES, "circuit_prompts": CIRCUIT_PROMPTS,
          "regulation": REGULATION}
