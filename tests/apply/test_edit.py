"""Edits baked into weights equal hook-based interventions, also after saving and reloading."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import cortexmap
from cortexmap.apply import compare_generations, edit_model, save_model
from tests.tiny import random_ids, tiny_handle

ATOL = 1e-5
AMPLIFY = {"L0H1": 0.5, "L2H3": -0.7, "L1H0": 2.0}
ABLATE = ["L1H2", "L2H0"]


def logits(model, ids):  # noqa: ANN001, ANN201
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_edited_weights_equal_intervention_and_reload_with_plain_transformers(arch, tmp_path):  # noqa: ANN001
    handle, ids = tiny_handle(arch), random_ids()
    original = logits(handle.model, ids)
    edited = edit_model(handle, amplify=AMPLIFY, ablate=ABLATE)
    with cortexmap.intervene(handle, amplify=AMPLIFY, ablate=ABLATE):
        hooked = logits(handle.model, ids)
    assert not torch.allclose(hooked, original, atol=1e-3)
    assert torch.allclose(logits(edited.model, ids), hooked, atol=ATOL)
    assert torch.equal(logits(handle.model, ids), original)  # the input model is untouched
    path = save_model(edited, tmp_path / arch)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(path)
    assert torch.allclose(logits(reloaded, ids), hooked, atol=ATOL)
    assert sum(p.numel() for p in reloaded.parameters()) == handle.n_params


def test_amplify_and_ablate_the_same_head_ablates_it():
    handle, ids = tiny_handle("llama"), random_ids()
    both = edit_model(handle, amplify={"L1H1": 3.0}, ablate=["L1H1"])
    only = edit_model(handle, ablate=["L1H1"])
    assert torch.equal(logits(both.model, ids), logits(only.model, ids))


def test_compare_generations_reports_where_continuations_part():
    handle = tiny_handle("llama")
    prompts = [random_ids(batch=1, seed=s) for s in (1, 2)]
    same = compare_generations(handle, handle, prompts, max_new_tokens=5)
    assert same["same"].all() and (same["first_diff"] == -1).all()
    loud = edit_model(handle, amplify={f"L{l}H{h}": 5.0 for l in range(3) for h in range(4)})
    diff = compare_generations(handle, loud, prompts, max_new_tokens=5)
    assert not diff["same"].all()
    row = diff[~diff["same"]].iloc[0]
    assert row["before"].split()[: row["first_diff"]] == row["after"].split()[: row["first_diff"]]
    assert row["before"].split()[row["first_diff"]] != row["after"].split()[row["first_diff"]]


def test_edit_plans_of_intervention_specs_equal_keywords():
    from cortexmap.interventions import ablation, amplification

    handle, ids = tiny_handle("qwen2"), random_ids()
    plan = edit_model(handle, ablation(["L1H2", "L2H0"]), amplification("L0H1", 0.5))
    keywords = edit_model(handle, ablate=["L1H2", "L2H0"], amplify={"L0H1": 0.5})
    assert torch.equal(logits(plan.model, ids), logits(keywords.model, ids))
    with pytest.raises(cortexmap.CortexmapError, match="cannot be baked"):
        edit_model(handle, ablation(["L1H2"], mode="mean"))


def test_nothing_to_edit_is_a_clear_error():
    with pytest.raises(cortexmap.CortexmapError, match="nothing to edit"):
        edit_model(tiny_handle("gpt2"))
