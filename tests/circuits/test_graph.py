"""The circuit graph: nodes, receivers, edge counts (GQA included) and the edge order every array uses."""

from __future__ import annotations

import numpy as np
import pytest

from cortexmap.circuits.graph import Edge, Graph, node_layer
from cortexmap.errors import CortexmapError


def brute_force_edges(n_layers: int, n_heads: int, n_kv: int, residual: str = "pre_norm") -> set[Edge]:
    """Every (sender, receiver) pair allowed by the write-before-read rule, from the definition.

    Each node gets a stage inside its layer; a sender reaches a receiver that reads later. Parallel
    blocks read attention and MLP at one stage; on sandwich blocks the heads reach only their
    layer's ``A{l}``, and ``A{l}`` is what the later stages read.
    """
    mlp_in = 0 if residual == "parallel" else 2
    senders = [("emb", -1, 0)] + [(f"L{l}H{h}", l, 1) for l in range(n_layers) for h in range(n_heads)]
    senders += [(f"M{l}", l, 5) for l in range(n_layers)]  # (name, layer, stage)
    receivers = [(f"L{l}H{h}", "q", l, 0) for l in range(n_layers) for h in range(n_heads)]
    receivers += [(f"L{l}KV{g}", kind, l, 0) for l in range(n_layers) for g in range(n_kv) for kind in "kv"]
    receivers += [(f"M{l}", "in", l, 4 if residual == "sandwich" else mlp_in) for l in range(n_layers)]
    receivers += [("logits", "in", n_layers, 0)]
    edges = {Edge(s, r, kind) for s, sl, ss in senders for r, kind, rl, rs in receivers if (sl, ss) < (rl, rs)}
    if residual != "sandwich":
        return edges
    edges = {e for e in edges if "H" not in e.sender}
    edges |= {Edge(f"A{l}", r, kind) for l in range(n_layers) for r, kind, rl, rs in receivers if (l, 3) < (rl, rs)}
    return edges | {Edge(f"L{l}H{h}", f"A{l}", "in") for l in range(n_layers) for h in range(n_heads)}


@pytest.mark.parametrize("residual", ["pre_norm", "parallel", "sandwich"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 4, 4), (3, 4, 2), (3, 6, 3), (2, 4, 1)])
def test_edges_follow_the_write_before_read_rule_and_the_count_formula(shape, residual):  # noqa: ANN001
    graph = Graph(*shape, residual)
    assert set(graph.edges) == brute_force_edges(*shape, residual)
    assert len(set(graph.edges)) == len(graph.edges) == graph.n_edges == graph.counts()["edges"]
    counts = graph.counts()
    assert counts["edges_q"] + counts["edges_k"] + counts["edges_v"] + counts["edges_mlp"] + counts["edges_logits"] \
        + counts.get("edges_attn", 0) == counts["edges"]
    assert [b.start for b in graph.receiver_blocks[1:]] == [b.edges.stop for b in graph.receiver_blocks[:-1]]
    for block in graph.receiver_blocks:  # each block: its receivers x the senders of its groups, sender-major
        senders = [s for g in block.groups for s in graph.senders[graph.sender_groups[g].first:][
            :graph.sender_groups[g].count]]
        expected = [(node, kind, s) for node, kind in block.receivers for s in senders]
        assert [(e.receiver, e.kind, e.sender) for e in graph.edges[block.edges]] == expected


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


def test_sandwich_heads_reach_the_residual_only_through_their_layer_output():
    graph = Graph(3, 4, 2, "sandwich")
    assert {e.receiver for e in graph.edges if e.sender.startswith("L")} == {"A0", "A1", "A2"}
    assert [e.sender for e in graph.edges[graph.block("attn", 1).edges]] == [f"L1H{h}" for h in range(4)]
    assert graph.senders[graph.head_sender(1, 2)] == "L1H2" and graph.senders[graph.mlp_sender(1)] == "M1"
    assert graph.counts()["edges_attn"] == 12 and node_layer("A2", 3) == 2
    assert Graph(18, 4, 1, "sandwich").n_edges == 2395  # Gemma-3-270M, as the module docstring says
    parallel = Graph(3, 4, 2, "parallel")
    assert not any(e.receiver == "M1" and e.sender.startswith("L1") for e in parallel.edges)
    with pytest.raises(CortexmapError, match="no attn receivers"):
        parallel.block("attn", 0)


def test_bad_shapes_are_refused():
    with pytest.raises(CortexmapError, match="divisible"):
        Graph(2, 4, 3)
    with pytest.raises(CortexmapError, match="unknown residual"):
        Graph(2, 4, 2, "post_norm")
