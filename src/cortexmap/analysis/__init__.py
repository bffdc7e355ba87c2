"""Pure statistics over cortexmap result tables: no torch, no printing.

Every analysis is a function of one :class:`~cortexmap.analysis.view.RunView` (the claim's
counterfactual interventions, the importance mask and the paired bootstrap, built once) returning a
frozen record with its own ``findings()``; :func:`build_atlas` runs them all. Hypotheses of the
"attention cortex" kind are tested here, each finding reported with an effect size, a 95% interval
and a baseline or null, and every test is calibrated on a null that breaks its naive assumption
(:mod:`cortexmap.analysis.nulls`, tests/analysis/test_calibration.py).
"""

from __future__ import annotations

from cortexmap.analysis.adaptivity import Adaptivity, task_adaptivity
from cortexmap.analysis.agreement import Agreement, intervention_agreement
from cortexmap.analysis.atlas import (
    ATLAS_COLUMNS,
    Atlas,
    AtlasOptions,
    AtlasRecords,
    atlas_of_view,
    build_atlas,
    list_findings,
    summarize_findings,
)
from cortexmap.analysis.compare import Conservation, compare, compare_models, conservation_null, scale_comparison
from cortexmap.analysis.depth import layer_distribution
from cortexmap.analysis.findings import KINDS, VERDICTS, Finding
from cortexmap.analysis.groups import Groups, functional_groups
from cortexmap.analysis.levels import (
    DEFAULT_LEVEL_ORDER,
    DepthOrder,
    LayerBands,
    LevelDepths,
    depth_order,
    layer_bands,
    level_depths,
    task_depths,
)
from cortexmap.analysis.mistakes import Errors, error_analysis
from cortexmap.analysis.profiles import effect_columns, head_profiles, probe_columns, probe_matrix
from cortexmap.analysis.redundancy import Redundancy, pair_redundancy, redundancy_from_pairs
from cortexmap.analysis.regulation import Regulation, RegulationTest, regulation_analysis
from cortexmap.analysis.regulators import Regulators, influence_matrix, regulator_analysis
from cortexmap.analysis.roles import CATALOGUE, Roles, catalogue_table, roles
from cortexmap.analysis.selection import head_grid, select_effects
from cortexmap.analysis.specialization import Specialization, specialization
from cortexmap.analysis.view import COUNTERFACTUAL, RunView, build_view, view_of_run

__all__ = [
    "ATLAS_COLUMNS", "Adaptivity", "Agreement", "Atlas", "AtlasOptions", "AtlasRecords", "CATALOGUE", "COUNTERFACTUAL",
    "Conservation", "DEFAULT_LEVEL_ORDER", "DepthOrder", "Errors", "Finding", "Groups", "KINDS", "LayerBands",
    "LevelDepths", "Redundancy", "Regulation", "RegulationTest", "Regulators", "Roles", "RunView", "Specialization", "VERDICTS",
    "atlas_of_view", "build_atlas", "build_view", "catalogue_table", "compare", "compare_models", "conservation_null",
    "depth_order", "effect_columns", "error_analysis", "functional_groups", "head_grid", "head_profiles",
    "influence_matrix", "intervention_agreement", "layer_bands", "layer_distribution", "level_depths",
    "list_findings", "pair_redundancy", "probe_columns", "probe_matrix", "redundancy_from_pairs",
    "regulation_analysis", "regulator_analysis", "roles", "scale_comparison", "select_effects", "specialization",
    "summarize_findings", "task_adaptivity", "task_depths", "view_of_run",
]
