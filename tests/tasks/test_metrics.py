"""Tests of cortexmap/tasks/metrics.py: each metric against its formula, computed here with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cortexmap.tasks.metrics import Readout, pair_readout


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _set_readout(metric: str) -> Readout:
    """Two prompts, one read each: prompt 0 targets tokens {1, 2} against {3}; prompt 1 targets {4} against {5, 6, 7}."""
    return Readout(metric=metric, rows=torch.tensor([0, 1]), positions=torch.tensor([3, 3]),
                   token_read=torch.tensor([0, 0, 0, 1, 1, 1, 1]), token_id=torch.tensor([1, 2, 3, 4, 5, 6, 7]),
                   token_cand=torch.arange(7), targets=torch.tensor([[0, 1], [3, -1]]),
                   foils=torch.tensor([[2, -1, -1], [4, 5, 6]]), n_cands=7)


def test_the_logit_difference_is_the_log_probability_difference_of_one_token_answers():
    logits = torch.randn(3, 4, 11, generator=torch.Generator().manual_seed(0))
    readout = pair_readout(4, torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8]), last=9)
    as_logits = readout.metric_of(logits)
    as_log_probs = torch.stack([readout.candidate_scores(logits, log_probs=True)[:, 0::2]
                                - readout.candidate_scores(logits, log_probs=True)[:, 1::2]])[0]
    assert torch.allclose(as_logits, as_log_probs, atol=1e-5)
    lp = _log_softmax(logits.numpy())
    rows = np.arange(4)
    expected = lp[:, rows, [1, 2, 3, 4]] - lp[:, rows, [5, 6, 7, 8]]
    assert np.allclose(as_logits.numpy(), expected, atol=1e-5)
    assert torch.equal(readout.correct(logits), as_logits > 0)


@pytest.mark.parametrize("metric", ["prob_diff", "log_mass_diff"])
def test_set_metrics_accuracy_and_chance_match_their_formulas(metric):
    logits = torch.randn(2, 2, 9, generator=torch.Generator().manual_seed(1))
    readout = _set_readout(metric)
    p = np.exp(_log_softmax(logits.numpy()))  # [k, read, vocab]
    mass = {0: (p[:, 0, 1] + p[:, 0, 2], p[:, 0, 3]), 1: (p[:, 1, 4], p[:, 1, 5] + p[:, 1, 6] + p[:, 1, 7])}
    got = readout.metric_of(logits).numpy()
    for prompt, (t, f) in mass.items():
        want = t - f if metric == "prob_diff" else np.log(t) - np.log(f)
        assert np.allclose(got[:, prompt], want, atol=1e-6)
    correct = readout.correct(logits).numpy()
    assert (correct[:, 0] == (np.maximum(p[:, 0, 1], p[:, 0, 2]) > p[:, 0, 3])).all()
    assert (correct[:, 1] == (p[:, 1, 4] > p[:, 1, 5:8].max(-1))).all()
    assert np.allclose(readout.chance_accuracy().numpy(), [2 / 3, 1 / 4])
    chance = readout.chance_metric(logits).numpy()
    if metric == "prob_diff":  # the same candidate mass, spread evenly
        assert np.allclose(chance[:, 0], (mass[0][0] + mass[0][1]) * (2 - 1) / 3, atol=1e-6)
        assert np.allclose(chance[:, 1], (mass[1][0] + mass[1][1]) * (1 - 3) / 4, atol=1e-6)
    else:
        assert np.allclose(chance, [[np.log(2), np.log(1 / 3)]] * 2, atol=1e-6)


def test_multi_token_answers_sum_their_tokens_log_probabilities():
    """Target = tokens (2, 3) read at reads 0 and 1; foil = token 4 at read 0."""
    logits = torch.randn(1, 2, 6, generator=torch.Generator().manual_seed(2))
    readout = Readout(metric="logprob_diff", rows=torch.tensor([0, 0]), positions=torch.tensor([4, 5]),
                      token_read=torch.tensor([0, 1, 0]), token_id=torch.tensor([2, 3, 4]),
                      token_cand=torch.tensor([0, 0, 1]), targets=torch.tensor([[0]]), foils=torch.tensor([[1]]),
                      n_cands=2)
    lp = _log_softmax(logits.numpy())[0]
    assert readout.metric_of(logits).item() == pytest.approx(lp[0, 2] + lp[1, 3] - lp[0, 4], abs=1e-6)
    p_t, p_f = readout.masses(logits)
    assert p_t.item() == pytest.approx(np.exp(lp[0, 2] + lp[1, 3]), rel=1e-5)
    assert p_f.item() == pytest.approx(np.exp(lp[0, 4]), rel=1e-5)
