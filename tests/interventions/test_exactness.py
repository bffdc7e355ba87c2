"""Exactness of head interventions against independent computations (weight edits, second runs)."""

from __future__ import annotations

import copy

import pytest
import torch

import cortexmap
from cortexmap.interventions import head_outputs, mean_head_outputs
from tests.tiny import random_ids, tiny_handle

ATOL = 1e-5


def logits(handle, ids):  # noqa: ANN001, ANN201
    with torch.no_grad():
        return handle.model(input_ids=ids, use_cache=False).logits


def scale_columns(handle, layer: int, head: int, factor: float):  # noqa: ANN001, ANN201
    """A copy of the model whose out-projection weight slice for ``head`` is multiplied by factor."""
    edited = copy.deepcopy(handle.model)
    clone = cortexmap.wrap_model(edited, spec="edited")
    proj = clone.out_proj(layer)
    d = handle.d_head
    with torch.no_grad():
        if handle.geometry.out_proj_is_conv1d:  # Conv1D weight is [in, out]
            proj.weight[head * d:(head + 1) * d, :] *= factor
        else:
            proj.weight[:, head * d:(head + 1) * d] *= factor
    return clone


def test_zero_ablation_equals_zeroed_weight_columns(arch):  # noqa: ANN001
    handle, ids = tiny_handle(arch), random_ids()
    for layer, head in [(0, 1), (2, 3)]:
        with cortexmap.intervene(handle, ablate=[(layer, head)]):
            hooked = logits(handle, ids)
        reference = logits(scale_columns(handle, layer, head, 0.0), ids)
        assert torch.allclose(hooked, reference, atol=ATOL)
        assert not torch.allclose(hooked, logits(handle, ids), atol=1e-4)  # the head mattered


@pytest.mark.parametrize("alpha", [0.5, -0.3, 2.0])
def test_amplification_equals_scaled_weight_columns(arch, alpha):  # noqa: ANN001
    handle, ids = tiny_handle(arch), random_ids()
    with cortexmap.intervene(handle, amplify={"L1H2": alpha}):
        hooked = logits(handle, ids)
    assert torch.allclose(hooked, logits(scale_columns(handle, 1, 2, 1 + alpha), ids), atol=ATOL)


def test_alpha_minus_one_is_zero_ablation_and_zero_is_identity(arch):  # noqa: ANN001
    handle, ids = tiny_handle(arch), random_ids()
    baseline = logits(handle, ids)
    with cortexmap.intervene(handle, amplify={(1, 0): -1.0}):
        amp = logits(handle, ids)
    with cortexmap.intervene(handle, ablate=[(1, 0)]):
        zero = logits(handle, ids)
    with cortexmap.intervene(handle, amplify={(1, 0): 0.0}):
        same = logits(handle, ids)
    assert torch.allclose(amp, zero, atol=ATOL)
    assert torch.equal(same, baseline)


def test_patching_from_the_same_prompt_changes_nothing(arch):  # noqa: ANN001
    handle, ids = tiny_handle(arch), random_ids()
    with cortexmap.intervene(handle, patch=handle.heads(), source=ids):
        patched = logits(handle, ids)
    assert torch.allclose(patched, logits(handle, ids), atol=ATOL)


def test_patching_a_whole_layer_gives_its_attention_output_on_the_source(arch):  # noqa: ANN001
    handle = tiny_handle(arch)
    base, source = random_ids(seed=1), random_ids(seed=2)
    layer = 1
    captured = {}
    hook = handle.out_proj(layer).register_forward_hook(lambda m, i, o: captured.setdefault("out", o.detach().clone()))
    try:
        logits(handle, source)
        on_source = captured.pop("out")
        heads = [(layer, h) for h in range(handle.n_heads)]
        with cortexmap.intervene(handle, patch=heads, source=source):
            logits(handle, base)
        patched = captured.pop("out")
    finally:
        hook.remove()
    assert torch.allclose(patched, on_source, atol=ATOL)


def test_patching_length_mismatch_is_a_clear_error():
    handle = tiny_handle("llama")
    with pytest.raises(cortexmap.CortexmapError, match="same length"):
        with cortexmap.intervene(handle, patch=["L0H0"], source=random_ids(seq=5)):
            logits(handle, random_ids(seq=7))


def test_mean_ablation_equals_folding_the_mean_into_the_output_bias(arch):  # noqa: ANN001
    handle = tiny_handle(arch)
    reference, ids = random_ids(batch=5, seed=3), random_ids()
    layer, head, d = 1, 2, handle.d_head
    means = mean_head_outputs(handle, reference, [layer])
    with cortexmap.intervene(handle, mean_ablate=[(layer, head)], reference=reference):
        hooked = logits(handle, ids)
    # Independent path: zero the head's weight slice and add W_slice @ mean to the projection's output.
    clone = scale_columns(handle, layer, head, 0.0)
    proj = handle.out_proj(layer)
    w = proj.weight[head * d:(head + 1) * d, :].T if handle.geometry.out_proj_is_conv1d else proj.weight[:, head * d:(head + 1) * d]
    shift = (w @ means[layer][0, 0, head]).detach()
    hook = clone.out_proj(layer).register_forward_hook(lambda m, i, o: o + shift)
    try:
        reference_logits = logits(clone, ids)
    finally:
        hook.remove()
    assert torch.allclose(hooked, reference_logits, atol=ATOL)


def test_resample_takes_another_prompts_activation():
    handle = tiny_handle("llama")
    reference = random_ids(batch=4, seed=5)
    layer = 2
    with cortexmap.intervene(handle, resample=[(layer, 1)], reference=reference, seed=3):
        edited = head_outputs(handle, reference, [layer])[layer]
    original = head_outputs(handle, reference, [layer])[layer]
    for row in range(4):  # each row carries some *other* row's head output
        matches = [torch.allclose(edited[row, :, 1], original[other, :, 1]) for other in range(4)]
        assert sum(matches) == 1 and not matches[row]


def test_gqa_intervening_one_query_head_leaves_its_group_unchanged():
    handle = tiny_handle("llama_gqa")  # 4 query heads, 2 KV heads: (0, 1) share KV head 0
    ids = random_ids()
    assert [handle.kv_head(h) for h in range(4)] == [0, 0, 1, 1]
    before = head_outputs(handle, ids, [1, 2])
    with cortexmap.intervene(handle, amplify={"L1H0": 3.0}):
        after = head_outputs(handle, ids, [1, 2])
    assert torch.equal(after[1][:, :, 1:], before[1][:, :, 1:])
    assert not torch.allclose(after[2], before[2])  # later layers do see the change


def test_kv_sharing_matches_the_models_own_attention():
    """Zeroing KV head 1's value projection changes exactly query heads 2 and 3 (independent check)."""
    handle = tiny_handle("llama_gqa")
    ids = random_ids()
    before = head_outputs(handle, ids, [0])[0]
    v_proj = handle.attention(0).v_proj
    d = handle.d_head
    with torch.no_grad():
        v_proj.weight[1 * d:2 * d] = 0
    after = head_outputs(handle, ids, [0])[0]
    changed = [not torch.allclose(after[:, :, h], before[:, :, h]) for h in range(4)]
    assert changed == [handle.kv_head(h) == 1 for h in range(4)]


def test_positions_restrict_the_edit():
    handle, ids = tiny_handle("llama"), random_ids()
    baseline = logits(handle, ids)
    with cortexmap.intervene(handle, ablate=["L0H1"], positions=[-1]):
        edited = logits(handle, ids)
    assert torch.allclose(edited[:, :-1], baseline[:, :-1], atol=ATOL)
    assert not torch.allclose(edited[:, -1], baseline[:, -1], atol=1e-4)


def test_interventions_compose_and_leave_no_hook_behind():
    handle, ids = tiny_handle("llama"), random_ids()
    proj = handle.out_proj(1)
    with cortexmap.intervene(handle, ablate=["L1H0"]):
        with cortexmap.intervene(handle, ablate=["L1H1"]):
            both = logits(handle, ids)
    with cortexmap.intervene(handle, ablate=["L1H0", "L1H1"]):
        together = logits(handle, ids)
    assert torch.allclose(both, together, atol=ATOL)
    with pytest.raises(RuntimeError):
        with cortexmap.intervene(handle, ablate=["L1H0"]):
            assert len(proj._forward_pre_hooks) == 1
            raise RuntimeError("boom")
    assert len(proj._forward_pre_hooks) == 0


def test_generate_under_intervention_runs_and_changes_output():
    handle = tiny_handle("llama")
    ids = random_ids(batch=1)
    plain = handle.model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    with cortexmap.intervene(handle, amplify={f"L{l}H{h}": 5.0 for l in range(3) for h in range(4)}):
        edited = handle.model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert edited.shape == plain.shape and not torch.equal(edited, plain)


def test_head_out_of_range_is_a_clear_error():
    handle = tiny_handle("gpt2")
    with pytest.raises(cortexmap.CortexmapError, match="L7H0 does not exist: tiny-gpt2 has 3 layers x 4 heads"):
        cortexmap.intervene(handle, ablate=["L7H0"])
