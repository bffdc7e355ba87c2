"""The circuit graph: nodes, receivers, edge counts (GQA included) and the edge order every array uses."""

from __future__ import annotations

import numpy as np
import pytest

from cortexmap.circuits.graph import Edge, Graph, node_layer
from cortexmap.errors import CortexmapError


def brute_force_edges(n_layers: int, n_heads: int, n_kv: int) -> set[Edge]:
    """Every (sender, receiver) pair allowed by the write-before-read rule, from the definition."""
    senders = [("emb", -1, 0)] + [(f"L{l}H{h}", l, 0) for l in range(n_layers) for h in range(n_heads)]
    senders += [(f"M{l}", l, 1) for l in range(n_layers)]  # (name, layer, 0: attention / 1: MLP stage)
    receivers = [(f"L{l}H{h}", "q", l, 0) for l in range(n_layers) for h in range(n_heads)]
    receivers += [(f"L{l}KV{g}", kind, l, 0) for l in range(n_layers) for g in range(n_kv) for kind in "kv"]
    receivers += [(f"M{l}", "in", l, 1) for l in range(n_layers)] + [("logits", "in", n_layers, 0)]
    return {Edge(s, r, kind) for s, sl, ss in senders for r, kind, rl, rs in receivers
            if (sl, ss) < (rl, rs)}


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 4, 4), (3, 4, 2), (3, 6, 3), (2, 4, 1)])
def test_edges_follow_the_write_before_read_rule_and_the_count_formula(shape):  # noqa: ANN001
    graph = Graph(*shape)
    assert set(graph.edges) == brute_force_edges(*shape)
    assert len(set(graph.edges)) == len(graph.edges) == graph.n_edges == graph.counts()["edges"]
    counts = graph.counts()
    assert counts["edges_q"] + counts["edges_k"] + counts["edges_v"] + counts["edges_mlp"] + counts["edges_logits"] \
        == counts["edges"]


def test_smollm2_shape_counts():
    counts = Graph(30, 9, 3).counts()
    assert counts == {
        "nodes": 302, "senders": 301, "receivers": 481, "edges": 70651, "edges_q": 39420, "edges_k": 13140,
        "edges_v": 13140, "edges_mlp": 4650, "edges_logits": 301, "edges_ungrouped": 123211,
    }
    assert Graph(30, 9, 9).counts()["edges"] == counts["edges_ungrouped"]  # no GQA: grouped == ungrouped


def test_gqa_groups_share_key_and_value_receivers():
    graph = Graph(2, 4, 2)
    kv = {(e.receiver, e.kind) for e in graph.edges if e.kind in "kv"}
    assert kv == {(f"L{l}KV{g}", k) for l in range(2) for g in range(2) for k in "kv"}
    assert not any(e.receiver.startswith("L0") for e in graph.edges if e.sender != "emb")  # layer 0 reads emb only


def test_order_is_receiver_major_with_contiguous_blocks():
    graph = Graph(3, 4, 2)
    for layer in range(3):
        block = graph.edges[graph.attention_slice(layer)]
        receivers = graph.attention_receivers(layer)
        n_up = graph.n_before(layer)
        for i, (node, kind) in enumerate(receivers):
            assert [(e.receiver, e.kind) for e in block[i * n_up:(i + 1) * n_up]] == [(node, kind)] * n_up
            assert [e.sender for e in block[i * n_up:(i + 1) * n_up]] == list(graph.senders[:n_up])
        mlp = graph.edges[graph.mlp_slice(layer)]
        assert {e.receiver for e in mlp} == {f"M{layer}"}
        assert mlp[-1].sender == f"L{layer}H3"
        assert graph.senders[graph.mlp_sender(layer)] == f"M{layer}"
        assert graph.senders[graph.head_sender(layer, 2)] == f"L{layer}H2"
    assert [e.sender for e in graph.edges[graph.logits_slice()]] == list(graph.senders)
    assert graph.logits_slice().stop == graph.n_edges


def test_index_mask_and_frame():
    graph = Graph(2, 4, 2)
    picked = [graph.edges[5], graph.edges[40], graph.edges[-1]]
    assert graph.index(picked).tolist() == [5, 40, graph.n_edges - 1]
    mask = graph.mask(picked)
    assert mask.sum() == 3 and np.array_equal(graph.mask(mask), mask)
    with pytest.raises(CortexmapError, match="not in this"):
        graph.index([Edge("L1H0", "L0H0", "q")])
    with pytest.raises(CortexmapError, match="entries"):
        graph.mask(np.zeros(3, dtype=bool))
    frame = graph.frame()
    assert list(frame.columns) == ["sender", "receiver", "kind", "sender_layer", "receiver_layer"]
    assert len(frame) == graph.n_edges
    assert (frame["sender_layer"] < frame["receiver_layer"]).sum() + (
        (frame["sender_layer"] == frame["receiver_layer"]) & frame["receiver"].str.startswith("M")).sum() == len(frame)
    assert [node_layer(n, 2) for n in ("emb", "L1H3", "L0KV1", "M1", "logits")] == [-1, 1, 0, 1, 2]
    assert str(picked[0]) == f"{picked[0].sender}->{picked[0].receiver}.{picked[0].kind}"


def test_bad_shapes_are_refused():
    with pytest.raises(CortexmapError, match="divisible"):
        Graph(2, 4, 3)
