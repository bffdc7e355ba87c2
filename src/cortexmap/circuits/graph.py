"""The computational graph of a causal LM for edge-level circuits: nodes, receiver inputs, edges.

Nodes (names are strings; a head's name is ``str(HeadId(l, h))``):

* ``"emb"``: the embeddings, i.e. everything the first block reads (token and, where the model
  has them, position embeddings);
* ``"L{l}H{h}"``: query head ``h`` of layer ``l``, writing its output through its slice of the
  attention output projection;
* ``"A{l}"`` (sandwich blocks only): layer ``l``'s attention output after its own norm, the one
  term the layer's attention adds to the residual;
* ``"M{l}"``: the MLP of layer ``l`` (on sandwich blocks, after its own norm);
* ``"logits"``: the unembedding, reading the last residual through the final norm.

A **sender** is a node that writes a term read downstream (emb, every head, every MLP, ``A{l}``).
A **receiver** is one input that reads such terms, named by a node and a ``kind``:

* ``("L{l}H{h}", "q")``: the query input of head ``h``;
* ``("L{l}KV{g}", "k")`` and ``("L{l}KV{g}", "v")``: the key and value inputs of KV group ``g``.
  With grouped-query attention the ``n_heads // n_kv_heads`` query heads of a group read one key
  and one value projection, so each is *one* receiver shared by the group, not one per query head
  (patching it changes what every head of the group attends with). Without GQA a group is one
  head (``g == h``);
* ``("A{l}", "in")`` (sandwich), ``("M{l}", "in")`` and ``("logits", "in")``.

Which senders a receiver reads is fixed by the block order (``residual``, one of
:data:`RESIDUALS`, read from the geometry row by :meth:`Graph.for_model`):

* ``"pre_norm"`` (``x += attn(norm(x)); x += mlp(norm(x))``): layer ``l``'s attention inputs read
  emb and the heads and MLPs of layers ``< l``; ``M{l}`` reads those and the heads of layer ``l``;
  the logits read every sender;
* ``"parallel"`` (GPT-NeoX, ``x += attn(norm(x)) + mlp(norm'(x))``): as pre-norm, except that
  ``M{l}`` reads the same senders as layer ``l``'s attention (not layer ``l``'s heads);
* ``"sandwich"`` (Gemma 2/3, ``x += norm_a(attn(norm(x))); x += norm_m(mlp(norm'(x)))``): the
  heads of layer ``l`` are summed and normalized together before anything reaches the residual,
  so each head sends to ``A{l}`` only (``A{l}`` reads its layer's heads), and the residual
  senders are emb, ``A{l}`` and ``M{l}``: layer ``l``'s attention inputs read emb and ``A``, ``M``
  of layers ``< l``; ``M{l}`` reads those and ``A{l}``; the logits read emb and every ``A``, ``M``.

**Counting.** On a pre-norm graph with ``L`` layers, ``H`` query heads and ``G`` KV groups,
``U(l) = 1 + l (H + 1)`` senders precede layer ``l``'s attention, and::

    edges = sum_l [U(l) (H + 2 G) + U(l) + H] + U(L)

A 30-layer, 9-head, 3-KV-group model (SmolLM2-135M) has 302 nodes and 70,651 edges; counting keys
and values per query head instead (the "ungrouped" view of TransformerLens-based tools such as
MIB's) would give 123,211 (``counts()["edges_ungrouped"]``). Circuit sizes given as fractions of
edges therefore depend on the convention: ours is the grouped one. A sandwich graph is much
smaller, since heads reach the residual only through ``A{l}``: Gemma-3-270M (18 layers, 4 heads,
1 KV group) has 2,395 edges.

**Order.** Edges are receiver-major, in the order a forward pass reads the receivers (per layer:
``q`` of heads ``0..H-1``, ``k`` of groups ``0..G-1``, ``v`` of groups ``0..G-1``, then ``A{l}``
on sandwich graphs, then the MLP; the logits last), and within a receiver sender-major in the
order senders write (emb, ``L0H0..L0H{H-1}``, [``A0``,] ``M0``, ``L1H0``, ...). Each
:class:`ReceiverBlock`'s edges form one contiguous block, and that index is the column of every
per-edge array in :mod:`cortexmap.circuits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

import numpy as np
import pandas as pd

from cortexmap.errors import CortexmapError, UnsupportedArchitectureError
from cortexmap.heads import HeadId

KINDS: tuple[str, ...] = ("q", "k", "v", "in")
RESIDUALS: tuple[str, ...] = ("pre_norm", "parallel", "sandwich")


@dataclass(frozen=True, order=True)
class Edge:
    """A sender's direct contribution to one receiver input.

    Attributes:
        sender: ``"emb"``, ``"L{l}H{h}"``, ``"A{l}"`` or ``"M{l}"``.
        receiver: ``"L{l}H{h}"`` (kind ``q``), ``"L{l}KV{g}"`` (kinds ``k``, ``v``), ``"A{l}"``,
            ``"M{l}"`` or ``"logits"`` (kind ``in``).
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
class SenderGroup:
    """Consecutive senders written by one module: one chunk of a difference store.

    Attributes:
        kind: ``"emb"``, ``"heads"`` (one layer's query heads), ``"attn"`` (a sandwich layer's
            normalized attention output) or ``"mlp"``.
        layer: the layer (``-1`` for emb).
        first: index of its first sender in :attr:`Graph.senders`.
        count: senders in the group (``n_heads`` for heads, else 1).
    """

    kind: str
    layer: int
    first: int
    count: int


@dataclass(frozen=True)
class ReceiverBlock:
    """Receivers that read the same senders; their edges are one contiguous ``[receivers x senders]`` block.

    Attributes:
        kind: ``"attention"`` (a layer's q, k and v inputs), ``"attn"`` (a sandwich layer's
            attention-output norm), ``"mlp"`` or ``"logits"``.
        layer: the layer (``n_layers`` for the logits).
        receivers: ``(node, kind)`` per receiver, in edge order.
        groups: the :class:`SenderGroup` indices read, in sender order (the column order).
        n_up: senders read (the block's columns).
        start: position of the block's first edge.
    """

    kind: str
    layer: int
    receivers: tuple[tuple[str, str], ...]
    groups: tuple[int, ...]
    n_up: int
    start: int

    @property
    def edges(self) -> slice:
        """The block's edges, row-major ``[receiver, sender]``."""
        return slice(self.start, self.start + len(self.receivers) * self.n_up)


@dataclass(frozen=True)
class Graph:
    """The edges of a model with ``n_layers`` layers of ``n_heads`` query heads in ``n_kv_heads`` groups.

    ``residual`` is the block order of :data:`RESIDUALS` (see the module docstring).
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    residual: str = "pre_norm"

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1 or self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise CortexmapError(
                f"a graph needs layers >= 1 and heads divisible by KV heads, got {self.n_layers} x "
                f"{self.n_heads} heads in {self.n_kv_heads} groups"
            )
        if self.residual not in RESIDUALS:
            raise CortexmapError(f"unknown residual order {self.residual!r}: use one of {', '.join(RESIDUALS)}")

    @classmethod
    def for_model(cls, handle: Any) -> "Graph":
        """The graph of a :class:`~cortexmap.models.ModelHandle`.

        Raises:
            UnsupportedArchitectureError: a block order no graph describes (post-norm, or no block layout).
        """
        block = handle.geometry.block
        residual = None if block is None else block.residual_of(handle.model.config)
        if residual not in RESIDUALS:
            raise UnsupportedArchitectureError(
                f"{handle.model_type} has {'no block layout' if residual is None else f'a {residual} block'}; "
                f"edge-level circuits need one of {', '.join(RESIDUALS)} (see cortexmap.circuits.layout)"
            )
        return cls(handle.n_layers, handle.n_heads, handle.n_kv_heads, residual)

    # ---- senders -------------------------------------------------------------------------
    @cached_property
    def sender_groups(self) -> tuple[SenderGroup, ...]:
        """Every sender group, in writing order: emb, then per layer its heads, ``A{l}`` (sandwich) and ``M{l}``."""
        kinds = ("heads", "attn", "mlp") if self.residual == "sandwich" else ("heads", "mlp")
        out, at = [SenderGroup("emb", -1, 0, 1)], 1
        for layer in range(self.n_layers):
            for kind in kinds:
                n = self.n_heads if kind == "heads" else 1
                out.append(SenderGroup(kind, layer, at, n))
                at += n
        return tuple(out)

    @cached_property
    def senders(self) -> tuple[str, ...]:
        """Every sender, in writing order (the column order inside a receiver's block)."""
        prefix = {"emb": "emb", "attn": "A", "mlp": "M"}
        names: list[str] = []
        for g in self.sender_groups:
            names += ([str(HeadId(g.layer, h)) for h in range(self.n_heads)] if g.kind == "heads"
                      else [prefix[g.kind] + ("" if g.kind == "emb" else str(g.layer))])
        return tuple(names)

    def n_before(self, layer: int) -> int:
        """Senders written before layer ``layer``'s heads (``layer = L``: all of them).

        On a pre-norm or parallel graph these are exactly what layer ``layer``'s attention reads, ``U(layer)``.
        """
        return 1 + layer * (self.n_heads + (2 if self.residual == "sandwich" else 1))

    def head_sender(self, layer: int, head: int) -> int:
        """Index of head ``(layer, head)`` among :attr:`senders`."""
        return self.n_before(layer) + head

    def mlp_sender(self, layer: int) -> int:
        """Index of ``M{layer}`` among :attr:`senders`."""
        return self.n_before(layer + 1) - 1

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

    def _reads(self, kind: str, layer: int) -> tuple[int, ...]:
        """Sender groups read by the receivers of ``kind`` in ``layer`` (the rules of the module docstring)."""
        groups = self.sender_groups
        if kind == "attn":  # a sandwich layer's attention-output norm reads that layer's heads only
            return tuple(i for i, g in enumerate(groups) if g.kind == "heads" and g.layer == layer)
        residual = [i for i, g in enumerate(groups) if not (self.residual == "sandwich" and g.kind == "heads")]
        if kind == "attention" or (kind == "mlp" and self.residual == "parallel"):
            return tuple(i for i in residual if groups[i].layer < layer)
        if kind == "mlp":
            return tuple(i for i in residual if groups[i].layer < layer or
                         (groups[i].layer == layer and groups[i].kind != "mlp"))
        return tuple(residual)

    @cached_property
    def receiver_blocks(self) -> tuple[ReceiverBlock, ...]:
        """Every receiver block, in edge order: per layer attention, ``A{l}`` (sandwich), MLP; the logits last."""
        plan = []
        for layer in range(self.n_layers):
            plan.append(("attention", layer, tuple(self.attention_receivers(layer))))
            if self.residual == "sandwich":
                plan.append(("attn", layer, ((f"A{layer}", "in"),)))
            plan.append(("mlp", layer, ((f"M{layer}", "in"),)))
        plan.append(("logits", self.n_layers, (("logits", "in"),)))
        out, at = [], 0
        for kind, layer, receivers in plan:
            groups = self._reads(kind, layer)
            n_up = sum(self.sender_groups[g].count for g in groups)
            out.append(ReceiverBlock(kind, layer, receivers, groups, n_up, at))
            at += len(receivers) * n_up
        return tuple(out)

    @cached_property
    def _blocks(self) -> dict[tuple[str, int], ReceiverBlock]:
        return {(b.kind, b.layer): b for b in self.receiver_blocks}

    def block(self, kind: str, layer: int | None = None) -> ReceiverBlock:
        """The receiver block of ``kind`` (``"attention"``, ``"attn"``, ``"mlp"``, ``"logits"``) in ``layer``."""
        key = (kind, self.n_layers if layer is None else layer)
        if key not in self._blocks:
            raise CortexmapError(f"this {self.residual} graph has no {kind} receivers in layer {key[1]}")
        return self._blocks[key]

    def attention_slice(self, layer: int) -> slice:
        """Edges into layer ``layer``'s attention: ``[H + 2G receivers] x [its senders]``, row-major."""
        return self.block("attention", layer).edges

    def mlp_slice(self, layer: int) -> slice:
        """Edges into ``M{layer}``."""
        return self.block("mlp", layer).edges

    def logits_slice(self) -> slice:
        """Edges into the logits."""
        return self.block("logits").edges

    # ---- edges ---------------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return self.receiver_blocks[-1].edges.stop

    @cached_property
    def edges(self) -> tuple[Edge, ...]:
        """Every edge, in the order described in the module docstring."""
        out: list[Edge] = []
        for block in self.receiver_blocks:
            groups = [self.sender_groups[g] for g in block.groups]
            senders = [s for g in groups for s in self.senders[g.first:g.first + g.count]]
            for node, kind in block.receivers:
                out += [Edge(s, node, kind) for s in senders]
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
        blocks = self.receiver_blocks
        attention = sum(b.n_up for b in blocks if b.kind == "attention")
        per_kind = {kind: sum(len(b.receivers) * b.n_up for b in blocks if b.kind == kind) for kind in ("mlp", "attn")}
        logits = blocks[-1].n_up
        out = {
            "nodes": len(self.senders) + 1,
            "senders": len(self.senders),
            "receivers": sum(len(b.receivers) for b in blocks),
            "edges": self.n_edges,
            "edges_q": self.n_heads * attention,
            "edges_k": self.n_kv_heads * attention,
            "edges_v": self.n_kv_heads * attention,
            "edges_mlp": per_kind["mlp"],
            "edges_logits": logits,
            "edges_ungrouped": 3 * self.n_heads * attention + per_kind["mlp"] + per_kind["attn"] + logits,
        }
        if self.residual == "sandwich":
            out["edges_attn"] = per_kind["attn"]
        return out

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
