"""Tests of cortexmap/tasks/probes.py: scoring on hand-made patterns, prompt generators, the runner."""

from __future__ import annotations

import pytest
import torch

from cortexmap.errors import TaskError
from cortexmap.tasks import probes as P

# [prefix] R R with R = 10 11 12 13 14 (no repeats inside R); seq = 11
IDS = torch.tensor([[1, 10, 11, 12, 13, 14, 10, 11, 12, 13, 14]])
SEQ = IDS.shape[1]


def _one_hot(targets: dict[int, int]) -> torch.Tensor:
    """``[1, 1, q, k]`` pattern: query q attends fully to ``targets[q]``, others to themselves."""
    attn = torch.zeros(1, 1, SEQ, SEQ)
    for q in range(SEQ):
        attn[0, 0, q, targets.get(q, q)] = 1.0
    return attn


def _uniform() -> torch.Tensor:
    causal = torch.tril(torch.ones(SEQ, SEQ))
    return (causal / causal.sum(-1, keepdim=True))[None, None]


def test_induction_pattern_scores_one():
    # query in the second copy (positions 6..10) -> the token after the first occurrence (q - 5 + 1)
    attn = _one_hot({q: q - 4 for q in range(6, SEQ)})
    assert P.induction_score(attn, IDS).item() == pytest.approx(1.0)
    assert P.duplicate_token_score(attn, IDS).item() == pytest.approx(0.0)
    assert P.previous_token_score(attn).item() < 0.6


def test_previous_token_pattern():
    attn = _one_hot({q: q - 1 for q in range(1, SEQ)})
    assert P.previous_token_score(attn).item() == pytest.approx(1.0)
    assert P.induction_score(attn, IDS).item() == pytest.approx(0.0)
    assert P.sink_score(attn).item() == pytest.approx(1 / (SEQ - 1))  # only query 1 hits position 0
    assert P.local_window_score(attn).item() == pytest.approx(1.0)


def test_duplicate_and_sink_patterns():
    dup = _one_hot({q: q - 5 for q in range(6, SEQ)})
    assert P.duplicate_token_score(dup, IDS).item() == pytest.approx(1.0)
    assert P.induction_score(dup, IDS).item() == pytest.approx(0.0)
    sink = _one_hot({q: 0 for q in range(SEQ)})
    assert P.sink_score(sink).item() == pytest.approx(1.0)
    for score in (P.previous_token_score(sink), P.local_window_score(sink), P.induction_score(sink, IDS)):
        assert score.item() == pytest.approx(0.0)


def test_uniform_pattern_gives_the_expected_fractions():
    attn = _uniform()
    expected_prev = sum(1 / (q + 1) for q in range(2, SEQ)) / (SEQ - 2)
    assert P.previous_token_score(attn).item() == pytest.approx(expected_prev)
    assert P.sink_score(attn).item() == pytest.approx(sum(1 / (q + 1) for q in range(1, SEQ)) / (SEQ - 1))
    assert P.local_window_score(attn).item() == pytest.approx(sum(3 / (q + 1) for q in range(4, SEQ)) / (SEQ - 4))
    assert P.induction_score(attn, IDS).item() == pytest.approx(sum(1 / (q + 1) for q in range(6, SEQ)) / 5)


def test_local_window_excludes_self_and_checks_width():
    assert P.local_window_score(_one_hot({})).item() == pytest.approx(0.0)  # attends to itself only
    with pytest.raises(TaskError):
        P.local_window_score(_uniform(), window=0)


def test_successor_targets_the_previous_member_not_the_separator():
    ids = torch.tensor([[1, 20, 5, 21, 5, 22, 5, 23]])  # BOS Mon , Tue , Wed , Thu
    members = torch.tensor([[1, 3, 5, 7]])
    seq = ids.shape[1]
    to_member = torch.zeros(1, 1, seq, seq)
    to_comma = torch.zeros(1, 1, seq, seq)
    for q in range(seq):
        to_member[0, 0, q, max(q - 2, 0)] = 1.0
        to_comma[0, 0, q, max(q - 1, 0)] = 1.0
    assert P.successor_score(to_member, members).item() == pytest.approx(1.0)
    assert P.successor_score(to_comma, members).item() == pytest.approx(0.0)


def test_scores_are_per_batch_and_head_and_in_range():
    attn = torch.softmax(torch.randn(3, 5, SEQ, SEQ) + torch.triu(torch.full((SEQ, SEQ), -1e9), 1), -1)
    ids = IDS.expand(3, SEQ)
    for score in (P.previous_token_score(attn), P.induction_score(attn, ids), P.duplicate_token_score(attn, ids),
                  P.sink_score(attn), P.local_window_score(attn)):
        assert score.shape == (3, 5)
        assert (score >= 0).all() and (score <= 1 + 1e-6).all()


def test_repeated_random_tokens(bpe_digits, bpe_gpt2):
    batch = P.repeated_random_tokens(bpe_digits, n=4, length=12, seed=0)
    assert batch.input_ids.shape == (4, 1 + 24)
    assert (batch.input_ids[:, 0] == bpe_digits.bos_token_id).all()
    body = batch.input_ids[:, 1:]
    assert torch.equal(body[:, :12], body[:, 12:])
    assert all(len(set(row[:12].tolist())) == 12 for row in body)
    assert torch.equal(batch.input_ids, P.repeated_random_tokens(bpe_digits, n=4, length=12, seed=0).input_ids)
    assert not torch.equal(batch.input_ids, P.repeated_random_tokens(bpe_digits, n=4, length=12, seed=1).input_ids)
    assert P.repeated_random_tokens(bpe_gpt2, n=2, length=12).input_ids.shape == (2, 24)  # no BOS


def test_ordinal_sequences(bpe_digits):
    batch = P.ordinal_sequences(bpe_digits, n=6, members=5, seed=0)
    assert batch.members.shape == (6, 5)
    comma = bpe_digits(",", add_special_tokens=False)["input_ids"][0]
    for ids, where in zip(batch.input_ids, batch.members):
        words = [bpe_digits.decode([ids[i]]).strip() for i in where]
        assert all(w[:1].isupper() or w.isalpha() for w in words)
        assert all(ids[i + 1] == comma for i in where[:-1].tolist())
    with pytest.raises(TaskError, match="no ordinal run"):
        P.ordinal_sequences(bpe_digits, n=2, members=40)


def test_run_probes_shape_columns_and_restores_attention(tiny):
    assert tiny.model.config._attn_implementation == "sdpa"
    table = P.run_probes(tiny, n=6, seed=0, batch_size=4)
    assert tiny.model.config._attn_implementation == "sdpa"
    assert list(table.columns) == P.PATTERN_COLUMNS
    assert len(table) == len(P.probe_names()) * tiny.n_layers * tiny.n_heads
    assert set(table["probe"]) == set(P.probe_names())
    assert table["head_id"].iloc[5] == f"L{table['layer'].iloc[5]}H{table['head'].iloc[5]}"
    assert ((table["score"] >= 0) & (table["score"] <= 1)).all()
    assert ((table["ci_low"] <= table["score"] + 1e-9) & (table["score"] <= table["ci_high"] + 1e-9)).all()
    assert (table["n_prompts"] == 6).all() and (table["model"] == "tiny-llama").all()
    again = P.run_probes(tiny, probes=["sink"], n=6, seed=0, batch_size=6)
    assert again["score"].tolist() == pytest.approx(table[table["probe"] == "sink"]["score"].tolist())


def test_run_probes_restores_attention_after_an_error(tiny, monkeypatch):
    def boom(model, input_ids):
        assert model.config._attn_implementation == "eager"
        raise RuntimeError("boom")

    monkeypatch.setattr(P, "_attentions", boom)
    with pytest.raises(RuntimeError):
        P.run_probes(tiny, probes=["induction"], n=2)
    assert tiny.model.config._attn_implementation == "sdpa"


def test_run_probes_rejects_bad_arguments(tiny):
    with pytest.raises(TaskError, match="unknown probe 'nope'; valid probes: previous_token"):
        P.run_probes(tiny, probes=["nope"])
    with pytest.raises(TaskError):
        P.run_probes(tiny, n=0)


def test_induction_matches_an_independent_computation(tiny):
    n, length = 3, 20
    table = P.run_probes(tiny, probes=["induction"], n=n, seed=7)
    ids = P.repeated_random_tokens(tiny.tokenizer, n, length=length, seed=7).input_ids
    tiny.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = tiny.model(input_ids=ids, output_attentions=True).attentions
    finally:
        tiny.model.set_attn_implementation("sdpa")
    start = 1 + length  # BOS, first copy
    for row in table.itertuples():
        per_prompt = []
        for b in range(n):
            pattern = attentions[row.layer][b, row.head]
            per_prompt.append(sum(pattern[q, q - length + 1].item() for q in range(start, start + length)) / length)
        assert row.score == pytest.approx(sum(per_prompt) / n, abs=1e-6)
