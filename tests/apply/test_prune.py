"""Physical pruning equals ablation, after a round trip through disk, with the expected parameter savings."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import cortexmap
from cortexmap.apply import attention_params, load_pruned, prune_heads, pruning_result, save_pruned
from cortexmap.interventions import mean_head_outputs
from tests.tiny import random_ids, tiny_handle

ATOL = 1e-4
# Layer 1 loses every head; layer 2 a whole GQA group (heads 0, 1); layer 0 one head (uneven groups).
HEADS = ["L0H1", "L1H0", "L1H1", "L1H2", "L1H3", "L2H0", "L2H1"]


def logits(model, ids):  # noqa: ANN001, ANN201
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def expected_removed(handle, heads, replace: str) -> tuple[int, int]:  # noqa: ANN001
    """Parameters and KV heads pruning should remove, from the unpruned modules' shapes."""
    hidden, d, n, n_kv = handle.model.config.hidden_size, handle.d_head, handle.n_heads, handle.n_kv_heads
    by_layer: dict[int, set[int]] = {}
    for name in heads:
        head = cortexmap.HeadId.parse(name)
        by_layer.setdefault(head.layer, set()).add(head.head)
    params = kv_removed = 0
    for layer, pruned in by_layer.items():
        attn = handle.attention(layer)
        fused = getattr(attn, "c_attn", None) or getattr(attn, "query_key_value", None)
        has_q_bias = (fused if fused is not None else attn.q_proj).bias is not None
        has_kv_bias = (fused if fused is not None else attn.k_proj).bias is not None
        params += len(pruned) * (d * hidden + (d if has_q_bias else 0) + hidden * d)  # query rows, out columns
        group = n // n_kv
        gone_kv = [j for j in range(n_kv) if all(h in pruned for h in range(j * group, (j + 1) * group))]
        kv_removed += len(gone_kv)
        params += len(gone_kv) * 2 * (d * hidden + (d if has_kv_bias else 0))
        if len(pruned) == n:  # q/k norms (Gemma) go with the last head
            params += sum(p.numel() for name, p in attn.named_parameters() if "norm" in name)
        if replace == "mean" and handle.out_proj(layer).bias is None:
            params -= hidden
    return params, kv_removed


@pytest.mark.parametrize("replace", ["zero", "mean"])
def test_pruned_model_reloaded_from_disk_equals_ablation(arch, replace, tmp_path):  # noqa: ANN001
    handle, ids = tiny_handle(arch), random_ids()
    reference = random_ids(batch=4, seq=9, seed=7)
    before = {name: p.clone() for name, p in handle.model.named_parameters()}
    pruned = prune_heads(handle, HEADS, replace=replace, reference=reference if replace == "mean" else None)
    kwargs = {"ablate": HEADS} if replace == "zero" else {"mean_ablate": HEADS, "reference": reference}
    with cortexmap.intervene(handle, **kwargs):
        ablated = logits(handle.model, ids)
    assert not torch.allclose(ablated, logits(handle.model, ids), atol=1e-3)  # the heads mattered

    path = save_pruned(pruned, tmp_path / f"{arch}-{replace}")
    ours = load_pruned(path)
    plain = tf.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    for model in (pruned.model, ours.model, plain):
        assert torch.allclose(logits(model, ids), ablated, atol=ATOL)

    params, kv_removed = expected_removed(handle, HEADS, replace)
    n_plain = sum(p.numel() for p in plain.parameters())
    assert handle.n_params - ours.n_params == handle.n_params - n_plain == params
    result = pruning_result(ours)
    assert result.total_params_removed == params and result.kv_heads_removed == kv_removed
    assert result.attn_params_removed == attention_params(handle) - attention_params(ours) == params
    assert result.empty_layers == (1,)
    assert bool(result.bias_added_layers) == (replace == "mean" and handle.out_proj(0).bias is None)
    assert all(torch.equal(p, before[name]) for name, p in handle.model.named_parameters())  # input untouched


def test_gqa_keeps_a_kv_head_while_any_query_head_uses_it():
    handle = tiny_handle("llama_gqa")  # 4 query heads, KV groups (0, 1) and (2, 3)
    assert pruning_result(prune_heads(handle, ["L0H0", "L0H2"])).kv_heads_removed == 0
    assert pruning_result(prune_heads(handle, ["L0H0", "L0H1"])).kv_heads_removed == 1
    assert pruning_result(prune_heads(handle, ["L0H0", "L0H1", "L0H2"])).kv_heads_removed == 1


def test_uneven_groups_of_four_are_served_by_pairs(tmp_path):  # noqa: ANN001
    """8 query heads on 2 KV heads; pruning 2 of group 0 leaves groups of 2 and 4: KV heads gathered in pairs."""
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=8,
                            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    handle = cortexmap.wrap_model(tf.AutoModelForCausalLM.from_config(config), spec="tiny-gqa4")
    ids, heads = random_ids(), ["L0H0", "L0H1", "L1H5"]
    pruned = prune_heads(handle, heads)
    layout = pruned.model.config.cortexmap_pruning
    assert layout["modules"]["model.layers.0.self_attn.k_proj"]["index"] == [0, 1, 1]
    assert layout["attributes"]["model.layers.0.self_attn"]["num_key_value_groups"] == 2
    with cortexmap.intervene(handle, ablate=heads):
        ablated = logits(handle.model, ids)
    reloaded = load_pruned(save_pruned(pruned, tmp_path / "gqa4"))
    assert torch.allclose(logits(reloaded.model, ids), ablated, atol=ATOL)
    assert handle.n_params - reloaded.n_params == expected_removed(handle, heads, "zero")[0]


def test_cached_generation_of_a_pruned_model_equals_ablated_generation(arch):  # noqa: ANN001
    handle, ids = tiny_handle(arch), random_ids(batch=1)
    heads = ["L0H0", "L0H1", "L0H2", "L0H3", "L2H1"]  # layer 0 empty: the cache length must still count
    pruned = prune_heads(handle, heads)
    with cortexmap.intervene(handle, ablate=heads):
        expected = handle.model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(pruned.model.generate(input_ids=ids, max_new_tokens=6, do_sample=False), expected)


def test_mean_replacement_accepts_precomputed_means():
    handle, ids = tiny_handle("llama"), random_ids()
    reference = random_ids(batch=4, seed=7)
    means = mean_head_outputs(handle, reference)
    a = prune_heads(handle, ["L1H2"], replace="mean", reference=means)
    b = prune_heads(handle, ["L1H2"], replace="mean", reference=reference)
    assert torch.allclose(logits(a.model, ids), logits(b.model, ids), atol=1e-6)


def test_bad_requests_are_clear_errors(tmp_path):  # noqa: ANN001
    handle = tiny_handle("llama")
    with pytest.raises(cortexmap.CortexmapError, match="needs reference"):
        prune_heads(handle, ["L0H0"], replace="mean")
    with pytest.raises(cortexmap.CortexmapError, match="unknown replacement"):
        prune_heads(handle, ["L0H0"], replace="resample")
    with pytest.raises(cortexmap.CortexmapError, match="L9H0 does not exist"):
        prune_heads(handle, ["L9H0"])
    with pytest.raises(cortexmap.CortexmapError, match="already pruned"):
        prune_heads(prune_heads(handle, ["L0H0"]), ["L0H1"])
    with pytest.raises(cortexmap.CortexmapError, match="not pruned"):
        save_pruned(handle, tmp_path / "x")
    with pytest.raises(cortexmap.CortexmapError, match="not a pruned model directory"):
        load_pruned(tmp_path)
