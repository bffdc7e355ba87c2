"""Apply a head map: prune heads physically, bake edits into weights, monitor heads while generating."""

from cortexmap.apply.battery import battery_scorer
from cortexmap.apply.corpus import Chunks, corpus_info, corpus_text, token_chunks
from cortexmap.apply.curve import gradient_scorer, heldout_loss, pruning_curve
from cortexmap.apply.edit import compare_generations, edit_model
from cortexmap.apply.heal import heal
from cortexmap.apply.importance import (
    head_importance, importance_from_effects, layer_order_importance, random_importance, select_heads,
)
from cortexmap.apply.monitor import Monitor, monitor
from cortexmap.apply.prune import PruneResult, attention_params, prune_heads, pruning_result
from cortexmap.apply.run import PruneOptions, run_edit, run_monitor, run_prune
from cortexmap.apply.storage import load_pruned, save_model, save_pruned

__all__ = [
    "Chunks", "Monitor", "PruneResult", "attention_params", "battery_scorer", "compare_generations", "corpus_info", "corpus_text",
    "edit_model", "gradient_scorer", "head_importance", "heal", "heldout_loss", "importance_from_effects",
    "layer_order_importance", "load_pruned", "monitor", "prune_heads", "pruning_curve", "pruning_result",
    "PruneOptions", "random_importance", "run_edit", "run_monitor", "run_prune", "save_model", "save_pruned", "select_heads",
    "token_chunks",
]
