"""Circuits on answer-set tasks (one-token candidates) and their refusal of what they cannot trace."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cortexmap.circuits.attribution import edge_scores
from cortexmap.circuits.explain import explain_decision
from cortexmap.circuits.patching import PathPatcher
from cortexmap.errors import TaskError
from cortexmap.tasks import Pair, Task
from cortexmap.tasks.core import encode_one_position
from cortexmap.tasks.encoding import PairIds, pack
from tests.circuits.tiny_circuits import circuit_handle, task_batch
from tests.tasks.conftest import make_bpe_tokenizer

ATOL = 1e-5


def set_batch():  # noqa: ANN201
    """The tiny circuit batch, each prompt scored by prob_diff of two target tokens against three foil tokens."""
    plain = task_batch()
    items = [PairIds(i, plain.input_ids[i].tolist(), [[5], [7]], [[11], [13], [17]], plain.corrupt_ids[i].tolist())
             for i in range(len(plain.indices))]
    (batch,) = pack(items, "prob_diff", pad_id=0)
    return batch


def prob_diff(logits: torch.Tensor) -> np.ndarray:
    p = torch.softmax(logits.float(), -1)
    return (p[:, [5, 7]].sum(-1) - p[:, [11, 13, 17]].sum(-1)).numpy()


def test_patching_every_edge_of_a_set_task_is_the_corrupt_run_and_none_the_clean_run():
    handle, batch = circuit_handle("llama_gqa"), set_batch()
    patcher = PathPatcher(handle, batch)
    n = patcher.graph.n_edges
    with torch.no_grad():
        clean = prob_diff(handle.model(input_ids=batch.input_ids, use_cache=False).logits[:, -1])
        corrupt = prob_diff(handle.model(input_ids=batch.corrupt_ids, use_cache=False).logits[:, -1])
    np.testing.assert_allclose(patcher.clean_metric, clean, atol=ATOL)
    np.testing.assert_allclose(patcher.patch(np.ones(n, dtype=bool)), corrupt, atol=ATOL)
    assert np.abs(corrupt - clean).max() > 1e-3
    assert np.isfinite(edge_scores(handle, batch, "eap", 1)).all()


@pytest.fixture(scope="module")
def bpe_digits():  # noqa: ANN201
    return make_bpe_tokenizer(split_digits=True, bos=True)


def test_circuits_trace_the_one_token_pairs_of_a_task_and_keep_their_indices(bpe_digits):  # noqa: ANN001
    task = Task("demo", "custom", "", [Pair("The capital of France is", " Paris", " Rome", "The capital of Italy is"),
                                       Pair("The capital of France is", " Paris Paris", " Rome", "The capital of Italy is"),
                                       Pair("The capital of Spain is", " Madrid", " Rome", "The capital of Italy is")],
                metric="logprob_diff")
    batches, left_out = encode_one_position(task, bpe_digits)
    assert left_out == 1 and sorted(i for b in batches for i in b.indices) == [0, 2]
    assert all(b.target_ids is not None and b.reads() is None for b in batches)
    only_long = replace(task, pairs=task.pairs[1:2])
    with pytest.raises(TaskError, match="no pair with one-token answers"):
        encode_one_position(only_long, bpe_digits)


def test_explain_refuses_a_multi_token_target_in_one_line(bpe_digits):  # noqa: ANN001
    handle = circuit_handle("llama")
    handle.tokenizer = bpe_digits
    with pytest.raises(TaskError, match=r"2 tokens for this model; give a single-token target .*edge circuits need one") as err:
        explain_decision(handle, "When Mary and John went to the store, John gave a drink to", " Mary Mary", " John")
    assert "\n" not in str(err.value)
