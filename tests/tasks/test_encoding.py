"""Tests of cortexmap/tasks/encoding.py: rows, reads, padding and aligned sources of a batch."""

from __future__ import annotations

import pytest
import torch

from cortexmap.tasks import Pair, Task, encode_task, evaluate_task
from cortexmap.tasks.core import answer_ids, prompt_ids
from cortexmap.tasks.encoding import PairIds, pack


def test_answers_share_rows_where_one_holds_anothers_prefix():
    item = PairIds(0, [1, 2, 3], targets=[[7, 8, 9], [7]], foils=[[7, 8, 5], [6, 4]])
    assert sorted(item.continuations()) == [[6], [7, 8]]  # [7, 8] serves both three-token answers and [7]
    (batch,) = pack([item], "prob_diff", pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 7, 8], [1, 2, 3, 6, 0]]
    assert batch.lengths.tolist() == [5, 4]
    reads = sorted(zip(batch.readout.rows.tolist(), batch.readout.positions.tolist()))
    assert reads == [(0, 2), (0, 3), (0, 4), (1, 2), (1, 3)]  # one-token answers read at the last prompt position


def test_simple_pairs_keep_the_unpadded_length_buckets_and_the_others_are_padded():
    items = [PairIds(0, [1, 2, 3], [[4]], [[5]], [1, 9, 3]), PairIds(1, [1, 2], [[4]], [[5]], [8, 2]),
             PairIds(2, [1, 2, 3], [[4, 4]], [[5]], [1, 9, 3]), PairIds(3, [1, 2, 3, 3, 3], [[4]], [[5]], [1, 7, 3])]
    batches = pack(items, "logprob_diff", pad_id=0)
    assert [b.indices for b in batches] == [[1], [0], [2, 3]]
    assert [b.lengths is None for b in batches] == [True, True, False]
    assert [len(b.indices) for b in pack(items, "logprob_diff", pad_id=0, pad=True)] == [4]


def test_sources_are_the_corrupt_prompt_and_the_same_answer_tokens_aligned():
    item = PairIds(0, [1, 5, 5, 8], [[4, 6]], [[7]], corrupt=[1, 3, 8])
    (batch,) = pack([item], "logprob_diff", pad_id=0)
    assert batch.corrupt_ids.tolist() == [[1, 3, 8, 4]] and batch.input_ids.tolist() == [[1, 5, 5, 8, 4]]
    assert batch.source_map.tolist() == [[0, -1, -1, 2, 3]]


def test_encode_task_scores_multi_token_answers_as_a_direct_forward_pass_does(tiny):
    """A task with answers of several tokens: its clean scores against teacher forcing done by hand."""
    tok = tiny.tokenizer
    pairs = [Pair("The capital of France is", " Paris Paris", " Rome"),
             Pair("The capital of Spain is the city of", " Madrid", " Rome Paris Rome"),
             Pair("Paris is", (" big", " big Paris"), (" small", " old old"))]
    for pair in pairs[:2]:
        task = Task("demo", "custom", "", [pair], metric="logprob_diff")
        (row,) = evaluate_task(tiny, task).itertuples()
        scores = []
        for answer in (pair.target, pair.foil):
            ids = prompt_ids(tok, pair.prompt) + answer_ids(tok, answer)
            with torch.no_grad():
                lp = torch.log_softmax(tiny.model(input_ids=torch.tensor([ids[:-1]])).logits[0].float(), -1)
            n = len(answer_ids(tok, answer))
            scores.append(sum(lp[len(ids) - n - 1 + j, t].item() for j, t in enumerate(ids[-n:])))
        assert row.score == pytest.approx(scores[0] - scores[1], abs=1e-4)
        assert row.correct == (row.score > 0)
    both = Task("demo", "custom", "", pairs[:2], metric="logprob_diff")
    assert len(encode_task(both, tok)) == 1  # one padded batch for prompts and answers of several lengths
    sets = Task("sets", "custom", "", [pairs[2]], metric="log_mass_diff")
    (row,) = evaluate_task(tiny, sets).itertuples()
    assert row.target == " big |  big Paris" and row.p_target > 0 and row.chance == pytest.approx(0.0)


def test_answer_sets_need_a_set_metric(bpe_digits):
    from cortexmap.errors import TaskError

    sets = Task("sets", "custom", "", [Pair("Paris is", (" big",), (" small", " old"))])  # metric left at logit_diff
    with pytest.raises(TaskError, match="holds answer sets scored by 'logit_diff'; give it a set metric"):
        encode_task(sets, bpe_digits)
    pair_as_set = Task("pair", "custom", "", [Pair("Paris is", " big", " small")], metric="prob_diff")
    assert encode_task(pair_as_set, bpe_digits)[0].readout.metric == "prob_diff"  # a pair is a set of one each
