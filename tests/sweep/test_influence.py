"""Influence measurements equal a plain computation with full hooked forward passes; the screen is layer-matched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import cortexmap
from cortexmap.errors import InterventionError
from cortexmap.interventions import head_outputs
from cortexmap.sweep.influence import condition_means, eager_attention, measure_influence, screen_sources
from tests.tiny import random_ids, tiny_handle


class _Tok:
    """Maps a prompt string of space-separated integers to ids (enough for the tests)."""

    def __call__(self, text, return_tensors=None):  # noqa: ANN001, ANN204
        return {"input_ids": torch.tensor([[int(t) for t in text.split()]])}


def _texts(ids: torch.Tensor) -> list[str]:
    return [" ".join(map(str, row.tolist())) for row in ids]


def _handle():  # noqa: ANN202
    handle = tiny_handle("llama")
    handle.tokenizer = _Tok()
    return handle


def _expected(handle, ids, intervention, target):  # noqa: ANN001, ANN202
    """Relative output change and attention KL of ``target`` under ``intervention``, by full hooked forwards."""
    with eager_attention(handle), torch.no_grad():
        clean = head_outputs(handle, ids)
        attn_clean = handle.model(input_ids=ids, output_attentions=True, use_cache=False).attentions
        with intervention:
            ablated = head_outputs(handle, ids)
            attn_ablated = handle.model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    z0, z1 = clean[target[0]][:, :, target[1]], ablated[target[0]][:, :, target[1]]
    change = ((z1 - z0).pow(2).sum((1, 2)).sqrt() / z0.pow(2).sum((1, 2)).sqrt()).numpy()
    p, q = attn_clean[target[0]][:, target[1]], attn_ablated[target[0]][:, target[1]]
    return change, (p * ((p + 1e-10).log() - (q + 1e-10).log())).sum(-1).mean(-1).numpy()


def _rows(table: pd.DataFrame, source, target) -> pd.DataFrame:  # noqa: ANN001
    return table[(table.source_layer == source[0]) & (table.source_head == source[1]) & (table.target_layer == target[0])
                 & (table.target_head == target[1])].sort_values("prompt")


def test_zero_influence_matches_full_forward_passes():
    handle = _handle()
    ids = random_ids(batch=3, seq=6)
    table = measure_influence(handle, {"x:easy": _texts(ids)}, sources=[(0, 1), (1, 3)], rows_per_pass=4, ablation="zero")
    assert set(table["source_layer"]) == {0, 1} and (table["target_layer"] > table["source_layer"]).all()
    assert set(table["ablation"]) == {"zero"} and set(table["n_tokens"]) == {6}
    change, kl = _expected(handle, ids, cortexmap.intervene(handle, ablate=[(0, 1)]), (2, 3))
    rows = _rows(table, (0, 1), (2, 3))
    assert np.allclose(rows["out_change"], change, atol=1e-5)
    assert np.allclose(rows["attn_kl"], kl, atol=1e-5)
    assert (rows["out_change"] > 0).all()


def test_mean_influence_replaces_the_head_by_its_mean_over_both_conditions():
    handle = _handle()
    easy, hard = random_ids(batch=2, seq=6, seed=1), random_ids(batch=2, seq=6, seed=2)
    prompts = {"x:easy": _texts(easy), "x:hard": _texts(hard)}
    table = measure_influence(handle, prompts, sources=[(0, 1)], rows_per_pass=4)
    assert set(table["ablation"]) == {"mean"}
    # the mean over every token of both conditions, computed independently
    with torch.no_grad():
        pooled = head_outputs(handle, torch.cat([easy, hard]))
    means = {layer: z.mean((0, 1), keepdim=True) for layer, z in pooled.items()}
    assert torch.allclose(condition_means(handle, prompts)[0], means[0], atol=1e-6)
    for condition, ids in (("x:easy", easy), ("x:hard", hard)):
        intervention = cortexmap.intervene(handle, mean_ablate=[(0, 1)], reference=means)
        change, kl = _expected(handle, ids, intervention, (1, 2))
        rows = _rows(table[table["condition"] == condition], (0, 1), (1, 2))
        assert np.allclose(rows["out_change"], change, atol=1e-5)
        assert np.allclose(rows["attn_kl"], kl, atol=1e-5)
        assert (rows["out_change"] > 0).all()


def test_prompt_index_is_the_position_in_the_condition_list():
    handle = _handle()
    long, short = random_ids(batch=1, seq=7, seed=3), random_ids(batch=1, seq=5, seed=4)
    texts = _texts(long) + _texts(short)  # the engine runs the shorter group first
    table = measure_influence(handle, {"x:a": texts}, sources=[(1, 0)], ablation="zero")
    assert table.groupby("prompt")["n_tokens"].first().to_dict() == {0: 7, 1: 5}


def test_unknown_ablation_is_refused():
    with pytest.raises(InterventionError, match="unknown ablation"):
        measure_influence(_handle(), {"x": ["1 2 3"]}, ablation="resample")


def test_screen_prefers_the_broad_strong_source():
    handle = _handle()
    texts = _texts(random_ids(batch=2, seq=5))
    table = measure_influence(handle, {"all": texts}, rows_per_pass=64)
    # Plant: make L1H2 dominate its layer by scaling its output weights, then it must top the screen.
    d = handle.d_head
    with torch.no_grad():
        handle.out_proj(1).weight[:, 2 * d:3 * d] *= 20
    planted = measure_influence(handle, {"all": texts}, rows_per_pass=64)
    assert screen_sources(planted, 1) == [(1, 2)]
    assert len(table) == len(planted)


def test_screen_compares_a_head_with_its_own_layer():
    """Layer-0 heads move every later head 3x more by position alone; L2H1 stands out in its own layer only."""
    rng = np.random.default_rng(0)
    rows = []
    for sl in range(4):
        for sh in range(4):
            for tl in range(sl + 1, 5):
                for th in range(4):
                    level = (3.0 if sl == 0 else 1.0) * (2.0 if (sl, sh) == (2, 1) else 1.0)
                    rows.append((sl, sh, tl, th, level * rng.uniform(0.9, 1.1)))
    table = pd.DataFrame(rows, columns=["source_layer", "source_head", "target_layer", "target_head", "out_change"])
    table = table.assign(condition="all", prompt=0, attn_kl=0.0)
    assert screen_sources(table, 1) == [(2, 1)]
    # against every head at once (the old screen), a layer-0 head would come first
    pooled = table.groupby(["source_layer", "source_head"])["out_change"].mean()
    assert pooled.idxmax()[0] == 0
