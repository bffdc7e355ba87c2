"""The regulator test on edges: does ablating a head change other heads' query/key composition more on demanding inputs?

A *regulator* (the seed's "metacognitive" heads) is a claim about edges: ablating it should change
how other heads read each other (their query and key inputs), and more so when the input is
demanding. :func:`measure_regulation` measures exactly that, on matched easy / demanding prompts
(:func:`~cortexmap.tasks.conditions.condition_sets`: the ``i``-th prompts of the two sides are a
pair, and the two have the same token length; pairs of unequal length are refused, since a
longer prompt gives every head more positions to write to):

1. **The decision.** Condition prompts carry no answers, so each prompt's metric is the model's
   own decision: the logit difference between its top-1 and top-2 next tokens on the intact model
   (kept fixed when heads are ablated). Prompts are run in groups of one token length, often of
   one prompt, so patched edges carry zero (a batch mean would be the prompt itself).
2. **The composition edges** ``E``: the ``n_edges`` query and key edges (``kind`` ``q`` / ``k``)
   with the largest mean ``|EAP score|`` over both sides (zero ablation of the edge), among those
   whose receiver lies above the candidate's layer and whose sender is not the candidate.
3. **Exact effects.** Every edge of ``E`` is path-patched alone (zero: the receiver loses the
   sender's direct contribution; this defines the edge's effect), per prompt, on the intact model
   and again with the head ablated; for prompt ``i`` the head's *change* is
   ``sum_e |effect_ablated(e, i) - effect_intact(e, i)|`` and its *scale* ``sum_e |effect_intact(e, i)|``.
4. **The head's ablation** is ``mean`` by default (counterfactual): its output replaced by its
   mean output over every token of every prompt of both sides, pooled, so the replacement does not
   depend on the side (:func:`cortexmap.sweep.influence.condition_means`, applied with
   :func:`~cortexmap.interventions.intervene`). ``zero`` is off-distribution and kept for comparison.
5. **Baseline heads, matched in layer**: ``n_random`` heads drawn (seeded) from the candidate's own
   layer and, when it has too few, from the nearest layers below it, one layer at a time; never a
   head above the candidate, and never the candidate or a head that sends or receives an edge of
   ``E`` (ablating one would change its own edges trivially). A lower layer contributes at least
   two heads when it contributes any (so one more than ``n_random`` may be drawn), since the test
   compares each head with the others of its layer. Ablating an early head moves more of the model
   than ablating a late one, so heads drawn from the whole model would not be a fair baseline.

The statistics (relative change per side, demanding - easy with a paired bootstrap interval, the
candidate against the baseline heads of its layer) are :mod:`cortexmap.analysis.regulation`'s;
the per-prompt rows are stored as ``regulation.parquet`` (docs/schema.md).

Cost: ``(1 + n_random)`` ablated runs of ``n_edges`` single-edge patches per side, plus one intact
run and one pass over the prompts for the means; each single-edge patch is one rewired forward of
the batch rows it shares a pass with.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from cortexmap.circuits.attribution import edge_scores
from cortexmap.circuits.graph import Graph
from cortexmap.circuits.patching import PathPatcher
from cortexmap.errors import CortexmapError
from cortexmap.heads import HeadId, as_head
from cortexmap.interventions import intervene
from cortexmap.sweep.influence import condition_means
from cortexmap.tasks.core import EncodedBatch
from cortexmap.tasks.evaluate import last_logits

SIDES = ("easy", "demanding")
ABLATIONS = ("mean", "zero")
CANDIDATE, BASELINE = "candidate", "baseline"


@dataclass
class RegulationResult:
    """What :func:`measure_regulation` measured.

    Attributes:
        prompts: one row per (ablated head, side, pair): ``candidate, condition, head, role``
            (``candidate`` or ``baseline``), ``side`` (``easy`` / ``demanding``), ``pair`` (index of
            the matched pair), ``change`` and ``scale`` (module docstring) and ``n_edges``: the
            input of :func:`cortexmap.analysis.regulation.regulation_test`; ``ablation`` says how
            the head was ablated.
        edges: the composition edges measured, ``"S -> R.kind"``.
        arguments: what was asked (JSON-ready).
        timings: seconds per stage and ``total_s``.
    """

    prompts: pd.DataFrame
    edges: list[str]
    arguments: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def decision_batches(handle: Any, prompts: list[str]) -> list[EncodedBatch]:
    """Prompts grouped by token length, each row's target / foil its top-1 / top-2 next token on the model."""
    groups: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for i, text in enumerate(prompts):
        ids = handle.tokenizer(text, return_tensors="pt")["input_ids"][0]
        groups.setdefault(len(ids), []).append((i, ids))
    out = []
    for _, rows in sorted(groups.items()):
        ids = torch.stack([r[1] for r in rows]).to(handle.device)
        with torch.no_grad():
            top = last_logits(handle.model, ids).topk(2, dim=-1).indices.cpu()
        out.append(EncodedBatch(ids.cpu(), None, top[:, 0], top[:, 1], [r[0] for r in rows]))
    return out


def composition_edges(graph: Graph, scores: np.ndarray, head: HeadId, n_edges: int) -> np.ndarray:
    """Positions of the ``n_edges`` q / k edges above ``head``'s layer, not sent by it, by ``|score|``.

    On sandwich-norm graphs the head's layer output ``A{l}`` holds the head, so its edges are not eligible either.
    """
    frame = graph.frame()
    sends = {s: head in _nodes_heads(graph, s) for s in graph.senders}
    eligible = (frame["kind"].isin(["q", "k"]) & (frame["receiver_layer"] > head.layer)
                & ~frame["sender"].map(sends)).to_numpy()
    index = np.flatnonzero(eligible)
    if len(index) == 0:
        raise CortexmapError(f"no query or key edge lies above {head}: pick a head below the last layer")
    order = np.argsort(-np.abs(scores[index]), kind="stable")
    return index[order[:n_edges]]


def _nodes_heads(graph: Graph, node: str) -> set[HeadId]:
    """The query heads a node is or holds: a head itself, every head of a KV group or of a sandwich layer's
    attention output ``A{l}`` (their sum, normalized), none for emb / MLPs / logits."""
    if node[0] == "A":
        return {HeadId(int(node[1:]), h) for h in range(graph.n_heads)}
    if "KV" in node:
        layer, group = (int(x) for x in node[1:].split("KV"))
        size = graph.n_heads // graph.n_kv_heads
        return {HeadId(layer, h) for h in range(group * size, (group + 1) * size)}
    return {HeadId.parse(node)} if "H" in node else set()


def baseline_heads(graph: Graph, head: HeadId, edges: list[Any], n: int, seed: int) -> list[HeadId]:
    """``n`` heads (seeded) matched in layer to ``head``: its own layer first, then the nearest layers below.

    Never a head above ``head``, ``head`` itself, or a head that sends or receives one of ``edges``
    (ablating it would change its own edges trivially). A lower layer that contributes contributes
    at least two heads, so up to ``n + 1`` heads may be returned (module docstring).
    """
    touched = {h for e in edges for node in (e.sender, e.receiver) for h in _nodes_heads(graph, node)}
    rng = random.Random(f"regulation:{head}:{seed}")
    drawn: list[HeadId] = []
    for layer in range(head.layer, -1, -1):
        need = n - len(drawn)
        if need <= 0:
            break
        pool = [HeadId(layer, h) for h in range(graph.n_heads) if HeadId(layer, h) != head]
        pool = [h for h in pool if h not in touched]
        if layer != head.layer and need == 1 and len(pool) >= 2:
            need = 2  # a lone head of its layer could not be compared within its layer
        drawn += rng.sample(pool, min(need, len(pool)))
    return drawn


def _effects(handle: Any, batches: list[EncodedBatch], edges: np.ndarray, ablate: HeadId | None,
             means: dict[int, torch.Tensor] | None) -> np.ndarray:
    """``[n_prompts, n_edges]`` exact single-edge effects (zero-patched edges), rows in prompt order.

    ``ablate`` is mean-ablated with ``means`` when given, else zero-ablated.
    """
    n = sum(len(b) for b in batches)
    out = np.empty((n, len(edges)))
    for batch in batches:
        if ablate is None:
            out[batch.indices] = PathPatcher(handle, batch, "zero").edge_effects(edges)
            continue
        edit = (intervene(handle, ablate=[ablate]) if means is None
                else intervene(handle, mean_ablate=[ablate], reference={ablate.layer: means[ablate.layer]}))
        with edit:
            out[batch.indices] = PathPatcher(handle, batch, "zero").edge_effects(edges)
    return out


def measure_regulation(handle: Any, easy: list[str], demanding: list[str], head: Any, *, n_random: int = 19,
                       n_edges: int = 16, seed: int = 0, condition: str = "custom", ablation: str = "mean",
                       progress: Callable[[str], None] | None = None) -> RegulationResult:
    """Measure how ablating ``head`` (and ``n_random`` baseline heads) changes the composition edges per side.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of a supported architecture.
        easy: the easy prompts; ``easy[i]`` is matched to ``demanding[i]``.
        demanding: the demanding prompts.
        head: the candidate regulator (``"L12H4"`` or ``(12, 4)``).
        n_random: baseline heads, matched in layer (module docstring).
        n_edges: composition edges to measure.
        seed: seed of the baseline draw.
        condition: a name for the prompts' contrast (``reasoning``, ... for the built-in sets).
        ablation: ``"mean"`` (counterfactual, the default) or ``"zero"`` (off-distribution).
        progress: called with a short note as each stage starts.

    Returns:
        The :class:`RegulationResult`.

    Raises:
        CortexmapError: unequal or empty sides, a pair of unequal token length, ``n_edges < 1``,
            an unknown ablation, or no edge above the head.
        UnsupportedArchitectureError: see :mod:`cortexmap.circuits.layout`.
    """
    say = progress or (lambda message: None)
    if not easy or len(easy) != len(demanding):
        raise CortexmapError(f"easy and demanding prompts must be matched pairs: got {len(easy)} and {len(demanding)}")
    if n_edges < 1 or n_random < 0:
        raise CortexmapError(f"n_edges must be >= 1 and n_random >= 0, got {n_edges} and {n_random}")
    if ablation not in ABLATIONS:
        raise CortexmapError(f"unknown ablation {ablation!r}: use one of {', '.join(ABLATIONS)}")
    for i, (a, b) in enumerate(zip(easy, demanding)):
        n_a, n_b = (len(handle.tokenizer(t)["input_ids"]) for t in (a, b))
        if n_a != n_b:
            raise CortexmapError(f"pair {i} has {n_a} easy and {n_b} demanding tokens: matched pairs must have equal "
                                 "token length (condition_sets pads them)")
    head = as_head(head)
    graph = Graph.for_model(handle)
    if not (0 <= head.layer < graph.n_layers and 0 <= head.head < graph.n_heads):
        raise CortexmapError(f"{head} is not a head of this model ({graph.n_layers} layers x {graph.n_heads} heads)")
    start = time.perf_counter()
    sides = {side: decision_batches(handle, prompts) for side, prompts in zip(SIDES, (easy, demanding))}
    say(f"scoring {graph.n_edges} edges with EAP on {2 * len(easy)} prompts")
    scores = np.concatenate([edge_scores(handle, b, "eap", 1, "zero") for bs in sides.values() for b in bs])
    edges = composition_edges(graph, scores.mean(0), head, n_edges)
    names = [f"{graph.edges[i].sender} -> {graph.edges[i].receiver}.{graph.edges[i].kind}" for i in edges]
    drawn = baseline_heads(graph, head, [graph.edges[i] for i in edges], n_random, seed)
    heads = [(head, CANDIDATE)] + [(h, BASELINE) for h in drawn]
    means = condition_means(handle, {"easy": list(easy), "demanding": list(demanding)}) if ablation == "mean" else None
    timings = {"screen_s": round(time.perf_counter() - start, 3)}
    tic = time.perf_counter()
    frames = []
    for side, batches in sides.items():
        intact = _effects(handle, batches, edges, None, None)
        scale = np.abs(intact).sum(1)
        for i, (ablated, role) in enumerate(heads, 1):
            say(f"{side} prompts: {ablation}-ablating {ablated} ({role}, {i}/{len(heads)}), {len(edges)} edges exactly")
            change = np.abs(_effects(handle, batches, edges, ablated, means) - intact).sum(1)
            frames.append(pd.DataFrame({"candidate": str(head), "condition": condition, "head": str(ablated),
                                        "role": role, "side": side, "pair": np.arange(len(change)),
                                        "change": change, "scale": scale, "n_edges": len(edges),
                                        "ablation": ablation}))
    timings["measure_s"] = round(time.perf_counter() - tic, 3)
    timings["total_s"] = round(time.perf_counter() - start, 3)
    arguments = {"head": str(head), "condition": condition, "n_random": n_random, "n_edges": int(len(edges)),
                 "seed": seed, "n_pairs": len(easy), "ablation": ablation,
                 "baseline_heads": [str(h) for h in drawn]}
    return RegulationResult(pd.concat(frames, ignore_index=True), names, arguments, timings)
