"""A task's circuit end to end: screen every edge, verify the top ones exactly, judge rankings by faithfulness.

:func:`trace_circuit` runs, over every equal-length batch of a task (per-prompt arrays concatenated
across batches, prompts named by their pair index):

1. **screen**: EAP and EAP-IG scores of every edge (:mod:`~cortexmap.circuits.attribution`); both
   are rankings of their own, and the ``screen`` one orders the edges that are not verified;
2. **verify**: the exact path-patching effect of the top ``verify`` edges by ``|screen score|``
   (default: twice the smallest evaluated circuit, so that exact effects re-rank what it keeps),
   per prompt, with 95% bootstrap intervals over all prompts (:class:`~cortexmap.circuits.patching.PathPatcher`);
3. **curves**: MIB faithfulness curves (:mod:`~cortexmap.circuits.curves`) of four rankings:
   ``verified`` (the verified edges first, by ``|exact effect|``, then the rest by ``|screen score|``),
   ``eap``, ``eap-ig`` and ``n_random`` seeded ``random`` ones;
4. **summary**: per ranking CPR, CMD and the smallest circuit reaching ``target`` (80%) faithfulness,
   each with its bootstrap interval over prompts (:func:`~cortexmap.circuits.faithfulness.summarize_curves`).

"The circuit" of the task is the smallest one reaching the target over the three rankings, the
first of ``verified``, ``eap``, ``eap-ig`` on a tie (``circuit_method`` says which; None when no
ranking reaches it on the grid; it can be the full model, 100% of the edges, when only that does). Its heads are :attr:`CircuitResult.top_heads`.

Cost. A circuit evaluation is one rewired forward of the batch (about 10 s for 16 IOI prompts
on SmolLM2-135M on a 2-core CPU), so the default grid, :data:`DEFAULT_FRACTIONS`, is 7 of MIB's 10
points: 0.1%, 0.5%, 1%, 5%, 10%, 50%, 100% (it drops 0.2%, 2% and 20%). The 100% point is not
evaluated: keeping every edge is the clean model (the patching tests check it to 1e-5), so its rows
are the ``full`` reference's. CPR and CMD on this grid are trapezoids over fewer points than MIB's,
so compare them across rankings of one run, not with MIB's published numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cortexmap.circuits.attribution import edge_scores
from cortexmap.circuits.curves import faithfulness_curves
from cortexmap.circuits.faithfulness import (
    circuit_sizes,
    curve_table,
    rank_edges,
    summarize_curves,
)
from cortexmap.circuits.graph import Graph, node_layer
from cortexmap.circuits.patching import PathPatcher
from cortexmap.errors import CortexmapError
from cortexmap.tasks.core import EncodedBatch, Task, encode_one_position
from cortexmap.stats import bootstrap_cis

DEFAULT_FRACTIONS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)
SCREENS: tuple[str, ...] = ("eap", "eap-ig")
MIN_VERIFY = 32
RANKINGS: tuple[str, ...] = ("verified", "eap", "eap-ig")  # plus "random"
EXACT, ESTIMATED = "exact", "estimated"


@dataclass
class CircuitResult:
    """What :func:`trace_circuit` found for one task.

    Attributes:
        edges: one row per edge in graph order: ``sender, receiver, kind, sender_layer,
            receiver_layer, score`` (mean screen score), ``effect`` (the exact effect where
            verified, else the screen score), ``ci_low, ci_high`` (95% bootstrap over prompts;
            NaN for estimates), ``method`` (``"exact"`` or ``"estimated"``), ``rank`` (position
            in the ``verified`` ranking, 0 first) and ``in_circuit``.
        curves: the per-prompt curve table (``method, draw, fraction, n_edges, prompt, metric``,
            the ``full`` / ``empty`` references) plus ``faithfulness`` of each circuit.
        summary: one row per ``(method, draw)``: ``cpr, cmd, smallest`` (a fraction; inf: not
            reached) with ``_low`` / ``_high`` bounds, ``smallest_n_edges`` with its bounds in edges
            (-1: not reached), ``n_prompts`` and ``target``.
        top_heads: the nodes on the circuit's kept edges (heads ``L{l}H{h}``, KV groups
            ``L{l}KV{g}``, MLPs ``M{l}``): ``node, layer, n_edges, weight`` (sum of the kept edges'
            ``|score|`` in the circuit's ranking), ``to_logits`` and ``logits_weight`` (``|score|`` of
            its kept edge into the logits, 0 without one), heaviest first.
        circuit_method: the ranking the circuit comes from, or None when none reached the target.
        arguments: what was asked (JSON-ready).
        timings: seconds per stage and ``total_s``.
        prompts: the verified edges' exact effects per prompt: ``sender, receiver, kind, prompt,
            effect, clean`` (the prompt's clean metric; > 0: the model gets it right), the input of
            :func:`cortexmap.analysis.mistakes.errors_of_rows` (why the model errs).
    """

    edges: pd.DataFrame
    curves: pd.DataFrame
    summary: pd.DataFrame
    top_heads: pd.DataFrame
    circuit_method: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    prompts: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def end_heads(self) -> list[str]:
        """The circuit's query heads that write straight into the logits, by that edge's ``|score|``."""
        rows = self.top_heads[self.top_heads["to_logits"] & self.top_heads["node"].str.contains("H")]
        return list(rows.sort_values("logits_weight", ascending=False, kind="stable")["node"])


def _check(ablation: str, screen: str, verify: int | None, fractions: Sequence[float], n_random: int) -> None:
    if screen not in SCREENS:
        raise CortexmapError(f"unknown screen {screen!r}: use one of {', '.join(SCREENS)}")
    if (verify is not None and verify < 0) or n_random < 0:
        raise CortexmapError(f"verify and n_random must be >= 0, got verify={verify}, n_random={n_random}")
    if len(fractions) < 2:
        raise CortexmapError(f"a faithfulness curve needs at least two circuit sizes, got {list(fractions)}")
    circuit_sizes(1, fractions)  # raises on a bad grid
    if ablation not in ("corrupt", "mean"):
        raise CortexmapError(f"unknown ablation {ablation!r}: use corrupt or mean")


def _batches(handle: Any, task: Task | Sequence[EncodedBatch], max_batch: int | None) -> list[EncodedBatch]:
    if isinstance(task, Task):
        if handle.tokenizer is None:
            raise CortexmapError("this model has no tokenizer to encode the task; pass encoded batches instead")
        return encode_one_position(task, handle.tokenizer, max_batch)[0]  # one-token answers, equal lengths
    batches = list(task)
    if not batches:
        raise CortexmapError("the task has no prompts; give it at least one pair")
    return batches


def _verified_ranking(screen: np.ndarray, verified: np.ndarray, effects: np.ndarray) -> np.ndarray:
    """Scores whose ``|.|`` order puts verified edges first (by ``|effect|``), the rest by ``|screen|``."""
    out = np.abs(screen).astype(np.float64)
    out[verified] = out.max(initial=0.0) + 1.0 + np.abs(effects)
    return out


def _with_full_point(curves: pd.DataFrame, fractions: Sequence[float], n_edges: int) -> pd.DataFrame:
    """Add the 100% circuit of every ranking: the full model's metric (not evaluated again)."""
    if fractions[-1] != 1.0:
        return curves
    full = curves[curves["method"] == "full"]
    extra = []
    for (method, draw), _ in curves[~curves["method"].isin(["full", "empty"])].groupby(["method", "draw"]):
        extra.append(full.assign(method=method, draw=draw, fraction=1.0, n_edges=n_edges))
    return pd.concat([curves, *extra], ignore_index=True)


def _faithfulness_column(curves: pd.DataFrame) -> pd.DataFrame:
    table = curve_table(curves).drop(columns="n_edges")
    out = curves.merge(table, on=["method", "draw", "fraction"], how="left")
    out.loc[out["method"] == "full", "faithfulness"] = 1.0
    out.loc[out["method"] == "empty", "faithfulness"] = 0.0
    return out


def _summary(curves: pd.DataFrame, n_edges: int, target: float, seed: int) -> pd.DataFrame:
    summary = summarize_curves(curves, target=target, seed=seed)
    for bound in ("low", "high"):
        values = summary[f"smallest_{bound}"].to_numpy(float)
        finite = np.isfinite(values)
        sizes = np.full(len(values), -1, dtype=np.int64)
        sizes[finite] = np.floor(values[finite] * n_edges + 1e-9).astype(np.int64)
        summary[f"smallest_n_edges_{bound}"] = sizes
    order = {name: i for i, name in enumerate((*RANKINGS, "random"))}
    return summary.sort_values(["method", "draw"], key=lambda c: c.map(order) if c.name == "method" else c,
                               ignore_index=True)


def _pick_circuit(summary: pd.DataFrame) -> tuple[str | None, int]:
    reached = summary[(summary["method"] != "random") & (summary["smallest_n_edges"] >= 0)]
    if reached.empty:
        return None, 0
    row = reached.sort_values("smallest_n_edges", kind="stable").iloc[0]  # summary rows: verified, eap, eap-ig
    return str(row["method"]), int(row["smallest_n_edges"])


def _prompt_rows(graph: Graph, verified: np.ndarray, per_prompt: np.ndarray, clean: np.ndarray) -> pd.DataFrame:
    n_prompts = len(clean)
    frame = graph.frame().iloc[verified][["sender", "receiver", "kind"]]
    out = frame.loc[frame.index.repeat(n_prompts)].reset_index(drop=True)
    out["prompt"] = np.tile(np.arange(n_prompts), len(verified))
    out["effect"] = per_prompt.T.reshape(-1).astype(np.float32)
    out["clean"] = np.tile(clean, len(verified)).astype(np.float32)
    return out


def _top_heads(graph: Graph, kept: np.ndarray, weights: np.ndarray) -> pd.DataFrame:
    rows: dict[str, dict[str, Any]] = {}
    for i in kept:
        edge = graph.edges[i]
        for node in (edge.sender, edge.receiver):
            if node in ("emb", "logits"):
                continue
            row = rows.setdefault(node, {"node": node, "layer": node_layer(node, graph.n_layers), "n_edges": 0,
                                         "weight": 0.0, "to_logits": False, "logits_weight": 0.0})
            row["n_edges"] += 1
            row["weight"] += float(abs(weights[i]))
            if edge.receiver == "logits" and node == edge.sender:
                row["to_logits"], row["logits_weight"] = True, float(abs(weights[i]))
    out = pd.DataFrame(list(rows.values()), columns=["node", "layer", "n_edges", "weight", "to_logits", "logits_weight"])
    return out.sort_values(["weight", "layer"], ascending=[False, False], ignore_index=True)


def default_verify(n_edges: int, fractions: Sequence[float]) -> int:
    """Edges to verify when not told: twice the smallest evaluated circuit, at least :data:`MIN_VERIFY`.

    Verifying more edges than the smallest circuit holds is what lets the exact effects re-rank
    what that circuit keeps; with fewer, the verified ranking's circuits equal the screen's.
    """
    return int(max(MIN_VERIFY, 2 * circuit_sizes(n_edges, fractions)[0]))


def trace_circuit(handle: Any, task: Task | Sequence[EncodedBatch], *, ablation: str = "corrupt",
                  screen: str = "eap-ig", steps: int = 5, verify: int | None = None,
                  fractions: Sequence[float] = DEFAULT_FRACTIONS, n_random: int = 1, target: float = 0.8,
                  seed: int = 0, max_batch: int | None = None,
                  progress: Callable[[str], None] | None = None) -> CircuitResult:
    """Screen, verify and judge the edges of a task (see the module docstring).

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of a supported architecture.
        task: a :class:`~cortexmap.tasks.Task` (encoded with the handle's tokenizer) or its
            encoded batches.
        ablation: ``"corrupt"`` or ``"mean"``: what a patched edge carries.
        screen: ``"eap"`` or ``"eap-ig"``: the estimate that picks the edges to verify.
        steps: integration points of EAP-IG.
        verify: edges to measure exactly (the top ones by ``|screen score|``); None:
            :func:`default_verify` (for SmolLM2's 70,651 edges on the default grid, 140).
        fractions: circuit sizes as fractions of edges, increasing, at least two.
        n_random: random rankings for the baseline.
        target: faithfulness the smallest circuit must reach.
        seed: seed of the random rankings and of the bootstrap.
        max_batch: split length groups into batches of at most this many prompts (None: no limit;
            mean ablation averages over each batch).
        progress: called with a short note as each stage starts.

    Returns:
        The :class:`CircuitResult`.

    Raises:
        CortexmapError: a bad argument, or the full model and the empty circuit score the same.
        UnsupportedArchitectureError: see :mod:`cortexmap.circuits.layout`.
        InterventionError: corrupt ablation on prompts without corrupt prompts.
    """
    _check(ablation, screen, verify, fractions, n_random)
    say = progress or (lambda message: None)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    batches = _batches(handle, task, max_batch)
    graph = Graph.for_model(handle)
    n_prompts = sum(len(b) for b in batches)

    scores: dict[str, np.ndarray] = {}
    for method in ("eap", "eap-ig"):
        say(f"scoring {graph.n_edges} edges with {method} on {n_prompts} prompts")
        tic = time.perf_counter()
        scores[method] = np.concatenate([edge_scores(handle, b, method, steps, ablation) for b in batches])
        timings[f"{method}_s"] = round(time.perf_counter() - tic, 3)
    screen_mean = scores[screen].mean(0)
    verify = default_verify(graph.n_edges, fractions) if verify is None else verify

    tic = time.perf_counter()
    verified = rank_edges(screen_mean)[:min(verify, graph.n_edges)]
    say(f"verifying the top {len(verified)} edges exactly")
    patchers = [PathPatcher(handle, b, ablation) for b in batches]
    per_prompt = np.concatenate([patcher.edge_effects(verified) for patcher in patchers])
    clean = np.concatenate([patcher.clean_metric for patcher in patchers])
    del patchers
    low, high = bootstrap_cis(per_prompt, seed=seed) if len(verified) else (np.zeros(0), np.zeros(0))
    timings["verify_s"] = round(time.perf_counter() - tic, 3)

    rankings = {"verified": _verified_ranking(screen_mean, verified, per_prompt.mean(0)),
                "eap": scores["eap"].mean(0), "eap-ig": scores["eap-ig"].mean(0)}
    tic = time.perf_counter()
    evaluated = [f for f in fractions if f < 1.0]
    frames = []
    for i, batch in enumerate(batches, 1):
        say(f"faithfulness curves: {len(rankings) + n_random} rankings x {len(evaluated)} sizes, batch {i}/{len(batches)}")
        frames.append(faithfulness_curves(handle, batch, rankings, fractions=evaluated, n_random=n_random,
                                          seed=seed, ablation=ablation))
    curves = _faithfulness_column(_with_full_point(pd.concat(frames, ignore_index=True), fractions, graph.n_edges))
    timings["curves_s"] = round(time.perf_counter() - tic, 3)
    summary = _summary(curves.drop(columns="faithfulness"), graph.n_edges, target, seed)

    method, size = _pick_circuit(summary)
    weights = rankings[method] if method else np.zeros(graph.n_edges)
    kept = rank_edges(weights)[:size]
    edges = graph.frame()
    edges["score"] = screen_mean
    edges["effect"] = screen_mean.astype(np.float64)
    edges["ci_low"] = np.nan
    edges["ci_high"] = np.nan
    edges["method"] = ESTIMATED
    edges.loc[verified, ["effect", "ci_low", "ci_high"]] = np.column_stack([per_prompt.mean(0), low, high])
    edges.loc[verified, "method"] = EXACT
    edges["rank"] = np.argsort(rank_edges(rankings["verified"]))
    edges["in_circuit"] = False
    edges.loc[kept, "in_circuit"] = True
    prompts = _prompt_rows(graph, verified, per_prompt, clean)
    timings["total_s"] = round(time.perf_counter() - start, 3)
    arguments = {"ablation": ablation, "screen": screen, "steps": steps, "verify": int(verify),
                 "fractions": [float(f) for f in fractions], "n_random": n_random, "target": target, "seed": seed,
                 "n_prompts": n_prompts, "n_edges": graph.n_edges}
    return CircuitResult(edges, curves, summary, _top_heads(graph, kept, weights), method, arguments, timings,
                         prompts)
