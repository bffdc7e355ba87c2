"""Pure statistics over cortexmap result tables: no torch, no I/O, no printing.

Every function takes DataFrames (docs/schema.md) and returns DataFrames or dicts; seeds are
arguments and inputs are never modified. The conventions every module shares (which rows are
read, what "importance", "important" and "active" mean) live in
:mod:`cortexmap.analysis.selection`. Hypotheses of the "attention cortex" kind are tested here,
each finding reported with an effect size, a 95% interval and a baseline or null.
"""

from __future__ import annotations

from cortexmap.analysis.adaptivity import task_depths
from cortexmap.analysis.atlas import ATLAS_COLUMNS, Atlas, AtlasOptions, build_atlas, to_jsonable
from cortexmap.analysis.bands import DEFAULT_LEVEL_ORDER, band_hypothesis, layer_bands, level_depths, ordinal_depth_rho
from cortexmap.analysis.compare import compare_models, conservation_test, match_heads, scale_comparison
from cortexmap.analysis.depth import layer_distribution
from cortexmap.analysis.groups import functional_groups
from cortexmap.analysis.profiles import effect_columns, head_profiles, probe_columns, probe_matrix
from cortexmap.analysis.regulators import (
    condition_contrasts,
    default_condition_pairs,
    influence_matrix,
    regulator_scores,
)
from cortexmap.analysis.resampling import bootstrap_effects
from cortexmap.analysis.roles import (
    ROLE_PROBES,
    ROLE_TASKS,
    assign_roles,
    closest_candidates,
    evaluated_roles,
    role_evidence,
)
from cortexmap.analysis.selection import active_heads, head_grid, select_effects
from cortexmap.analysis.specialization import (
    pairwise_interactions,
    redundancy_summary,
    specialization_index,
    specialization_summary,
)
from cortexmap.analysis.findings import KINDS, VERDICTS, Finding
from cortexmap.analysis.summary import list_findings, summarize_findings

__all__ = [
    "Atlas",
    "AtlasOptions",
    "ATLAS_COLUMNS",
    "DEFAULT_LEVEL_ORDER",
    "Finding",
    "KINDS",
    "ROLE_PROBES",
    "ROLE_TASKS",
    "VERDICTS",
    "active_heads",
    "assign_roles",
    "band_hypothesis",
    "bootstrap_effects",
    "build_atlas",
    "closest_candidates",
    "compare_models",
    "condition_contrasts",
    "conservation_test",
    "default_condition_pairs",
    "effect_columns",
    "evaluated_roles",
    "functional_groups",
    "head_grid",
    "head_profiles",
    "influence_matrix",
    "layer_bands",
    "layer_distribution",
    "level_depths",
    "list_findings",
    "match_heads",
    "ordinal_depth_rho",
    "pairwise_interactions",
    "probe_columns",
    "probe_matrix",
    "redundancy_summary",
    "regulator_scores",
    "role_evidence",
    "scale_comparison",
    "select_effects",
    "specialization_index",
    "specialization_summary",
    "summarize_findings",
    "task_depths",
    "to_jsonable",
]
