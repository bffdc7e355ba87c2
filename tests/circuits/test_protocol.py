"""Protocols, the held-out split and BOS: the choices that make circuit numbers comparable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cortexmap.circuits.faithfulness import MIB_FRACTIONS
from cortexmap.circuits.protocol import PROTOCOLS, order_scores, protocol_named, split_batches, with_bos
from cortexmap.errors import CortexmapError
from tests.circuits.tiny_circuits import task_batch


def batches():  # noqa: ANN201
    a, b = task_batch(batch=5, seq=7), task_batch(batch=4, seq=5, seed=4)
    b.indices = [5, 6, 7, 8]
    return [a, b]


def test_the_two_protocols():
    mib, ours = protocol_named("mib"), protocol_named("cortexmap")
    assert mib.fractions == ours.fractions == MIB_FRACTIONS and len(MIB_FRACTIONS) == 10
    assert (mib.per_head_kv, mib.bos, mib.sign, mib.cpr_order, mib.cmd_order) == (True, True, -1.0, "signed", "absolute")
    assert (ours.per_head_kv, ours.bos, ours.orders) == (False, False, ("absolute",))
    assert mib.orders == ("absolute", "signed") and protocol_named(mib) is mib and set(PROTOCOLS) == {"cortexmap", "mib"}
    with pytest.raises(CortexmapError, match="unknown protocol 'acdc'"):
        protocol_named("acdc")
    scores = np.array([-2.0, 1.0, 0.5])  # cortexmap's sign: the first edge carries the clean answer
    assert order_scores(scores, mib, "signed").tolist() == [2.0, -1.0, -0.5]
    assert order_scores(scores, mib, "absolute").tolist() == [2.0, 1.0, 0.5]


def test_split_partitions_the_prompts_by_a_seeded_permutation():
    parts = split_batches(batches(), 0.5, seed=0)
    ids = [[i for b in part for i in b.indices] for part in parts]
    assert sorted(ids[0] + ids[1]) == list(range(9)) and not set(ids[0]) & set(ids[1])
    assert len(ids[1]) == 4  # round(0.5 * 9) = 4 (banker's rounding of 4.5)
    for part in parts:
        for b in part:  # rows stay aligned with their pair
            original = next(o for o in batches() if b.indices[0] in o.indices)
            rows = [original.indices.index(i) for i in b.indices]
            assert torch.equal(b.input_ids, original.input_ids[rows])
            assert torch.equal(b.corrupt_ids, original.corrupt_ids[rows])
            assert torch.equal(b.target_ids, original.target_ids[rows]) and b.indices == sorted(b.indices)
    assert [[i for b in p for i in b.indices] for p in split_batches(batches(), 0.5, seed=0)] == ids
    assert [[i for b in p for i in b.indices] for p in split_batches(batches(), 0.5, seed=1)] != ids
    assert len([i for b in split_batches(batches(), 0.01)[1] for i in b.indices]) == 1  # at least one held out
    assert len([i for b in split_batches(batches(), 0.99)[0] for i in b.indices]) == 1  # at least one left
    kept, held = split_batches(batches(), 0.0)
    assert held == [] and [b.indices for b in kept] == [b.indices for b in batches()]
    with pytest.raises(CortexmapError, match="in \\[0, 1\\)"):
        split_batches(batches(), 1.0)
    with pytest.raises(CortexmapError, match="at least two prompts"):
        split_batches([task_batch(batch=1)], 0.5)


def test_bos_is_prepended_once():
    b = task_batch(batch=3)
    out = with_bos([b], 96)[0]
    assert out.input_ids.shape == (3, 8) and (out.input_ids[:, 0] == 96).all() and (out.corrupt_ids[:, 0] == 96).all()
    assert torch.equal(out.input_ids[:, 1:], b.input_ids) and torch.equal(out.corrupt_ids[:, 1:], b.corrupt_ids)
    assert with_bos([out], 96)[0] is out  # already there (a tokenizer that adds BOS itself)
    with pytest.raises(CortexmapError, match="has none"):
        with_bos([b], None)
