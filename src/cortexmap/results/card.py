"""The run directory as a Hugging Face dataset: a dataset card whose ``configs`` name its tables.

``datasets.load_dataset(RUN_DIR, "effects")`` then loads ``effects.parquet`` (and likewise every
other table the run has), offline, with no upload. The card is rewritten whenever a table is
added (``map`` finishing, ``analyze``), so it lists exactly the tables present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cortexmap.atomic import write_text
from cortexmap.results.layout import CARD, TABLES

_ABOUT = {
    "effects": "one row per head x task x intervention x method: effect, normalized effect, 95% CI",
    "prompt_effects": "the per-prompt effects behind each row of effects",
    "patterns": "attention-pattern probe scores per head (previous-token, induction, ...)",
    "evidence": "per task or probe and head: attention from the decision position, OV copy and direct-logit scores (the evidence role names need)",
    "atlas": "one row per head: roles, group, levels (built by cortexmap analyze)",
    "influence": "how ablating a head changes other heads' outputs, per condition (analyze --regulators)",
    "pairs": "joint ablation of head pairs (analyze --redundancy)",
    "flips": "heads patched from right into wrong prompts of the same template, with same-layer controls (analyze --flips)",
    "circuit": "one row per edge of each traced task: screen score, exact effect where verified (cortexmap circuit)",
    "circuit_curves": "faithfulness curves of each traced task's edge rankings (cortexmap circuit)",
    "regulation": "the edge regulator test: per ablated head, side and matched pair, how much the q/k edges moved (cortexmap regulate)",
    "circuit_prompts": "each verified edge's exact effect per prompt, with the prompt's clean metric (cortexmap circuit)",
}


def card_text(root: Path, manifest: dict[str, Any]) -> str:
    present = [(name, file) for name, file in TABLES.items() if (root / file).exists()]
    configs = "".join(f"- config_name: {name}\n  data_files: {file}\n" + ("  default: true\n" if name == "effects" else "")
                      for name, file in present)
    model = manifest.get("model", {})
    lines = "\n".join(f"- `{name}` ({file}): {_ABOUT[name]}" for name, file in present)
    return (f"---\nconfigs:\n{configs}tags:\n- interpretability\n- cortexmap\n---\n\n"
            f"# cortexmap run: {model.get('spec', 'model')}\n\n"
            f"Attention-head effects measured by cortexmap {manifest.get('cortexmap_version', '')} on "
            f"{model.get('n_layers', '?')} layers x {model.get('n_heads', '?')} heads (seed {manifest.get('seed')}); "
            f"the arguments, versions and model hash are in `manifest.json`, the columns in cortexmap's docs/schema.md.\n\n"
            f"{lines}\n\n```python\nimport datasets\neffects = datasets.load_dataset(\"{root.name}\", \"effects\", split=\"train\")\n```\n")


def write_card(root: str | Path, manifest: dict[str, Any]) -> Path:
    """Write (or rewrite) the run's dataset card listing the tables present."""
    root = Path(root)
    return write_text(root / CARD, card_text(root, manifest))
