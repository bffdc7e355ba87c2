"""Evidence statistics against independent computations on tiny random models of every architecture.

The independent paths share none of evidence.py's machinery: attention comes from explicit loops
over the model's own ``output_attentions``; a head's write is the output projection's output minus
its output with that head's slice zeroed; norms are frozen by their textbook formulas per class;
"attention forced onto a key" is done by wrapping the modeling module's own eager attention
function so that one query's output becomes the value vector at the key (no mask, no appended
positions), one forward pass per forced query.
"""

from __future__ import annotations

import importlib

import copy
import sys

import numpy as np
import pandas.testing as pd_testing
import pytest
import torch

from cortexmap.errors import UnsupportedArchitectureError
from cortexmap.models import wrap_model
from cortexmap.sweep.evidence import (
    EVIDENCE_COLUMNS,
    _in_top,
    copy_scores,
    evidence_rows,
    freeze_norm,
    induction_keys,
    measure_evidence,
    prompt_evidence,
    succession_scores,
)
from cortexmap.tasks.core import Pair, Task
from cortexmap.tasks.probes import ProbeBatch
from tests.tiny import char_tokenizer, random_ids, tiny_handle, tiny_model


# ---------------------------------------------------------------- independent machinery


def _frozen(module, clean: torch.Tensor):  # noqa: ANN001, ANN202
    """Textbook frozen-scale norm: ``(lin(c), bias)`` with the scale of ``clean [rows, d]``."""
    name = type(module).__name__
    x = clean.double()
    eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps")
    if isinstance(module, torch.nn.LayerNorm):
        scale = 1.0 / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
        weight, bias = module.weight.detach().double(), module.bias.detach().double()
        return (lambda c: (c - c.mean(-1, keepdim=True)) * scale * weight), bias
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    weight = module.weight.detach().double()
    gain = 1.0 + weight if "Gemma" in name else weight
    return (lambda c: c * scale * gain), torch.zeros_like(gain)


def _sandwich(handle) -> bool:  # noqa: ANN001
    return handle.geometry.block is not None and handle.geometry.block.residual == "sandwich"


def _capture(handle, ids, patch=None):  # noqa: ANN001, ANN202
    """A forward pass recording out_proj inputs, final-norm input and post-attention-norm inputs."""
    found = {"z": {}, "post": {}}
    hooks = []

    def grab(store, key):  # noqa: ANN001, ANN202
        def pre(module, args, kwargs):  # noqa: ANN001, ANN202
            store[key] = (args[0] if args else next(iter(kwargs.values()))).detach().double()
        return pre

    for layer in range(handle.n_layers):
        hooks.append(handle.out_proj(layer).register_forward_pre_hook(grab(found["z"], layer), with_kwargs=True))
        if _sandwich(handle):
            norm = handle.blocks()[layer].post_attention_layernorm
            hooks.append(norm.register_forward_pre_hook(grab(found["post"], layer), with_kwargs=True))
    hooks.append(handle.final_modules()[0].register_forward_pre_hook(grab(found, "final"), with_kwargs=True))
    try:
        with torch.no_grad():
            out = handle.model(input_ids=ids, use_cache=False, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    found["logits"] = out.logits.double()
    found["attn"] = [a.double() for a in out.attentions]
    return found


def _writes(handle, layer: int, flat: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """``flat [rows, n_heads * d_head]`` -> each head's write ``[rows, n_heads, d]`` by zeroing its slice."""
    module = copy.deepcopy(handle.out_proj(layer)).double()
    with torch.no_grad():
        full = module(flat)
        out = []
        for h in range(handle.n_heads):
            cut = flat.clone()
            cut[:, h * handle.d_head:(h + 1) * handle.d_head] = 0
            out.append(full - module(cut))
    return torch.stack(out, 1)


def _head_logit_diffs(handle, clean, forced_z, rows, pos, direction):  # noqa: ANN001, ANN202
    """``[rows, L, H]``: direction . (frozen final norm of the write), norms frozen at the clean run's ``pos``."""
    final_lin, _ = _frozen(handle.final_modules()[0], clean["final"][rows, pos])
    out = []
    for layer in range(handle.n_layers):
        z = forced_z[layer][rows, pos].reshape(len(rows), -1)
        write = _writes(handle, layer, z)  # [rows, H, d]
        if _sandwich(handle):
            post_lin, _ = _frozen(handle.blocks()[layer].post_attention_layernorm, clean["post"][layer][rows, pos])
            write = post_lin(write.transpose(0, 1)).transpose(0, 1)
        out.append((final_lin(write.transpose(0, 1)).transpose(0, 1) * direction[:, None]).sum(-1))
    return torch.stack(out, 1)


def _forced_run(handle, ids, query: list[int], key: list[int], monkeypatch):  # noqa: ANN001, ANN202
    """Rerun with query ``query[b]`` of each row attending to ``key[b]`` only: its output is the value there."""
    module = sys.modules[type(handle.attention(0)).__module__]
    original = module.eager_attention_forward

    def forced(attn, q, k, v, mask, **kwargs):  # noqa: ANN001, ANN202
        out, weights = original(attn, q, k, v, mask, **kwargs)  # out [b, seq, H, d_head]
        values = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)  # [b, H, seq, d_head], repeat_kv order
        out = out.clone()
        for b in range(out.shape[0]):
            out[b, query[b]] = values[b, :, key[b]]
        return out, weights

    monkeypatch.setattr(module, "eager_attention_forward", forced)
    try:
        return _capture(handle, ids)
    finally:
        monkeypatch.setattr(module, "eager_attention_forward", original)


def _direction(handle, target, foil):  # noqa: ANN001, ANN202
    weight = handle.final_modules()[-1].weight.detach().double()
    return weight[target] - weight[foil]


# ---------------------------------------------------------------- task statistics


@pytest.fixture
def batch():  # noqa: ANN201
    ids = random_ids(4, 10, seed=5)
    target, foil = ids[:, 2].clone(), ids[:, 5].clone()
    row3 = ids[3, :9]
    row3[row3 == 96] = 95
    target[3] = ids[3, 9] = 96  # row 3: the target only at the last position -> no ov_target
    cue = torch.zeros(4, 10, dtype=torch.bool)
    cue[:, 1] = True
    cue[1, 6] = True
    cue[2] = False  # row 2 has no cue
    return ids, target, foil, cue


def test_attention_stats_equal_output_attentions(arch, batch):  # noqa: ANN001
    handle = tiny_handle(arch)
    ids, target, foil, cue = batch
    found = prompt_evidence(handle, ids, target, foil, cue)
    clean = _capture(handle, ids)
    b, seq = ids.shape
    expected = {name: np.zeros((b, handle.n_layers, handle.n_heads)) for name in ("attn_target", "attn_foil", "attn_cue")}
    for layer, pattern in enumerate(clean["attn"]):
        for row in range(b):
            for p in range(seq):
                a = pattern[row, :, seq - 1, p].numpy()
                expected["attn_target"][row, layer] += a * (int(ids[row, p]) == int(target[row]))
                expected["attn_foil"][row, layer] += a * (int(ids[row, p]) == int(foil[row]))
                expected["attn_cue"][row, layer] += a * bool(cue[row, p])
    for name, values in expected.items():
        np.testing.assert_allclose(found[name][0], values, atol=1e-6)
    np.testing.assert_allclose(found["attn_target_minus_foil"][0], expected["attn_target"] - expected["attn_foil"], atol=1e-6)
    assert found["attn_cue"][1].tolist() == [True, True, False, True]
    assert found["attn_target"][1].all() and found["attn_foil"][1].all()


def test_dla_equals_removing_the_head_and_reconstructs_the_logit_difference(arch, batch):  # noqa: ANN001
    handle = tiny_handle(arch)
    ids, target, foil, _ = batch
    found = prompt_evidence(handle, ids, target, foil)
    clean = _capture(handle, ids)
    rows = torch.arange(len(ids))
    last = torch.full((len(ids),), ids.shape[1] - 1)
    direction = _direction(handle, target, foil)
    x = clean["final"][rows, last]
    final_lin, final_bias = _frozen(handle.final_modules()[0], x)
    independent = np.zeros_like(found["dla"][0])
    total_writes = torch.zeros_like(x)
    for layer in range(handle.n_layers):
        write = _writes(handle, layer, clean["z"][layer][rows, last].reshape(len(ids), -1))  # [b, H, d]
        if _sandwich(handle):
            post_lin, _ = _frozen(handle.blocks()[layer].post_attention_layernorm, clean["post"][layer][rows, last])
            write = post_lin(write.transpose(0, 1)).transpose(0, 1)
        for h in range(handle.n_heads):
            # the logit difference with the head's write removed from the final residual, scale frozen
            with_head = final_lin(x) + final_bias
            without = final_lin(x - write[:, h]) + final_bias
            independent[:, layer, h] = ((with_head - without) * direction).sum(-1).numpy()
        total_writes += write.sum(1)
    np.testing.assert_allclose(found["dla"][0], independent, rtol=1e-4, atol=1e-5)
    logits = clean["logits"][:, -1]
    model_diff = (logits[rows, target] - logits[rows, foil]).numpy()
    np.testing.assert_allclose(found["clean"][0], model_diff, rtol=1e-4, atol=1e-5)
    rest = ((final_lin(x - total_writes) + final_bias) * direction).sum(-1).numpy()  # embeddings, MLPs, biases
    np.testing.assert_allclose(found["dla"][0].sum((1, 2)) + rest, model_diff, rtol=1e-4, atol=1e-4)


def test_ov_target_equals_attention_forced_onto_the_target(arch, batch, monkeypatch):  # noqa: ANN001
    handle = tiny_handle(arch)
    ids, target, foil, _ = batch
    found = prompt_evidence(handle, ids, target, foil)
    values, counted = found["ov_target"]
    seq = ids.shape[1]
    keys = []
    for row in range(len(ids)):
        before = [p for p in range(seq - 1) if int(ids[row, p]) == int(target[row])]
        keys.append(before[-1] if before else 0)
    assert counted.tolist() == [True, True, True, False]
    clean = _capture(handle, ids)
    forced = _forced_run(handle, ids, [seq - 1] * len(ids), keys, monkeypatch)
    rows = torch.arange(len(ids))
    independent = _head_logit_diffs(handle, clean, forced["z"], rows, torch.full((len(ids),), seq - 1),
                                    _direction(handle, target, foil))
    np.testing.assert_allclose(values[counted], independent.numpy()[counted], rtol=1e-4, atol=1e-5)
    # the forced run changed what the heads write at the last position (the comparison is not vacuous)
    assert not np.allclose(found["dla"][0][counted], independent.numpy()[counted], atol=1e-3)


# ---------------------------------------------------------------- probe statistics


def _repeated(seed: int = 3, n: int = 2, length: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        body = (torch.randperm(90, generator=g)[:length] + 1).tolist()
        rows.append([0] + body + body)
    return torch.tensor(rows)


def test_induction_keys_follow_the_probe_definition():
    ids = torch.tensor([[9, 1, 2, 3, 1, 2, 3]])
    # query 4 (token 1, seen at 1) -> key 2; query 5 (token 2, seen at 2) -> key 3; query 6 -> key 4
    assert induction_keys(ids) == [[(4, 2), (5, 3), (6, 4)]]


def test_copy_score_equals_forced_attention_top5(arch, monkeypatch):  # noqa: ANN001
    handle = tiny_handle(arch)
    ids = _repeated()
    values, counted = copy_scores(handle, ProbeBatch(ids), keys_per_prompt=100)
    assert counted.all()
    clean = _capture(handle, ids)
    weight = handle.final_modules()[-1].weight.detach().double()
    expected = np.zeros_like(values)
    pairs = induction_keys(ids)
    for row, found_pairs in enumerate(pairs):
        hits = []
        for query, key in found_pairs:
            forced = _forced_run(handle, ids[row:row + 1], [query], [key], monkeypatch)
            ref = {"final": clean["final"][row:row + 1], "post": {l: v[row:row + 1] for l, v in clean["post"].items()}}
            final_lin, _ = _frozen(handle.final_modules()[0], ref["final"][:, query])
            hit = np.zeros((handle.n_layers, handle.n_heads))
            for layer in range(handle.n_layers):
                write = _writes(handle, layer, forced["z"][layer][:, query].reshape(1, -1))[0]  # [H, d]
                if _sandwich(handle):
                    post_lin, _ = _frozen(handle.blocks()[layer].post_attention_layernorm, ref["post"][layer][:, query])
                    write = post_lin(write)
                logits = final_lin(write) @ weight.T  # [H, vocab]
                top = logits.topk(5, dim=-1).indices
                hit[layer] = (top == int(ids[row, key])).any(-1).numpy()
            hits.append(hit)
        expected[row] = np.mean(hits, axis=0)
    np.testing.assert_allclose(values, expected)


def test_succession_equals_forced_attention_ranking(arch, monkeypatch):  # noqa: ANN001
    handle = tiny_handle(arch)
    ids = _repeated(seed=4)
    members = torch.tensor([[1, 3, 5, 7], [2, 4, 6, 8]])
    values, counted = succession_scores(handle, ProbeBatch(ids, members))
    assert counted.all()
    clean = _capture(handle, ids)
    weight = handle.final_modules()[-1].weight.detach().double()
    expected = np.zeros_like(values)
    for row in range(len(ids)):
        tokens = ids[row, members[row]]
        wins = []
        for i in range(members.shape[1] - 1):
            query, key = int(members[row, i + 1]), int(members[row, i])
            forced = _forced_run(handle, ids[row:row + 1], [query], [key], monkeypatch)
            final_lin, _ = _frozen(handle.final_modules()[0], clean["final"][row:row + 1, query])
            win = np.zeros((handle.n_layers, handle.n_heads))
            for layer in range(handle.n_layers):
                write = _writes(handle, layer, forced["z"][layer][:, query].reshape(1, -1))[0]
                if _sandwich(handle):
                    post_lin, _ = _frozen(handle.blocks()[layer].post_attention_layernorm,
                                          clean["post"][layer][row:row + 1, query])
                    write = post_lin(write)
                logits = final_lin(write) @ weight[tokens].T  # [H, members]
                win[layer] = (logits.argmax(-1) == i + 1).numpy()
            wins.append(win)
        expected[row] = np.mean(wins, axis=0)
    np.testing.assert_allclose(values, expected)


def test_staged_top_k_equals_full_ranking():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(500, 16, generator=g)
    tokens = torch.randint(0, 500, (300,), generator=g)
    vectors = torch.randn(300, 16, generator=g)
    vectors[:100] = weight[tokens[:100]] * 3  # vectors pointing at their token: mostly in the top
    full = (vectors @ weight.T).topk(5, dim=-1).indices
    expected = (full == tokens[:, None]).any(-1)
    got = _in_top(vectors, tokens, weight, 5, seed=1, chunks=(32, 64))
    assert got.tolist() == expected.tolist()
    assert 0 < int(expected.sum()) < 300


# ---------------------------------------------------------------- norms, rows, the table


class _Square(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x * self.weight


def test_freeze_norm_reads_layernorm_and_refuses_other_modules():
    norm = torch.nn.LayerNorm(8)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(5, 8)
    frozen = freeze_norm(norm, x)
    np.testing.assert_allclose((frozen.apply(x) + frozen.bias).numpy(), norm(x).detach().numpy(), atol=1e-5)
    c = torch.randn(5, 8)
    lin, _ = _frozen(norm, x)
    np.testing.assert_allclose(frozen.apply(c).numpy(), lin(c.double()).numpy(), atol=1e-5)
    with pytest.raises(UnsupportedArchitectureError):
        freeze_norm(_Square(), x)


def test_evidence_rows_summarise_counted_prompts():
    values = np.random.default_rng(0).normal(size=(6, 2, 3))
    counted = np.array([True, True, False, True, True, True])
    table = evidence_rows("m", "task", "t", {"x": (values, counted), "y": (values, np.zeros(6, dtype=bool))})
    assert list(table.columns) == EVIDENCE_COLUMNS and len(table) == 12
    x = table[table["stat"] == "x"].sort_values(["layer", "head"])
    np.testing.assert_allclose(x["value"], values[counted].reshape(5, -1).mean(0))
    assert (x["n"] == 5).all() and (x["ci_low"] <= x["value"]).all() and (x["value"] <= x["ci_high"]).all()
    y = table[table["stat"] == "y"]
    assert (y["n"] == 0).all() and y["value"].isna().all()


def test_measure_evidence_normalises_by_the_task_margin():
    handle = wrap_model(tiny_model("llama"), char_tokenizer(), spec="tiny-llama-chars")
    prompts = ["abcdab", "bcdebc", "cdefcd", "defgde", "efghef", "abcab", "bcdbc"]
    pairs = [Pair(p, p[2], "z", cue=(p[:2],)) for p in prompts]
    pairs[3] = Pair(prompts[3], prompts[3][2], "z")  # a pair without a cue is left out of attn_cue
    task = Task("toy", "custom", "toy task", pairs)
    table = measure_evidence(handle, [task], probes=(), batch_size=4)
    assert list(table.columns) == EVIDENCE_COLUMNS
    assert set(table["stat"]) == {"attn_target", "attn_foil", "attn_target_minus_foil", "attn_cue", "dla", "ov_target"}
    by = {stat: rows.sort_values(["layer", "head"]) for stat, rows in table.groupby("stat")}
    assert (by["attn_foil"]["n"] == 0).all() and (by["attn_cue"]["n"] == 6).all() and (by["ov_target"]["n"] == 7).all()
    # the independent path: per-prompt values from prompt_evidence, one prompt at a time, cues by hand
    tok = handle.tokenizer
    dla, clean, cue = [], [], []
    for p in prompts:
        ids = torch.tensor([tok(p)["input_ids"]])
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[0, p.rfind(p[:2]):p.rfind(p[:2]) + 2] = True  # one character per token
        found = prompt_evidence(handle, ids, torch.tensor([tok(p[2])["input_ids"][0]]),
                                torch.tensor([tok("z")["input_ids"][0]]), mask)
        dla.append(found["dla"][0][0].reshape(-1))
        clean.append(found["clean"][0][0])
        cue.append(found["attn_cue"][0][0].reshape(-1))
    np.testing.assert_allclose(by["dla"]["value"], np.mean(dla, 0) / abs(np.mean(clean)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(by["attn_cue"]["value"], np.mean([c for i, c in enumerate(cue) if i != 3], 0), atol=1e-6)
    assert table["model"].eq("tiny-llama-chars").all()


def test_local_backend_evidence_is_measure_evidence():
    from cortexmap.sweep.backends import LocalBackend
    from cortexmap.sweep.config import SweepConfig

    handle = wrap_model(tiny_model("gpt2"), char_tokenizer(), spec="tiny-gpt2-chars")
    task = Task("toy", "custom", "toy task", [Pair(p, p[1], "z", cue=(p[0],)) for p in ["abcab", "bcdbc", "cdecd"]])
    backend = LocalBackend(SweepConfig(model="tiny-gpt2-chars", seed=3), handle)
    got = backend.evidence([task], probes=False)
    pd_testing.assert_frame_equal(got, measure_evidence(handle, [task], probes=(), seed=3))


def test_the_roles_catalogue_reads_these_statistics():
    roles = importlib.import_module("cortexmap.analysis.roles")  # the package exports a function of that name
    from cortexmap.sweep import evidence

    assert roles.TASK_STATS == evidence.TASK_STATS
    assert {probe: stat for stat, probe in roles.PROBE_STATS.items()} == evidence.PROBE_STATS
    assert tuple(roles.EVIDENCE_TABLE_COLUMNS) == tuple(c for c in EVIDENCE_COLUMNS if c not in ("model", "head_id"))
    read = {r.statistic for r in roles.CATALOGUE if not r.statistic.startswith("attention:") and r.statistic != "effect"}
    assert read <= set(evidence.TASK_STATS) | set(evidence.PROBE_STATS.values())
