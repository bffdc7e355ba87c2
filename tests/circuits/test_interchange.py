"""EAP-IG / MIB graph files: the structure hannamw/EAP-IG writes, MIB's pruning, and round trips through cortexmap.

``data/eap_ig_graph_2x4.json`` was written by hannamw/EAP-IG's own code (``src/eap/graph.py`` at
795f560, the version MIB-circuit-track's submodule pin 7af394a differs from only in ``prune``'s
stopping rule): ``Graph.from_model({"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False,
"d_model": 32})``, every edge's score drawn from ``numpy.random.default_rng(7).normal()`` in the
order of ``graph.edges``, ``apply_topn(60, absolute=True)`` (top 60 by |score|, then
``Graph.prune``) and ``to_json``. It is the reference for names, order, fields and pruning.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cortexmap.circuits.faithfulness import rank_edges
from cortexmap.circuits.graph import Graph
from cortexmap.circuits.interchange import (
    mib_edge_names,
    per_head_graph,
    per_head_scores,
    prune,
    read_mib_graph,
    write_mib_graph,
)
from cortexmap.circuits.patching import PathPatcher
from cortexmap.circuits.ungrouped import per_head_kv
from cortexmap.errors import CortexmapError
from tests.circuits.tiny_circuits import circuit_handle, task_batch

REFERENCE = Path(__file__).parent / "data" / "eap_ig_graph_2x4.json"


def test_export_writes_the_file_eap_ig_writes(tmp_path):
    reference = json.loads(REFERENCE.read_text())
    graph = Graph(2, 4, 4)
    names = mib_edge_names(graph)
    mib_scores = np.array([reference["edges"][n]["score"] for n in names])
    kept = np.zeros(graph.n_edges, dtype=bool)
    kept[rank_edges(mib_scores)[:60]] = True  # MIB's apply_topn(60, absolute=True), before pruning
    path = write_mib_graph(tmp_path / "g.json", graph, -mib_scores, kept, d_model=32)
    mine = json.loads(path.read_text())
    assert mine == reference
    assert list(mine) == list(reference) and list(mine["nodes"]) == list(reference["nodes"])
    assert list(mine["edges"]) == list(reference["edges"])  # Graph.from_model's order
    assert sum(e["in_graph"] for e in mine["edges"].values()) == 27 < 60  # pruning dropped dangling edges


def test_reading_the_reference_file():
    shape, scores, kept, cfg = read_mib_graph(REFERENCE, Graph(2, 4, 2))
    reference = json.loads(REFERENCE.read_text())
    assert shape == Graph(2, 4, 4) and cfg["d_model"] == 32
    names = mib_edge_names(shape)
    assert len(names) == len(reference["edges"]) == shape.n_edges == 110
    np.testing.assert_array_equal(scores, [-reference["edges"][n]["score"] for n in names])
    np.testing.assert_array_equal(kept, [reference["edges"][n]["in_graph"] for n in names])


def test_names_of_a_small_graph_by_hand():
    names = mib_edge_names(Graph(1, 2, 2))
    assert names == ["input->a0.h0<q>", "input->a0.h1<q>", "input->a0.h0<k>", "input->a0.h1<k>",
                     "input->a0.h0<v>", "input->a0.h1<v>", "input->m0", "a0.h0->m0", "a0.h1->m0",
                     "input->logits", "a0.h0->logits", "a0.h1->logits", "m0->logits"]
    with pytest.raises(CortexmapError, match="per query head"):
        mib_edge_names(Graph(1, 2, 1))
    # SmolLM2-135M: MIB's Graph.from_model gives 123,211 edges (checked with EAP-IG's code), ours 70,651 grouped
    assert len(mib_edge_names(per_head_graph(Graph(30, 9, 3)))) == 123_211 == Graph(30, 9, 3).counts()["edges_ungrouped"]


def test_prune_keeps_connected_edges_only():
    graph = Graph(2, 2, 2)
    edges = {str(e): i for i, e in enumerate(graph.edges)}
    keep = lambda *names: np.isin(np.arange(graph.n_edges), [edges[n] for n in names])
    # L0H0 has no kept input, so its edge out goes; L1H1 reads emb and writes to the logits, so both stay
    chain = keep("L0H0->L1H1.q", "emb->L1H1.q", "L1H1->logits.in")
    np.testing.assert_array_equal(prune(graph, chain), keep("emb->L1H1.q", "L1H1->logits.in"))
    # M0 reads emb but writes nowhere kept: its input edge goes
    np.testing.assert_array_equal(prune(graph, keep("emb->M0.in", "emb->logits.in")), keep("emb->logits.in"))
    # pruning is idempotent and never adds
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = rng.random(graph.n_edges) < 0.3
        once = prune(graph, mask)
        assert not (once & ~mask).any() and np.array_equal(prune(graph, once), once)


@pytest.mark.parametrize("arch", ["llama_gqa", "qwen3"])
def test_pruning_never_changes_a_circuits_metric(arch):
    """MIB prunes before evaluating; with corrupt patching the pruned circuit is the same circuit."""
    handle, batch = circuit_handle(arch), task_batch()
    rng = np.random.default_rng(0)
    with per_head_kv(handle) as view:
        patcher = PathPatcher(view, batch)
        masks = [rng.random(patcher.graph.n_edges) < p for p in (0.02, 0.05, 0.2)]
        pruned = [prune(patcher.graph, m) for m in masks]
        assert all(p.sum() < m.sum() for p, m in zip(pruned, masks))
        np.testing.assert_allclose(patcher.circuits(pruned), patcher.circuits(masks), atol=1e-5)


def test_grouped_export_is_the_grouped_circuit(tmp_path):
    """A grouped circuit exported per query head (each head of a group takes the group's edge) and read back
    measures what the grouped circuit measures, on the per-head model."""
    handle, batch = circuit_handle("llama_gqa"), task_batch()
    graph = Graph.for_model(handle)
    rng = np.random.default_rng(1)
    scores = rng.normal(size=graph.n_edges)
    kept = np.zeros(graph.n_edges, dtype=bool)
    kept[rank_edges(scores)[:40]] = True
    grouped = PathPatcher(handle, batch).circuits([kept])[0]
    path = write_mib_graph(tmp_path / "grouped.json", graph, scores, kept, d_model=32)
    shape, back, in_graph, _ = read_mib_graph(path, graph)
    np.testing.assert_array_equal(back, per_head_scores(graph, scores))
    assert in_graph.sum() <= per_head_scores(graph, kept).sum()
    with per_head_kv(handle) as view:
        assert PathPatcher(view, batch).graph == shape
        np.testing.assert_allclose(PathPatcher(view, batch).circuits([in_graph])[0], grouped, atol=1e-5)


def test_bad_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CortexmapError, match="not an EAP-IG / MIB graph file"):
        read_mib_graph(bad)
    with pytest.raises(CortexmapError, match="2 layers x 4 heads, but the model has 3 x 4"):
        read_mib_graph(REFERENCE, Graph(3, 4, 2))
    data = json.loads(REFERENCE.read_text())
    data["edges"].pop("input->logits")
    short = tmp_path / "short.json"
    short.write_text(json.dumps(data))
    with pytest.raises(CortexmapError, match="1 edges missing"):
        read_mib_graph(short)
