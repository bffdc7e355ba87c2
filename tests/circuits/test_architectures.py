"""Circuits end to end on every tiny architecture: trace_circuit, explain_decision and its drawing.

The exactness of the pieces is tested per architecture in test_patching.py and test_attribution.py;
here the public entry points run on fused q/k/v (GPT-2, GPT-NeoX), parallel (GPT-NeoX) and
sandwich (Gemma 2/3) blocks as on llama, and their verified numbers are the patcher's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import transformers as tf

from cortexmap.circuits import explain_decision
from cortexmap.circuits.graph import Graph
from cortexmap.circuits.patching import PathPatcher
from cortexmap.circuits.run import trace_circuit
from cortexmap.models import load_model
from tests.circuits.tiny_circuits import SUPPORTED, circuit_handle, task_batch
from tests.sweep.tiny_run import NAMES, WORDS, make_model_dir

PROMPT = "when anna and bert went to the store bert gave a drink to"


@pytest.mark.parametrize("arch", SUPPORTED)
def test_trace_circuit_runs_and_verifies_exactly(arch):  # noqa: ANN001
    handle, batch = circuit_handle(arch), task_batch(batch=4)
    result = trace_circuit(handle, [batch], verify=4, fractions=(0.1, 0.5, 1.0), n_random=1, steps=2, heldout=0.0)
    graph = Graph.for_model(handle)
    assert len(result.edges) == graph.n_edges and result.arguments["n_edges"] == graph.n_edges
    exact = result.edges[result.edges["method"] == "exact"]
    reference = PathPatcher(handle, batch).edge_effects(exact.index.to_numpy()).mean(0)
    np.testing.assert_allclose(exact["effect"], reference, atol=1e-6)
    at_full = result.curves[(result.curves["fraction"] == 1.0) & (result.curves["method"] != "full")]
    np.testing.assert_allclose(at_full["faithfulness"], 1.0)
    into_logits = set(result.top_heads.loc[result.top_heads["to_logits"], "node"])
    assert set(result.end_heads) == {n for n in into_logits if n[0] in "LA"}  # heads, or A{l} on sandwich models


def _configs(vocab: int) -> dict[str, tf.PretrainedConfig]:
    common = {"vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
              "intermediate_size": 64, "max_position_embeddings": 64}
    return {
        "gpt2": tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=64),
        "gpt_neox": tf.GPTNeoXConfig(**common, rotary_pct=0.25),
        "gemma3_text": tf.Gemma3TextConfig(**common, num_key_value_heads=1, head_dim=8, sliding_window=4),
    }


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "gemma3_text"])
def test_explain_decision_runs_and_draws_every_node(arch, tmp_path: Path):  # noqa: ANN001
    config = _configs(1 + len(WORDS) + len(NAMES))[arch]
    handle = load_model(str(make_model_dir(tmp_path, config)))
    ex = explain_decision(handle, PROMPT, " anna", " bert", verify=8, steps=2)
    assert len(ex.edges) == 8 and (ex.edges["method"] == "exact").all()
    assert ex.graph == Graph.for_model(handle)
    lines = {t.name for t in ex.figure().data if t.mode == "lines"}
    assert lines == {f"{r.sender} → {r.receiver}.{r.kind}" for r in ex.edges.itertuples()}


def test_the_circuit_view_places_every_node_of_a_sandwich_graph():
    from cortexmap.report.circuits import edge_graph

    graph = Graph(3, 4, 2, "sandwich")
    edges = graph.frame().assign(effect=np.linspace(-1, 1, graph.n_edges))
    fig = edge_graph(edges, [""] * graph.n_edges, graph.n_layers, graph.n_heads, graph.n_kv_heads)
    nodes = fig.data[-1]
    placed = dict(zip(nodes.customdata, zip(nodes.x, nodes.y)))
    assert {"A0", "A1", "A2", "M2", "L2H3"} <= set(placed)
    assert len(set(placed.values())) == len(placed)  # no two nodes drawn on one spot


def test_regulator_edges_on_a_sandwich_graph_leave_out_the_heads_layer_output():
    from cortexmap.circuits.graph import Edge
    from cortexmap.circuits.regulation import baseline_heads, composition_edges
    from cortexmap.heads import HeadId

    graph = Graph(4, 4, 2, "sandwich")
    picked = composition_edges(graph, np.ones(graph.n_edges), HeadId(1, 2), graph.n_edges)
    senders = {graph.edges[i].sender for i in picked}
    assert "A1" not in senders and {"A0", "M1", "emb"} <= senders
    drawn = baseline_heads(graph, HeadId(2, 0), [Edge("A2", "L3H0", "q")], 3, seed=0)
    assert all(h.layer < 2 for h in drawn)  # every head of layer 2 is held by A2, which sends a measured edge
