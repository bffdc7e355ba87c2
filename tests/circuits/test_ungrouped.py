"""The per-query-head KV view against an independent model: the GQA weights repeated into a model without GQA."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cortexmap.circuits.attribution import edge_scores
from cortexmap.circuits.graph import Graph
from cortexmap.circuits.patching import PathPatcher
from cortexmap.circuits.ungrouped import per_head_kv
from cortexmap.models import wrap_model
from tests.circuits.tiny_circuits import circuit_handle, task_batch

GQA = ["llama_gqa", "qwen2", "qwen3", "gemma"]


def repeated_kv_model(handle):  # noqa: ANN001, ANN201
    """The same model with every KV head's projection rows copied once per query head (no GQA): MIB's ungrouping."""
    model = handle.model
    config = copy.deepcopy(model.config)
    config.num_key_value_heads = config.num_attention_heads
    h, g, d = handle.n_heads, handle.n_kv_heads, handle.d_head
    index = torch.arange(h) // (h // g)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.rsplit(".", 2)[-2] in ("k_proj", "v_proj"):
            tensor = tensor.reshape(g, d, *tensor.shape[1:])[index].reshape(h * d, *tensor.shape[1:])
        state[name] = tensor
    other = type(model)(config)
    other.load_state_dict(state)
    return wrap_model(other.eval(), None, spec=f"{handle.spec}-repeated")


@pytest.fixture(scope="module", params=GQA)
def pair(request):
    handle = circuit_handle(request.param)
    return handle, repeated_kv_model(handle)


def test_the_view_is_the_model_and_restores_it(pair):
    handle, _ = pair
    batch = task_batch()
    with torch.no_grad():
        before = handle.model(input_ids=batch.input_ids).logits
        with per_head_kv(handle) as view:
            assert view.n_kv_heads == handle.n_heads and view.model is handle.model
            inside = handle.model(input_ids=batch.input_ids).logits
        after = handle.model(input_ids=batch.input_ids).logits
    torch.testing.assert_close(inside, before, atol=1e-5, rtol=0)
    assert torch.equal(after, before) and handle.n_kv_heads < handle.n_heads
    assert all(not b.k_proj._forward_hooks for b in [handle.attention(l) for l in range(handle.n_layers)])


def test_per_head_circuits_equal_the_repeated_model(pair):
    handle, repeated = pair
    batch = task_batch()
    rng = np.random.default_rng(0)
    graph = Graph(handle.n_layers, handle.n_heads, handle.n_heads)
    masks = rng.random((5, graph.n_edges)) < np.array([[0.0], [0.02], [0.2], [0.6], [1.0]])
    expected = PathPatcher(repeated, batch).run(masks)
    with per_head_kv(handle) as view:
        patcher = PathPatcher(view, batch)
        assert patcher.graph == graph
        got = patcher.run(masks)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.abs(expected[0] - expected[-1]).max() > 0.1  # patching every edge changes the metric


def test_one_query_heads_key_edge_reaches_that_head_only(pair):
    """A single per-head ``k`` edge differs from the group edge: the group's other heads keep their keys."""
    handle, repeated = pair
    batch = task_batch()
    graph = Graph(handle.n_layers, handle.n_heads, handle.n_heads)
    edge = next(i for i, e in enumerate(graph.edges) if e.receiver == "L2KV1" and e.kind == "k" and e.sender == "emb")
    with per_head_kv(handle) as view:
        alone = PathPatcher(view, batch).edge_effects(np.array([edge]))[:, 0]
    np.testing.assert_allclose(alone, PathPatcher(repeated, batch).edge_effects(np.array([edge]))[:, 0], atol=1e-4)
    grouped = Graph.for_model(handle)
    group = grouped.index([e for e in grouped.edges if e.receiver == f"L2KV{1 // (handle.n_heads // handle.n_kv_heads)}"
                           and e.kind == "k" and e.sender == "emb"])
    whole = PathPatcher(handle, batch).edge_effects(group)[:, 0]
    assert np.abs(whole - alone).max() > 1e-3


@pytest.mark.parametrize("method", ["eap", "eap-ig-edges", "eap-ig"])
def test_per_head_scores_equal_the_repeated_model(pair, method):
    handle, repeated = pair
    batch = task_batch()
    expected = edge_scores(repeated, batch, method, steps=3)
    with per_head_kv(handle) as view:
        got = edge_scores(view, batch, method, steps=3)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
