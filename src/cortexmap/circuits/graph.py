"""The computational graph of a causal LM for edge-level circuits: nodes, receiver inputs, edges.

Nodes (names are strings; a head's name is ``str(HeadId(l, h))``):

* ``"emb"``: the embeddings, i.e. everything the first block reads (token and, where the model
  has them, position embeddings);
* ``"L{l}H{h}"``: query head ``h`` of layer ``l``, writing its output through its slice of the
  attention output projection;
* ``"M{l}"``: the MLP of layer ``l``;
* ``"logits"``: the unembedding, reading the last residual through the final norm.

A **sender** is a node that adds a term to the residual stream (emb, every head, every MLP). A
**receiver** is one input that reads the residual stream, named by a node and a ``kind``:

* ``("L{l}H{h}", "q")``: the query input of head ``h``;
* ``("L{l}KV{g}", "k")`` and ``("L{l}KV{g}", "v")``: the key and value inputs of KV group ``g``.
  With grouped-query attention the ``n_heads // n_kv_heads`` query heads of a group read one key
  and one value projection, so each is *one* receiver shared by the group, not one per query head
  (patching it changes what every head of the group attends with). Without GQA a group is one
  head (``g == h``);
* ``("M{l}", "in")`` and ``("logits", "in")``.

An **edge** ``sender -> receiver`` exists when the sender writes before the receiver reads, in a
pre-norm sequential block (``x += attn(norm(x)); x += mlp(norm(x))``): layer ``l``'s attention
inputs read emb and the heads and MLPs of layers ``< l``; ``M{l}`` reads those and the heads of
layer ``l``; the logits read every sender.

**Counting.** With ``L`` layers, ``H`` query heads and ``G`` KV groups, ``U(l) = 1 + l (H + 1)``
senders precede layer ``l``'s attention, and::

    edges = sum_l [U(l) (H + 2 G) + U(l) + H] + U(L)

A 30-layer, 9-head, 3-KV-group model (SmolLM2-135M) has 302 nodes and 70,651 edges; counting keys
and values per query head instead (the "ungrouped" view of TransformerLens-based tools such as
MIB's) would give 123,211 (``counts()["edges_ungrouped"]``). Circuit sizes given as fractions of
edges therefore depend on the convention: ours is the grouped one.

**Order.** Edges are receiver-major, in the order a forward pass reads the receivers (per layer:
``q`` of heads ``0..H-1``, ``k`` of groups ``0..G-1``, ``v`` of groups ``0..G-1``, then the
MLP; the logits last), and within a receiver sender-major in the order senders write (emb,
``L0H0..L0H{H-1}``, ``M0``, ``L1H0``, ...). Each receiver's edges form one contiguous block,
and that index is the column of every per-edge array in :mod:`cortexmap.circuits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

import numpy as np
import pandas as pd

from cortexmap.errors import CortexmapError
from cortexmap.heads import HeadId

KINDS: tuple[str, ...] = ("q", "k", "v", "in")


@dataclass(frozen=True, order=True)
class Edge:
    """A sender's direct contribution to one receiver input.

    Attributes:
        sender: ``"emb"``, ``"L{l}H{h}"`` or ``"M{l}"``.
        receiver: ``"L{l}H{h}"`` (kind ``q``), ``"L{l}KV{g}"`` (kinds ``k``, ``v``), ``"M{l}"`` or
            ``"logits"`` (kind ``in``).
        kind: one of :data:`KINDS`.
    """

    sender: str
    receiver: str
    kind: str

    def __str__(self) -> str:
        return f"{self.sender}->{self.receiver}.{self.kind}"


def node_layer(name: str, n_layers: int) -> int:
    """The layer of a node name: ``-1`` for emb, ``n_layers`` for the logits."""
    if name == "emb":
        return -1
    if name == "logits":
        return n_layers
    return int(name[1:].split("H")[0].split("K")[0]) if name[0] == "L" else int(name[1:])


@dataclass(frozen=True)
class Graph:
    """The edges of a model with ``n_layers`` layers of ``n_heads`` query heads in ``n_kv_heads`` groups."""

    n_layers: int
    n_heads: int
    n_kv_heads: int

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1 or self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise CortexmapError(
                f"a graph needs layers >= 1 and heads divisible by KV heads, got {self.n_layers} x "
                f"{self.n_heads} heads in {self.n_kv_heads} groups"
            )

    @classmethod
    def for_model(cls, handle: Any) -> "Graph":
        """The graph of a :class:`~cortexmap.models.ModelHandle`."""
        return cls(handle.n_layers, handle.n_heads, handle.n_kv_heads)

    # ---- senders -------------------------------------------------------------------------
    def n_before(self, layer: int) -> int:
        """``U(layer)``: senders writing before layer ``layer``'s attention reads (``layer = L``: all)."""
        return 1 + layer * (self.n_heads + 1)

    @cached_property
    def senders(self) -> tuple[str, ...]:
        """Every sender, in writing order (the column order inside a receiver's block)."""
        names = ["emb"]
        for layer in range(self.n_layers):
            names += [str(HeadId(layer, h)) for h in range(self.n_heads)] + [f"M{layer}"]
        return tuple(names)

    def head_sender(self, layer: int, head: int) -> int:
        """Index of head ``(layer, head)`` among :attr:`senders`."""
        return self.n_before(layer) + head

    def mlp_sender(self, layer: int) -> int:
        """Index of ``M{layer}`` among :attr:`senders`."""
        return self.n_before(layer) + self.n_heads

    # ---- receivers -----------------------------------------------------------------------
    @property
    def n_attention_receivers(self) -> int:
        """Receivers per attention layer: ``H`` queries, ``G`` keys, ``G`` values."""
        return self.n_heads + 2 * self.n_kv_heads

    def attention_receivers(self, layer: int) -> list[tuple[str, str]]:
        """``(node, kind)`` of layer ``layer``'s attention inputs, in edge order."""
        heads = [(str(HeadId(layer, h)), "q") for h in range(self.n_heads)]
        groups = [f"L{layer}KV{g}" for g in range(self.n_kv_heads)]
        return heads + [(g, "k") for g in groups] + [(g, "v") for g in groups]

    @cached_property
    def _starts(self) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        attn, mlp, at = [], [], 0
        for layer in range(self.n_layers):
            attn.append(at)
            at += self.n_attention_receivers * self.n_before(layer)
            mlp.append(at)
            at += self.n_before(layer) + self.n_heads
        return tuple(attn), tuple(mlp), at

    def attention_slice(self, layer: int) -> slice:
        """Edges into layer ``layer``'s attention: ``[H + 2G receivers] x [U(layer) senders]``, row-major."""
        start = self._starts[0][layer]
        return slice(start, start + self.n_attention_receivers * self.n_before(layer))

    def mlp_slice(self, layer: int) -> slice:
        """Edges into ``M{layer}``: its ``U(layer) + H`` senders."""
        start = self._starts[1][layer]
        return slice(start, start + self.n_before(layer) + self.n_heads)

    def logits_slice(self) -> slice:
        """Edges into the logits: every sender."""
        start = self._starts[2]
        return slice(start, start + len(self.senders))

    # ---- edges ---------------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return self.logits_slice().stop

    @cached_property
    def edges(self) -> tuple[Edge, ...]:
        """Every edge, in the order described in the module docstring."""
        out: list[Edge] = []
        for layer in range(self.n_layers):
            before = self.senders[: self.n_before(layer)]
            for node, kind in self.attention_receivers(layer):
                out += [Edge(s, node, kind) for s in before]
            out += [Edge(s, f"M{layer}", "in") for s in self.senders[: self.n_before(layer) + self.n_heads]]
        out += [Edge(s, "logits", "in") for s in self.senders]
        return tuple(out)

    @cached_property
    def _index(self) -> dict[Edge, int]:
        return {edge: i for i, edge in enumerate(self.edges)}

    def index(self, edges: Iterable[Edge]) -> np.ndarray:
        """Positions of ``edges`` in :attr:`edges`.

        Raises:
            CortexmapError: an edge that is not in this graph.
        """
        try:
            return np.array([self._index[e] for e in edges], dtype=np.int64)
        except KeyError as missing:
            raise CortexmapError(
                f"edge {missing.args[0]} is not in this {self.n_layers}-layer x {self.n_heads}-head graph "
                f"({self.n_kv_heads} KV groups); build edges from Graph.edges"
            ) from None

    def mask(self, edges: Iterable[Edge] | np.ndarray) -> np.ndarray:
        """A boolean mask over :attr:`edges`, from edges or from a mask (checked for length)."""
        if isinstance(edges, np.ndarray) and edges.dtype == bool:
            if edges.shape != (self.n_edges,):
                raise CortexmapError(f"an edge mask needs {self.n_edges} entries, got shape {edges.shape}")
            return edges.copy()
        out = np.zeros(self.n_edges, dtype=bool)
        out[self.index(edges)] = True
        return out

    def counts(self) -> dict[str, int]:
        """Nodes, senders, receivers and edges (by receiver kind, and in the ungrouped convention)."""
        before = sum(self.n_before(layer) for layer in range(self.n_layers))
        attention_ungrouped = 3 * self.n_heads * before
        mlp = before + self.n_layers * self.n_heads
        logits = len(self.senders)
        return {
            "nodes": len(self.senders) + 1,
            "senders": len(self.senders),
            "receivers": self.n_layers * (self.n_attention_receivers + 1) + 1,
            "edges": self.n_edges,
            "edges_q": self.n_heads * before,
            "edges_k": self.n_kv_heads * before,
            "edges_v": self.n_kv_heads * before,
            "edges_mlp": mlp,
            "edges_logits": logits,
            "edges_ungrouped": attention_ungrouped + mlp + logits,
        }

    def frame(self) -> pd.DataFrame:
        """One row per edge, in edge order: ``sender, receiver, kind, sender_layer, receiver_layer``.

        Layers are ``-1`` for emb and ``n_layers`` for the logits.
        """
        layer = {name: node_layer(name, self.n_layers) for name in self.senders}
        rows = [(e.sender, e.receiver, e.kind) for e in self.edges]
        out = pd.DataFrame(rows, columns=["sender", "receiver", "kind"])
        out["sender_layer"] = out["sender"].map(layer).astype(int)
        out["receiver_layer"] = [node_layer(r, self.n_layers) for r in out["receiver"]]
        return out
