"""Influence measurements equal a plain computation with full hooked forward passes."""

from __future__ import annotations

import numpy as np
import torch

import cortexmap
from cortexmap.interventions import head_outputs
from cortexmap.sweep.influence import eager_attention, measure_influence, screen_sources
from tests.tiny import random_ids, tiny_handle


class _Tok:
    """Maps a prompt string of space-separated integers to ids (enough for the tests)."""

    def __call__(self, text, return_tensors=None):  # noqa: ANN001, ANN204
        return {"input_ids": torch.tensor([[int(t) for t in text.split()]])}


def test_influence_matches_full_forward_passes(arch="llama"):  # noqa: ANN001
    handle = tiny_handle("llama")
    handle.tokenizer = _Tok()
    ids = random_ids(batch=3, seq=6)
    prompts = {"x:easy": [" ".join(map(str, row.tolist())) for row in ids]}
    table = measure_influence(handle, prompts, sources=[(0, 1), (1, 3)], rows_per_pass=4)
    assert set(table["source_layer"]) == {0, 1} and (table["target_layer"] > table["source_layer"]).all()
    with eager_attention(handle), torch.no_grad():
        clean = head_outputs(handle, ids)
        with cortexmap.intervene(handle, ablate=[(0, 1)]):
            ablated = head_outputs(handle, ids)
            attn_ablated = handle.model(input_ids=ids, output_attentions=True, use_cache=False).attentions
        attn_clean = handle.model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    target = (2, 3)
    z0, z1 = clean[target[0]][:, :, target[1]], ablated[target[0]][:, :, target[1]]
    expected = ((z1 - z0).pow(2).sum((1, 2)).sqrt() / z0.pow(2).sum((1, 2)).sqrt()).numpy()
    p, q = attn_clean[target[0]][:, target[1]], attn_ablated[target[0]][:, target[1]]
    expected_kl = (p * ((p + 1e-10).log() - (q + 1e-10).log())).sum(-1).mean(-1).numpy()
    rows = table[(table.source_layer == 0) & (table.source_head == 1) & (table.target_layer == 2)
                 & (table.target_head == 3)].sort_values("prompt")
    assert np.allclose(rows["out_change"], expected, atol=1e-5)
    assert np.allclose(rows["attn_kl"], expected_kl, atol=1e-5)
    assert (rows["out_change"] > 0).all()


def test_screen_prefers_the_broad_strong_source():
    handle = tiny_handle("llama")
    handle.tokenizer = _Tok()
    ids = random_ids(batch=2, seq=5)
    table = measure_influence(handle, {"all": [" ".join(map(str, r.tolist())) for r in ids]}, rows_per_pass=64)
    # Plant: make L0H2 dominate by scaling its output weights, then it must top the screen.
    d = handle.d_head
    with torch.no_grad():
        handle.out_proj(0).weight[:, 2 * d:3 * d] *= 20
    planted = measure_influence(handle, {"all": [" ".join(map(str, r.tolist())) for r in ids]}, rows_per_pass=64)
    assert screen_sources(planted, 1) == [(0, 2)]
    assert len(table) == len(planted)
