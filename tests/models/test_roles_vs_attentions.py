"""Roles and their evidence on SmolLM2 against computations from HF's own attention weights.

The independent paths: one eager forward pass with ``output_attentions=True`` and scores written
as plain loops over positions (none of cortexmap's probe or evidence code); the probe-attention
roles recomputed from those scores with the catalogue's outlier rule written out; a head's OV
output with its attention forced onto a key by wrapping the modeling module's eager attention
(:mod:`tests.sweep.test_evidence`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from cortexmap.analysis.roles import roles
from cortexmap.analysis.view import build_view
from cortexmap.sweep.evidence import prompt_evidence
from cortexmap.tasks import build_task, encode_task
from cortexmap.tasks.probes import repeated_random_tokens, run_probes
from tests.sweep.test_evidence import _capture, _direction, _forced_run, _head_logit_diffs

RUN_SMALL = Path(__file__).parents[1] / "data" / "run_small"
N, LENGTH, SEED = 6, 20, 11


def _independent_scores(model, ids: torch.Tensor, prefix: int) -> dict[str, np.ndarray]:
    """``{probe: [n_prompts, n_layers, n_heads]}`` scores from ``output_attentions`` by explicit loops."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation(previous)
    seq = ids.shape[1]
    shape = (ids.shape[0], len(attentions), attentions[0].shape[1])
    prev, induction = np.zeros(shape), np.zeros(shape)
    for layer, pattern in enumerate(attentions):
        a = pattern.double().numpy()  # [n, heads, q, k]
        for b in range(ids.shape[0]):
            # previous token: every query q >= 2 attends to q - 1 (key 0 is left to the sink probe)
            prev[b, layer] = np.mean([a[b, :, q, q - 1] for q in range(2, seq)], axis=0)
            # induction: a query in the second copy attends to the token after its first occurrence
            induction[b, layer] = np.mean([a[b, :, q, q - LENGTH + 1] for q in range(prefix + LENGTH, seq)], axis=0)
    return {"previous_token": prev, "induction": induction}


@pytest.mark.slow
def test_probe_roles_agree_with_output_attentions(smollm2):
    patterns = run_probes(smollm2, probes=["previous_token", "induction"], n=N, seed=SEED)
    ids = repeated_random_tokens(smollm2.tokenizer, N, length=LENGTH, seed=SEED).input_ids
    independent = _independent_scores(smollm2.model, ids, ids.shape[1] - 2 * LENGTH)
    effects = pd.read_parquet(RUN_SMALL / "effects.parquet")
    view = build_view(effects, (smollm2.n_layers, smollm2.n_heads), n_boot=20, tables={"patterns": patterns})
    record = roles(view)

    for probe, per_prompt in independent.items():
        scores = per_prompt.mean(0).reshape(-1)
        ours = patterns[patterns["probe"] == probe].sort_values(["layer", "head"])
        np.testing.assert_allclose(ours["score"].to_numpy(), scores, atol=1e-4)
    # the previous-token role: the familywise outlier rule, written out on the independent scores
    scores = independent["previous_token"].mean(0).reshape(-1)
    median = np.median(scores)
    bar = max(0.5, median + norm.isf(0.05 / len(scores)) * 1.4826 * np.median(np.abs(scores - median)))
    ci_low = patterns[patterns["probe"] == "previous_token"].sort_values(["layer", "head"])["ci_low"].to_numpy()
    clear = (scores > bar) & (ci_low > median)
    expected = {f"L{flat // smollm2.n_heads}H{flat % smollm2.n_heads}" for flat in np.flatnonzero(clear)}
    named = set(record.calls.loc[record.calls["role"] == "previous_token", "head_id"])
    assert named == expected and named
    best = int(np.argmax(scores))
    assert f"L{best // smollm2.n_heads}H{best % smollm2.n_heads}" in named
    # induction needs its copy evidence: without an evidence table it is not evaluated, not failed
    status = record.status.set_index("role")
    assert status.loc["induction", "verdict"] == "not evaluated"
    assert status.loc["induction", "reason"] == "no evidence table"
    assert not record.counterfactual
    assert all("zero ablation only" in f.text for f in record.findings() if f.kind == "critical")


@pytest.mark.slow
def test_ioi_evidence_matches_output_attentions_and_forced_attention(smollm2, monkeypatch):
    task = build_task("ioi", smollm2.tokenizer, n=8, seed=SEED)
    batch = max(encode_task(task, smollm2.tokenizer), key=len)
    ids, target, foil = batch.input_ids[:3], batch.target_ids[:3], batch.foil_ids[:3]
    found = prompt_evidence(smollm2, ids, target, foil)
    previous = smollm2.model.config._attn_implementation
    smollm2.model.set_attn_implementation("eager")  # the independent runs read attention weights
    try:
        _check_ioi(smollm2, ids, target, foil, found, monkeypatch)
    finally:
        smollm2.model.set_attn_implementation(previous)


def _check_ioi(smollm2, ids, target, foil, found, monkeypatch):  # noqa: ANN001, ANN202
    clean = _capture(smollm2, ids)
    seq = ids.shape[1]
    expected = np.zeros_like(found["attn_target"][0])
    for layer, pattern in enumerate(clean["attn"]):
        for row in range(len(ids)):
            for p in range(seq):
                if int(ids[row, p]) == int(target[row]):
                    expected[row, layer] += pattern[row, :, seq - 1, p].numpy()
    np.testing.assert_allclose(found["attn_target"][0], expected, atol=1e-5)
    assert found["attn_target"][1].all()  # the IO name is in every IOI prompt
    keys = [max(p for p in range(seq - 1) if int(ids[row, p]) == int(target[row])) for row in range(len(ids))]
    forced = _forced_run(smollm2, ids, [seq - 1] * len(ids), keys, monkeypatch)
    rows = torch.arange(len(ids))
    independent = _head_logit_diffs(smollm2, clean, forced["z"], rows, torch.full((len(ids),), seq - 1),
                                    _direction(smollm2, target, foil)).numpy()
    np.testing.assert_allclose(found["ov_target"][0], independent, rtol=1e-3, atol=1e-3)
    model_diff = (clean["logits"][rows, -1, target] - clean["logits"][rows, -1, foil]).numpy()
    np.testing.assert_allclose(found["clean"][0], model_diff, rtol=1e-4, atol=1e-3)
