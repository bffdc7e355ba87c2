"""Edge-level circuits: the graph of heads, MLPs and their inputs, exact path patching, EAP / EAP-IG, faithfulness.

:mod:`~cortexmap.circuits.graph` names nodes and edges (query heads' ``q`` inputs, KV groups'
``k``/``v`` inputs, MLP and logits inputs; :mod:`~cortexmap.circuits.ungrouped` gives key and value
inputs per query head, as MIB counts them), :mod:`~cortexmap.circuits.patching` measures edges and
circuits exactly, :mod:`~cortexmap.circuits.attribution` estimates every edge at once,
:mod:`~cortexmap.circuits.curves` evaluates rankings over circuit sizes,
:mod:`~cortexmap.circuits.faithfulness` turns those into MIB's faithfulness, CPR and CMD, and
:mod:`~cortexmap.circuits.protocol` fixes how (cortexmap's protocol or MIB's, held-out prompts);
:mod:`~cortexmap.circuits.interchange` reads and writes EAP-IG / MIB graph files;
:mod:`~cortexmap.circuits.explain` explains one decision,
:mod:`~cortexmap.circuits.attend` why a head attends where it does (path patching into
its query and key, :mod:`~cortexmap.circuits.attention`) and :mod:`~cortexmap.circuits.regulation`
measures the regulator test on edges.

Names load their modules on first use, so ``graph`` and ``faithfulness`` (no torch) serve
analysis and report code on a machine without torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Edge": "graph", "Graph": "graph",
    "circuit_layout": "layout", "unsupported_reason": "layout",
    "PathPatcher": "patching", "patch_edges": "patching", "circuit_metric": "patching",
    "circuit_metrics": "patching", "edge_effects": "patching",
    "edge_scores": "attribution", "attribute_edges": "attribution",
    "faithfulness_curves": "curves", "per_head_kv": "ungrouped",
    "Protocol": "protocol", "PROTOCOLS": "protocol", "split_batches": "protocol",
    "write_mib_graph": "interchange", "read_mib_graph": "interchange", "prune": "interchange",
    "ranking_summary": "faithfulness", "paired_differences": "faithfulness",
    "MIB_FRACTIONS": "faithfulness", "circuit_sizes": "faithfulness", "rank_edges": "faithfulness",
    "random_orders": "faithfulness", "prefix_masks": "faithfulness", "circuit_faithfulness": "faithfulness",
    "cpr": "faithfulness", "cmd": "faithfulness", "curve_summary": "faithfulness",
    "curve_table": "faithfulness", "summarize_curves": "faithfulness",
    "CircuitResult": "run", "trace_circuit": "run", "write_circuit": "store",
    "Explanation": "explain", "explain_decision": "explain",
    "HeadPatcher": "attention", "attention_metric": "attention",
    "AttentionExplanation": "attend", "explain_attention": "attend",
    "RegulationResult": "regulation", "measure_regulation": "regulation", "write_regulation": "store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"cortexmap.circuits.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cortexmap.circuits' has no attribute {name!r}")
