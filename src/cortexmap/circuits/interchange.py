"""Edge scores in the graph files of EAP-IG and MIB: export, import, and MIB's pruning (no torch).

The format is the JSON that hannamw/EAP-IG's ``Graph.to_json`` writes and ``Graph.from_json``
reads (``src/eap/graph.py``; MIB-circuit-track's ``run_evaluation.py`` loads circuits with it)::

    {"cfg": {"n_layers": L, "n_heads": H, "parallel_attn_mlp": false, "d_model": D},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {...}, ..., "m0": {...}, "a1.h0": ..., "logits": {...}},
     "edges": {"input->a0.h0<q>": {"score": s, "in_graph": b}, "input->a0.h0<k>": ..., ...,
               "a0.h1->m0": ..., "m11->logits": ...}}

Nodes are ``input`` (the embeddings), ``a{l}.h{h}`` (query head h of layer l), ``m{l}`` and
``logits``; an edge is ``parent->child``, with ``<q>``, ``<k>`` or ``<v>`` appended when the
child is a head: key and value inputs are one per *query* head (MIB's ungrouped graph,
:mod:`~cortexmap.circuits.ungrouped`). Nodes and edges are written in ``Graph.from_model``'s order
(per layer: every earlier node to every head's q, k, v; then every node so far, this layer's heads
included, to the MLP; last every node to the logits). Names map one to one onto cortexmap's
per-head graph (``Graph(L, H, H)``): ``input`` = ``emb``, ``a{l}.h{h}`` = ``L{l}H{h}`` (its k and v
inputs: ``L{l}KV{h}``), ``m{l}`` = ``M{l}``.

Scores are written in MIB's sign: EAP-IG attributes ``-logit_diff`` (``loss=True``) to
``corrupt - clean`` differences, so an edge carrying the clean answer is positive; cortexmap's
scores estimate ``patched - clean`` (negative there), so export negates them and import negates
back. EAP-IG also divides its sums by the number of prompts *and* averages the metric over each
batch, so its scores are the per-prompt mean divided by the batch size; the file holds the
per-prompt mean (the order, which is all MIB's evaluation reads, is the same).

A grouped-KV result (protocol ``"cortexmap"``) is exported per query head: each head of a KV
group gets its group's key (value) edge score, and is in the graph when the group's edge is, so
the exported circuit is the grouped circuit exactly.

:func:`prune` is MIB's ``Graph.prune`` on a boolean edge mask: repeatedly drop nodes without an
outgoing edge or without an incoming one (the input always has one), then edges whose parent or
child was dropped (the logits always stay). With corrupt patching pruning never changes the
metric: a node whose inputs are all patched writes its corrupt-run output, which is what the
patched edges out of it carry anyway, and a node with no kept edge out reaches no kept input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cortexmap.atomic import write_json
from cortexmap.circuits.graph import Graph
from cortexmap.errors import CortexmapError


def _mib_node(name: str) -> str:
    if name == "emb":
        return "input"
    if name == "logits":
        return "logits"
    if name[0] == "M":
        return f"m{name[1:]}"
    layer, rest = name[1:].split("KV") if "KV" in name else name[1:].split("H")
    return f"a{layer}.h{rest}"


def per_head_graph(graph: Graph) -> Graph:
    """The graph with key and value inputs per query head (MIB's counting) of a model's graph."""
    return Graph(graph.n_layers, graph.n_heads, graph.n_heads, graph.residual)


def mib_edge_names(graph: Graph) -> list[str]:
    """MIB's name of every edge of a per-head graph, in cortexmap's edge order.

    Raises:
        CortexmapError: a graph with grouped key/value inputs.
    """
    if graph.n_kv_heads != graph.n_heads:
        raise CortexmapError("MIB's graph has key/value inputs per query head; expand a grouped graph first "
                             "(per_head_scores)")
    return [f"{_mib_node(e.sender)}->{_mib_node(e.receiver)}" + (f"<{e.kind}>" if e.kind != "in" else "")
            for e in graph.edges]


def _mib_order(graph: Graph) -> np.ndarray:
    """Positions, in cortexmap's edge order, of the edges in ``Graph.from_model``'s order."""
    h, order = graph.n_heads, []
    for layer in range(graph.n_layers):
        sl, n_up = graph.attention_slice(layer), graph.n_before(layer)
        block = np.arange(sl.start, sl.stop).reshape(3, h, n_up)  # [q|k|v, head, sender]
        order.append(block.transpose(2, 1, 0).reshape(-1))  # sender-major, then head, then q, k, v
        order.append(np.arange(graph.mlp_slice(layer).start, graph.mlp_slice(layer).stop))
    logits = graph.logits_slice()
    order.append(np.arange(logits.start, logits.stop))
    return np.concatenate(order)


def per_head_scores(graph: Graph, values: np.ndarray) -> np.ndarray:
    """Per-edge values of a grouped graph carried to its per-head graph (a KV group's edge to each of its heads)."""
    values = np.asarray(values)
    if graph.n_kv_heads == graph.n_heads:
        return values.copy()
    full = per_head_graph(graph)
    size, h, g = graph.n_heads // graph.n_kv_heads, graph.n_heads, graph.n_kv_heads
    out = np.empty(full.n_edges, dtype=values.dtype)
    for block in graph.receiver_blocks:  # the same senders in both graphs; only the k / v receivers multiply
        chunk = values[block.edges]
        if block.kind == "attention":
            grouped = chunk.reshape(h + 2 * g, block.n_up)
            kv = grouped[h:].reshape(2, g, block.n_up).repeat(size, axis=1).reshape(2 * h, block.n_up)
            chunk = np.concatenate([grouped[:h], kv]).reshape(-1)
        out[full.block(block.kind, block.layer).edges] = chunk
    return out


def prune(graph: Graph, kept: np.ndarray) -> np.ndarray:
    """MIB's ``Graph.prune`` of a per-head graph's edge mask: the connected part of the circuit (see above)."""
    if graph.n_kv_heads != graph.n_heads:
        raise CortexmapError("MIB's pruning is defined on its per-query-head graph; expand a grouped mask first")
    frame = graph.frame()
    parent = frame["sender"].to_numpy()
    child = np.where(frame["kind"].isin(["k", "v"]), frame["receiver"].str.replace("KV", "H"), frame["receiver"])
    nodes = list(graph.senders)
    index = {name: i for i, name in enumerate(nodes)}
    src = np.array([index[p] for p in parent])
    dst = np.array([index.get(c, -1) for c in child])  # -1: the logits
    mask = np.array(kept, dtype=bool)
    while True:
        outgoing = np.bincount(src[mask], minlength=len(nodes)) > 0
        incoming = np.bincount(dst[mask & (dst >= 0)], minlength=len(nodes)) > 0
        incoming[0] = True
        alive = outgoing & incoming
        new = mask & alive[src] & np.where(dst >= 0, alive[np.maximum(dst, 0)], True)
        if np.array_equal(new, mask):
            return new
        mask = new


def write_mib_graph(path: str | Path, graph: Graph, scores: np.ndarray, in_graph: np.ndarray, d_model: int) -> Path:
    """Write edge scores and a circuit as an EAP-IG / MIB graph file.

    Args:
        path: the ``.json`` file to write (atomically).
        graph: the graph the per-edge arrays follow (grouped graphs are expanded per query head).
        scores: cortexmap scores per edge (estimates of patched - clean); written negated (MIB's sign).
        in_graph: the circuit, a boolean mask over the edges; written after MIB's pruning.
        d_model: the model's residual width (the file's ``cfg``).

    Returns:
        The path written.
    """
    if graph.residual != "pre_norm":
        raise CortexmapError(f"MIB's graph files describe pre-norm sequential models; a {graph.residual} graph "
                             "(its heads read and write the residual otherwise) cannot be written in that format")
    full = per_head_graph(graph)
    values = -per_head_scores(graph, np.asarray(scores, dtype=np.float64))
    mask = prune(full, per_head_scores(graph, np.asarray(in_graph, dtype=bool)))
    names = mib_edge_names(full)
    alive = {n: False for n in full.senders}
    frame = full.frame()
    for i in np.flatnonzero(mask):
        alive[frame.at[i, "sender"]] = True
    nodes = {_mib_node(n): {"in_graph": alive[n]} for n in full.senders}  # after pruning: has a kept edge out
    nodes["logits"] = {"in_graph": True}
    edges = {names[i]: {"score": float(values[i]), "in_graph": bool(mask[i])} for i in _mib_order(full)}
    cfg = {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "parallel_attn_mlp": False, "d_model": int(d_model)}
    target = Path(path)
    write_json({"cfg": cfg, "nodes": nodes, "edges": edges}, target)
    return target


def read_mib_graph(path: str | Path, graph: Graph | None = None) -> tuple[Graph, np.ndarray, np.ndarray, dict[str, Any]]:
    """Read an EAP-IG / MIB graph file into cortexmap's per-head edge order.

    Args:
        path: a ``.json`` file as ``Graph.to_json`` writes it.
        graph: the model's graph to check the file against (grouped or not), or None.

    Returns:
        ``(per-head graph, scores, in_graph, cfg)``: scores in cortexmap's sign (estimates of
        patched - clean), the circuit as a boolean mask.

    Raises:
        CortexmapError: not such a file, a parallel-attention graph, a graph of another shape than
            ``graph``, or edges that are missing or not in the graph.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        cfg, edges = data["cfg"], data["edges"]
        shape = Graph(int(cfg["n_layers"]), int(cfg["n_heads"]), int(cfg["n_heads"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CortexmapError(f"{path} is not an EAP-IG / MIB graph file (JSON with cfg, nodes, edges): {err}") from None
    if cfg.get("parallel_attn_mlp"):
        raise CortexmapError(f"{path} describes a parallel attention + MLP model; cortexmap's graphs are sequential")
    if graph is not None and (graph.n_layers, graph.n_heads) != (shape.n_layers, shape.n_heads):
        raise CortexmapError(f"{path} is a graph of {shape.n_layers} layers x {shape.n_heads} heads, but the model has "
                             f"{graph.n_layers} x {graph.n_heads}; import a file made for this model")
    names = mib_edge_names(shape)
    missing = [n for n in names if n not in edges]
    extra = set(edges) - set(names)
    if missing or extra:
        bad = missing[:1] or sorted(extra)[:1]
        raise CortexmapError(f"{path} has {len(missing)} edges missing and {len(extra)} unknown (e.g. {bad[0]}) for a "
                             f"{shape.n_layers}-layer x {shape.n_heads}-head graph")
    scores = -np.array([float(edges[n]["score"]) for n in names])
    kept = np.array([bool(edges[n]["in_graph"]) for n in names])
    return shape, scores, kept, dict(cfg)

