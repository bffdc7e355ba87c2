"""The fast sweep equals a plain loop of one hooked full forward pass per head (independent path)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import cortexmap
from cortexmap.interventions.context import derangement
from cortexmap.sweep.compute import attribution_matrix, clean_metrics, exact_matrix, prepare
from tests.tiny import tiny_handle


def make_batches(seed: int = 0):  # noqa: ANN201
    """Two equal-length buckets of random prompts with random target/foil ids and corrupt prompts."""
    g = torch.Generator().manual_seed(seed)
    out, start = [], 0
    for batch, seq in [(4, 6), (3, 8)]:
        ids = torch.randint(1, 97, (batch, seq), generator=g)
        out.append(SimpleNamespace(
            input_ids=ids, corrupt_ids=torch.randint(1, 97, (batch, seq), generator=g),
            target_ids=torch.randint(0, 97, (batch,), generator=g), foil_ids=torch.randint(0, 97, (batch,), generator=g),
            indices=list(range(start, start + batch))))
        start += batch
    return out


def metric_of(handle, batch, **kwargs):  # noqa: ANN001, ANN201
    with torch.no_grad(), cortexmap.intervene(handle, **kwargs):
        logits = handle.model(input_ids=batch.input_ids, use_cache=False).logits[:, -1]
    logits = logits.float()
    return (logits.gather(1, batch.target_ids[:, None]) - logits.gather(1, batch.foil_ids[:, None]))[:, 0].numpy()


def reference_matrix(handle, batches, kind, alpha=0.0):  # noqa: ANN001, ANN201
    n = sum(len(b.indices) for b in batches)
    ref = np.full((n, handle.n_layers * handle.n_heads), np.nan)
    means = None
    if kind == "mean":  # mean over every token of every prompt, computed with the public capture API
        zs = [cortexmap.head_outputs(handle, b.input_ids) for b in batches]
        count = sum(b.input_ids.numel() for b in batches)
        means = {l: sum(z[l].sum((0, 1), keepdim=True) for z in zs) / count for l in zs[0]}
    for b in batches:
        for head in handle.heads():
            col = head.layer * handle.n_heads + head.head
            if kind == "zero":
                ref[b.indices, col] = metric_of(handle, b, ablate=[head])
            elif kind == "amplify":
                ref[b.indices, col] = metric_of(handle, b, amplify={head: alpha})
            elif kind == "patch":
                ref[b.indices, col] = metric_of(handle, b, patch=[head], source=b.corrupt_ids)
            elif kind == "mean":
                ref[b.indices, col] = metric_of(handle, b, mean_ablate=[head], reference=means)
    return ref


@pytest.mark.parametrize("rows", [8, 1000])
@pytest.mark.parametrize("kind,alpha", [("zero", 0.0), ("amplify", 0.7), ("patch", 0.0), ("mean", 0.0)])
def test_exact_sweep_equals_one_hooked_forward_per_head(arch, kind, alpha, rows):  # noqa: ANN001
    """8 rows: passes of two heads, often of two layers; 1000 rows: every head of the model in one pass."""
    handle = tiny_handle(arch)
    batches = make_batches()
    prepared = prepare(handle, batches, need_corrupt=kind == "patch")
    fast = exact_matrix(handle, prepared, kind, alpha, rows_per_pass=rows)
    slow = reference_matrix(handle, batches, kind, alpha)
    assert np.allclose(fast, slow, atol=1e-5), np.abs(fast - slow).max()
    assert np.allclose(clean_metrics(prepared), reference_matrix(handle, batches, "amplify", 0.0)[:, 0], atol=1e-5)


@pytest.mark.parametrize("rows", [8, 1000])
@pytest.mark.parametrize("prefix", [1, 5])
def test_patching_reruns_only_past_the_shared_prefix_and_stays_exact(arch, prefix, rows):  # noqa: ANN001
    """Corrupt prompts that share their first tokens with the clean ones take the suffix-only path.

    1000 rows: every head of the model in one pass, rows joining at every layer, each layer's
    prefix keys and values tiled to the rows alive there."""
    handle = tiny_handle(arch)
    batches = make_batches(seed=3)
    for b in batches:  # corrupt = clean up to `prefix`, random after it
        b.corrupt_ids[:, :prefix] = b.input_ids[:, :prefix]
        b.corrupt_ids[:, prefix] = (b.input_ids[:, prefix] % 96) + 1
    prepared = prepare(handle, batches, need_corrupt=True)
    assert all(tb.suffix is not None and tb.suffix.prefix == prefix for tb in prepared)
    assert prepared[0].suffix.block_inputs[0].shape[1] == batches[0].input_ids.shape[1] - prefix
    fast = exact_matrix(handle, prepared, "patch", rows_per_pass=rows)
    slow = reference_matrix(handle, batches, "patch")
    assert np.allclose(fast, slow, atol=1e-5), np.abs(fast - slow).max()


def test_resample_uses_a_derangement_within_each_length_bucket():
    handle = tiny_handle("llama")
    batches = make_batches()
    prepared = prepare(handle, batches, need_corrupt=False)
    fast = exact_matrix(handle, prepared, "resample", seed=5)
    for b in batches:
        for layer in range(handle.n_layers):
            order = derangement(len(b.indices), 5 + layer)
            assert not (order == torch.arange(len(order))).any()
            for head in range(handle.n_heads):
                expected = metric_of(handle, b, patch=[(layer, head)], source=b.input_ids[order])
                assert np.allclose(fast[b.indices, layer * handle.n_heads + head], expected, atol=1e-5)


def test_restricting_heads_and_tiny_batches_give_the_same_numbers():
    handle = tiny_handle("gpt2")
    prepared = prepare(handle, make_batches(), need_corrupt=False)
    full = exact_matrix(handle, prepared, "zero", rows_per_pass=1000)
    part = exact_matrix(handle, prepared, "zero", rows_per_pass=1, heads=[(1, 2), (2, 0)])
    cols = [1 * 4 + 2, 2 * 4 + 0]
    assert np.allclose(part[:, cols], full[:, cols], atol=1e-6)
    assert np.isnan(np.delete(part, cols, axis=1)).all()


def test_attribution_is_exact_for_a_linear_last_layer_direction():
    """For amplification by a tiny alpha the first-order estimate must match the exact effect."""
    handle = tiny_handle("llama")
    prepared = prepare(handle, make_batches(), need_corrupt=False)
    alpha = 1e-3
    exact = exact_matrix(handle, prepared, "amplify", alpha)
    approx = attribution_matrix(handle, prepared, "amplify", alpha)
    clean = clean_metrics(prepared)[:, None]
    assert np.allclose(approx - clean, exact - clean, atol=1e-4, rtol=1e-2)
    rough = attribution_matrix(handle, prepared, "zero")
    assert np.isfinite(rough).all()


def test_patching_without_corrupt_prompts_is_a_clear_error():
    handle = tiny_handle("llama")
    batches = make_batches()
    for b in batches:
        b.corrupt_ids = None
    with pytest.raises(cortexmap.CortexmapError, match="corrupt prompts"):
        prepare(handle, batches, need_corrupt=True)


@pytest.mark.parametrize("kind", ["zero", "patch"])
def test_a_model_dispatched_by_accelerate_sweeps_like_the_plain_model(tmp_path, monkeypatch, kind):  # noqa: ANN001
    """``device="auto"`` shards with accelerate; its hooks must not change a number.

    A CPU has one device, so the shards here are CPU and disk offload: the same AlignDevicesHook
    machinery moves weights and activations between shards on several GPUs.
    """
    from cortexmap.models import load_model
    from tests.tiny import char_tokenizer, tiny_model

    monkeypatch.setenv("CORTEXMAP_CACHE", str(tmp_path / "cache"))
    tiny_model("llama_gqa").save_pretrained(tmp_path / "m")
    char_tokenizer().save_pretrained(tmp_path / "m")
    plain = load_model(str(tmp_path / "m"))
    placed = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
              "model.layers.1": "disk", "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "disk"}
    sharded = load_model(str(tmp_path / "m"), device_map=placed)
    assert sharded.device_map == placed and sharded.describe()["device_map"] == placed
    assert sharded.blocks()[1].self_attn.o_proj.weight.device.type == "meta"  # really offloaded
    batches = make_batches(seed=4)
    for b in batches:  # a shared prefix takes the suffix path with its KV cache copies
        b.corrupt_ids[:, :2] = b.input_ids[:, :2]
    expected = exact_matrix(plain, prepare(plain, batches, need_corrupt=kind == "patch"), kind, rows_per_pass=8)
    got = exact_matrix(sharded, prepare(sharded, batches, need_corrupt=kind == "patch"), kind, rows_per_pass=8)
    assert np.allclose(got, expected, atol=1e-5), np.abs(got - expected).max()
    assert np.allclose(got, reference_matrix(plain, batches, kind), atol=1e-5)

