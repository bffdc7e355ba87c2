"""Pruning and editing the bundled SmolLM2 (slow): equal to ablation, after a round trip through disk."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import cortexmap
from cortexmap.apply import edit_model, load_pruned, prune_heads, pruning_result, save_model, save_pruned
from tests.apply.test_prune import ATOL, expected_removed, logits


@pytest.mark.slow
def test_smollm2_prune_ten_percent_with_a_whole_kv_group(smollm2, tmp_path):  # noqa: ANN001
    gen = torch.Generator().manual_seed(0)
    heads = {"L5H0", "L5H1", "L5H2"}  # the whole first KV group of layer 5
    while len(heads) < 27:
        heads.add(f"L{int(torch.randint(30, (1,), generator=gen))}H{int(torch.randint(9, (1,), generator=gen))}")
    heads = sorted(heads)
    ids = smollm2.tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")["input_ids"]
    pruned = prune_heads(smollm2, heads)
    with cortexmap.intervene(smollm2, ablate=heads):
        ablated = logits(smollm2.model, ids)
    path = save_pruned(pruned, tmp_path / "smollm2-pruned")
    ours = load_pruned(path)
    assert torch.allclose(logits(ours.model, ids), ablated, atol=ATOL)
    params, kv_removed = expected_removed(smollm2, heads, "zero")
    result = pruning_result(ours)
    assert smollm2.n_params - ours.n_params == result.total_params_removed == params
    assert result.kv_heads_removed == kv_removed >= 1
    assert ours.tokenizer is not None


@pytest.mark.slow
def test_smollm2_edit_saves_and_reloads_with_plain_transformers(smollm2, tmp_path):  # noqa: ANN001
    ids = smollm2.tokenizer(["Paris is the capital of"], return_tensors="pt")["input_ids"]
    edits = {"amplify": {"L3H5": 0.5, "L20H1": -0.5}, "ablate": ["L10H2"]}
    with cortexmap.intervene(smollm2, **edits):
        hooked = logits(smollm2.model, ids)
    path = save_model(edit_model(smollm2, **edits), tmp_path / "smollm2-edited")
    reloaded = tf.AutoModelForCausalLM.from_pretrained(path)
    assert torch.allclose(logits(reloaded, ids), hooked, atol=1e-4)
    assert tf.AutoTokenizer.from_pretrained(path)("Paris")["input_ids"] == smollm2.tokenizer("Paris")["input_ids"]
