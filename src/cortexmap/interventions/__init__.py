"""Head interventions: zero / mean / resample ablation, activation patching, amplification."""

from cortexmap.interventions.capture import head_outputs, mean_head_outputs, recording
from cortexmap.interventions.context import Intervention, intervene
from cortexmap.interventions.edit import LayerEdit, register_edits
from cortexmap.interventions.specs import (
    KINDS, HeadIntervention, InterventionSpec, ablation, amplification, parse_interventions, patching,
)

__all__ = [
    "KINDS", "HeadIntervention", "Intervention", "InterventionSpec", "LayerEdit", "ablation", "amplification",
    "head_outputs", "intervene", "mean_head_outputs", "parse_interventions", "patching", "recording",
    "register_edits",
]
