"""A task's circuit end to end: screen every edge, verify the top ones exactly, judge rankings on held-out prompts.

:func:`trace_circuit` first splits the task's prompts by a seeded permutation into a
**discovery** part and a **held-out** part (``heldout``, default half;
:func:`~cortexmap.circuits.protocol.split_batches`), then, under a
:class:`~cortexmap.circuits.protocol.Protocol` (``"cortexmap"`` or MIB's, ``"mib"``):

1. **screen** (discovery prompts): EAP and EAP-IG (MIB's EAP-IG-inputs; ``"eap-ig-edges"``,
   cortexmap's integration along the edges, on request or under mean ablation) scores of every
   edge (:mod:`~cortexmap.circuits.attribution`); each is a ranking of its own, and the ``screen``
   one picks the edges to verify;
2. **verify** (discovery prompts): the exact path-patching effect of the top ``verify`` edges by
   ``|screen score|`` (default: twice the smallest circuit of the grid), per prompt, with 95%
   bootstrap intervals (:class:`~cortexmap.circuits.patching.PathPatcher`); the ``verified``
   ranking is the screen's scores with the verified edges' exact effects in their place;
3. **curves** (held-out prompts, and the discovery prompts too with ``in_sample``): faithfulness
   of every ranking's circuits over the grid, in the protocol's orders, and of ``n_random``
   seeded random rankings (:mod:`~cortexmap.circuits.curves`);
4. **judge** (per split, :mod:`~cortexmap.circuits.judge`): CPR and CMD per ranking, the random
   baseline as the mean of its draws with their spread, paired bootstrap intervals of the
   differences between rankings, and "the circuit": the smallest one reaching ``target`` (80%) on
   the held-out prompts over the rankings (``circuit_method`` says which; None when none reaches
   it; it can be the whole model). Its heads are :attr:`CircuitResult.top_heads`.

Under protocol ``"mib"`` the graph counts key and value inputs per query head
(:func:`~cortexmap.circuits.ungrouped.per_head_kv`: 123,211 edges on SmolLM2-135M, not
70,651), prompts get a BOS token, CPR comes from circuits ranked by the signed score in MIB's sign
and CMD from circuits ranked by ``|score|``. Both protocols use MIB's 10-point grid by default.
The 100% point is never evaluated: keeping every edge is the clean model (the patching tests check
it to 1e-5).

Cost, measured (SmolLM2-135M, IOI, the defaults: 16 prompts split 8 / 8, one intra-op thread on a
2-core CPU shared with other work): protocol ``"cortexmap"`` 11 min wall, 5.5 min of CPU (EAP 19 s,
EAP-IG 53 s, verifying 140 edges 84 s, curves 490 s); protocol ``"mib"`` 17 min wall, 11.5 min of
CPU (verifying 246 edges 120 s, curves 853 s: two orders per ranking). The curves dominate: every
ranking, order and random draw is one patched pass per grid size and length group, on both splits
(``in_sample=False`` halves them). With two threads on that shared CPU the attribution stage ran
about ten times slower (spin-waiting threads); set ``OMP_NUM_THREADS=1`` there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cortexmap.circuits.attribution import edge_scores
from cortexmap.circuits.curves import faithfulness_curves
from cortexmap.circuits.faithfulness import circuit_sizes, rank_edges
from cortexmap.circuits.graph import Graph, node_layer
from cortexmap.circuits.interchange import per_head_graph, per_head_scores, prune, write_mib_graph
from cortexmap.circuits.judge import faithfulness_column, judge_curves, pick_circuit, with_full_point
from cortexmap.circuits.patching import PathPatcher
from cortexmap.circuits.protocol import MIB_IG_STEPS, Protocol, order_scores, protocol_named, split_batches, with_bos
from cortexmap.circuits.ungrouped import per_head_kv
from cortexmap.errors import CortexmapError
from cortexmap.stats import bootstrap_cis
from cortexmap.tasks.core import EncodedBatch, Task, encode_one_position

DEFAULT_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # MIB's grid
SCREENS: tuple[str, ...] = ("eap", "eap-ig", "eap-ig-edges")
DEFAULT_HELDOUT = 0.5
N_RANDOM = 5
MIN_VERIFY = 32
EXACT, ESTIMATED = "exact", "estimated"


@dataclass
class CircuitResult:
    """What :func:`trace_circuit` found for one task.

    Attributes:
        edges: one row per edge of the protocol's graph, in graph order: ``sender, receiver, kind,
            sender_layer, receiver_layer, score`` (mean screen score over the discovery prompts),
            ``effect`` (the exact effect where verified, else the screen score), ``ci_low,
            ci_high`` (95% bootstrap over prompts; NaN for estimates), ``method`` (``"exact"`` or
            ``"estimated"``), ``rank`` (position in the ``verified`` ranking's ``|.|`` order, 0
            first) and ``in_circuit``.
        curves: the per-prompt curve table (``split, method, order, draw, fraction, n_edges,
            prompt, metric``, the ``full`` / ``empty`` references) plus ``faithfulness``.
        summary: per split and ranking (random: the mean of its draws): ``cpr, cmd`` with
            ``_low`` / ``_high`` bounds, ``smallest`` (a fraction; inf: not reached) with bounds,
            ``smallest_n_edges`` with bounds (-1: not reached), ``n_draws`` and the random spread
            ``cpr_sd, cpr_min, cpr_max, cmd_sd, cmd_min, cmd_max``, ``cpr_order, cmd_order,
            n_prompts, target``.
        top_heads: the nodes on the circuit's kept edges: ``node, layer, n_edges, weight`` (sum of
            the kept edges' ``|score|`` in the circuit's ranking), ``to_logits``, ``logits_weight``.
        circuit_method: the ranking the circuit comes from, or None when none reached the target.
        arguments: what was asked and the split and edge counts (JSON-ready).
        timings: seconds per stage and ``total_s``.
        prompts: the verified edges' exact effects per discovery prompt: ``sender, receiver, kind,
            prompt, effect, clean``, the input of :func:`cortexmap.analysis.mistakes.errors_of_rows`.
        differences: per split, every two rankings' CPR, CMD and per-size faithfulness difference
            ``a - b`` with a paired bootstrap interval over the split's prompts.
        curve_stats: per split and curve (``method, order, draw``) the
            :func:`~cortexmap.circuits.faithfulness.summarize_curves` row.
        rankings: ranking name -> mean score per edge (cortexmap's sign), what the curves ranked.
    """

    edges: pd.DataFrame
    curves: pd.DataFrame
    summary: pd.DataFrame
    top_heads: pd.DataFrame
    circuit_method: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    prompts: pd.DataFrame = field(default_factory=pd.DataFrame)
    differences: pd.DataFrame = field(default_factory=pd.DataFrame)
    curve_stats: pd.DataFrame = field(default_factory=pd.DataFrame)
    rankings: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def graph(self) -> Graph:
        """The graph the edge table and the rankings follow (per query head under MIB's protocol)."""
        return Graph(*self.arguments["graph"])

    def export(self, path: str | Path, d_model: int, ranking: str | None = None) -> Path:
        """Write a ranking's scores and the circuit as an EAP-IG / MIB graph file (:mod:`~cortexmap.circuits.interchange`).

        Args:
            path: the ``.json`` file.
            d_model: the model's residual width (the file's ``cfg``).
            ranking: the ranking whose scores to write (None: the circuit's, else the screen's).

        Raises:
            CortexmapError: a ranking this result does not have.
        """
        name = ranking or self.circuit_method or self.arguments["screen"]
        if name not in self.rankings:
            raise CortexmapError(f"no ranking {name!r} to export: this circuit has {', '.join(self.rankings)}")
        return write_mib_graph(path, self.graph, self.rankings[name], self.edges["in_circuit"].to_numpy(), d_model)

    @property
    def end_heads(self) -> list[str]:
        """The circuit's query heads that write straight into the logits, by that edge's ``|score|``.

        On sandwich-norm models heads reach the logits only through their layer's ``A{l}``: those count.
        """
        rows = self.top_heads[self.top_heads["to_logits"] & self.top_heads["node"].str.match(r"^(L\d+H\d+|A\d+)$")]
        return list(rows.sort_values("logits_weight", ascending=False, kind="stable")["node"])


def default_rankings(ablation: str) -> tuple[str, ...]:
    """Screens ranked by default: EAP and EAP-IG (corrupt ablation), EAP and EAP-IG along the edges (mean)."""
    return ("eap", "eap-ig") if ablation == "corrupt" else ("eap", "eap-ig-edges")


def default_verify(n_edges: int, fractions: Sequence[float]) -> int:
    """Edges to verify when not told: twice the smallest evaluated circuit, at least :data:`MIN_VERIFY`.

    Verifying more edges than the smallest circuit holds is what lets the exact effects re-rank
    what that circuit keeps; with fewer, the verified ranking's circuits equal the screen's.
    """
    return int(max(MIN_VERIFY, 2 * circuit_sizes(n_edges, fractions)[0]))


def _check(proto: Protocol, ablation: str, screen: str, methods: Sequence[str], verify: int | None,
           fractions: Sequence[float], n_random: int) -> None:
    if ablation not in ("corrupt", "mean"):
        raise CortexmapError(f"unknown ablation {ablation!r}: use corrupt or mean")
    for name in (screen, *methods):
        if name not in SCREENS:
            raise CortexmapError(f"unknown screen {name!r}: use one of {', '.join(SCREENS)}")
    if screen not in methods:
        raise CortexmapError(f"the screen {screen!r} must be one of the rankings ({', '.join(methods)})")
    if ablation == "mean" and "eap-ig" in methods:
        raise CortexmapError("eap-ig interpolates corrupt and clean embeddings, so it needs corrupt ablation; "
                             "rank with eap and eap-ig-edges under mean ablation")
    if proto.name == "mib" and ablation != "corrupt":
        raise CortexmapError("MIB's protocol patches edges from corrupt prompts (EAP-IG-inputs needs them); "
                             "use ablation corrupt or protocol cortexmap")
    if (verify is not None and verify < 0) or n_random < 0:
        raise CortexmapError(f"verify and n_random must be >= 0, got verify={verify}, n_random={n_random}")
    if len(fractions) < 2:
        raise CortexmapError(f"a faithfulness curve needs at least two circuit sizes, got {list(fractions)}")
    circuit_sizes(1, fractions)  # raises on a bad grid


def _batches(handle: Any, task: Task | Sequence[EncodedBatch], max_batch: int | None) -> list[EncodedBatch]:
    if isinstance(task, Task):
        if handle.tokenizer is None:
            raise CortexmapError("this model has no tokenizer to encode the task; pass encoded batches instead")
        return encode_one_position(task, handle.tokenizer, max_batch)[0]  # one-token answers, equal lengths
    batches = list(task)
    if not batches:
        raise CortexmapError("the task has no prompts; give it at least one pair")
    return batches


def _verified_scores(screen: np.ndarray, verified: np.ndarray, effects: np.ndarray) -> np.ndarray:
    """The screen's scores with the verified edges' exact effects in their place."""
    out = np.asarray(screen, dtype=np.float64).copy()
    out[verified] = effects
    return out


def _prompt_rows(graph: Graph, verified: np.ndarray, per_prompt: np.ndarray, clean: np.ndarray,
                 prompts: Sequence[int]) -> pd.DataFrame:
    frame = graph.frame().iloc[verified][["sender", "receiver", "kind"]]
    out = frame.loc[frame.index.repeat(len(clean))].reset_index(drop=True)
    out["prompt"] = np.tile(np.asarray(prompts), len(verified))
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


def _edge_counts(graph: Graph, kept: np.ndarray) -> dict[str, int]:
    """The circuit's edges counted per KV group (when the graph groups them), per query head, and after MIB's pruning."""
    mask = np.zeros(graph.n_edges, dtype=bool)
    mask[kept] = True
    per_head = per_head_scores(graph, mask)
    out = {"per_query_head": int(per_head.sum()),
           "per_query_head_pruned": int(prune(per_head_graph(graph), per_head).sum())}
    if graph.n_kv_heads != graph.n_heads:
        out["per_kv_group"] = int(mask.sum())
    return out


def trace_circuit(handle: Any, task: Task | Sequence[EncodedBatch], *, protocol: str | Protocol = "cortexmap",
                  ablation: str = "corrupt", screen: str | None = None, rankings: Sequence[str] | None = None,
                  steps: int = MIB_IG_STEPS, verify: int | None = None, fractions: Sequence[float] | None = None,
                  n_random: int = N_RANDOM, target: float = 0.8, seed: int = 0, heldout: float = DEFAULT_HELDOUT,
                  in_sample: bool = True, imported: Mapping[str, np.ndarray] | None = None,
                  max_batch: int | None = None, progress: Callable[[str], None] | None = None) -> CircuitResult:
    """Screen, verify and judge the edges of a task (see the module docstring).

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of a supported architecture.
        task: a :class:`~cortexmap.tasks.Task` (encoded with the handle's tokenizer) or its batches.
        protocol: ``"cortexmap"`` or ``"mib"`` (or a :class:`~cortexmap.circuits.protocol.Protocol`).
        ablation: ``"corrupt"`` or ``"mean"``: what a patched edge carries (MIB: corrupt).
        screen: the ranking whose top edges are verified; None: EAP-IG (``eap-ig-edges`` under mean).
        rankings: the screens to compute and rank (None: :func:`default_rankings`).
        steps: integration steps of EAP-IG (MIB's default, 5).
        verify: edges to measure exactly (None: :func:`default_verify`).
        fractions: circuit sizes as fractions of the protocol's edges, increasing, at least two
            (None: the protocol's grid, MIB's 10 points).
        n_random: random rankings for the baseline.
        target: faithfulness the smallest circuit must reach.
        seed: seed of the split, of the random rankings and of the bootstrap.
        heldout: share of the prompts held out for judging, in ``[0, 1)`` (0: judge in sample).
        in_sample: also judge the rankings on the discovery prompts (split ``"discovery"``).
        imported: more rankings, name -> scores per edge of the protocol's graph (cortexmap's sign),
            e.g. from :func:`~cortexmap.circuits.interchange.read_mib_graph`.
        max_batch: split length groups into batches of at most this many prompts.
        progress: called with a short note as each stage starts.

    Returns:
        The :class:`CircuitResult`.

    Raises:
        CortexmapError: a bad argument, too few prompts to split, or the full model and the empty
            circuit scoring the same.
        UnsupportedArchitectureError: see :mod:`cortexmap.circuits.layout`.
        InterventionError: corrupt ablation on prompts without corrupt prompts.
    """
    proto = protocol_named(protocol)
    fractions = tuple(proto.fractions if fractions is None else fractions)
    methods = tuple(default_rankings(ablation) if rankings is None else rankings)
    screen = screen or ("eap-ig" if "eap-ig" in methods else methods[-1] if methods else "eap-ig")
    _check(proto, ablation, screen, methods, verify, fractions, n_random)
    say = progress or (lambda message: None)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    batches = _batches(handle, task, max_batch)
    if proto.bos:
        batches = with_bos(batches, getattr(handle.tokenizer, "bos_token_id", None))
    discovery, held = split_batches(batches, heldout, seed)
    n_discovery, n_heldout = sum(len(b) for b in discovery), sum(len(b) for b in held)

    with per_head_kv(handle) if proto.per_head_kv else nullcontext(handle) as view:
        graph = Graph.for_model(view)
        for name, values in (imported or {}).items():
            if name in ("verified", "random", *methods):
                raise CortexmapError(f"an imported ranking cannot be called {name!r}: that name is taken")
            if len(values) != graph.n_edges:
                raise CortexmapError(f"imported ranking {name!r} has {len(values)} scores for {graph.n_edges} edges "
                                     f"({proto.kv_counting}); import it under the protocol it was made for")
        scores: dict[str, np.ndarray] = {}
        for method in methods:
            say(f"scoring {graph.n_edges} edges ({proto.kv_counting}) with {method} on {n_discovery} discovery prompts")
            tic = time.perf_counter()
            scores[method] = np.concatenate([edge_scores(view, b, method, steps, ablation) for b in discovery])
            timings[f"{method}_s"] = round(time.perf_counter() - tic, 3)
        screen_mean = scores[screen].mean(0)
        verify = default_verify(graph.n_edges, fractions) if verify is None else verify

        tic = time.perf_counter()
        verified = rank_edges(screen_mean)[:min(verify, graph.n_edges)]
        say(f"verifying the top {len(verified)} edges exactly on the discovery prompts")
        patchers = [PathPatcher(view, b, ablation) for b in discovery]
        per_prompt = np.concatenate([p.edge_effects(verified) for p in patchers])
        clean = np.concatenate([p.clean_metric for p in patchers])
        del patchers
        low, high = bootstrap_cis(per_prompt, seed=seed) if len(verified) else (np.zeros(0), np.zeros(0))
        timings["verify_s"] = round(time.perf_counter() - tic, 3)

        ranked = {"verified": _verified_scores(screen_mean, verified, per_prompt.mean(0)),
                  **{m: scores[m].mean(0) for m in methods}, **{k: np.asarray(v, float) for k, v in (imported or {}).items()}}
        tic = time.perf_counter()
        evaluated = [f for f in fractions if f < 1.0]
        splits = [("heldout", held)] if held else []
        splits += [("discovery", discovery)] if in_sample or not held else []
        frames = []
        for split, part in splits:
            for i, batch in enumerate(part, 1):
                say(f"faithfulness curves on {split} prompts: {len(ranked)} rankings x {len(proto.orders)} orders + "
                    f"{n_random} random x {len(evaluated)} sizes, batch {i}/{len(part)}")
                frames.append(faithfulness_curves(view, batch, ranked, fractions=evaluated, orders=proto.orders,
                                                  sign=proto.sign, n_random=n_random, seed=seed,
                                                  ablation=ablation).assign(split=split))
        timings["curves_s"] = round(time.perf_counter() - tic, 3)

    curves = with_full_point(pd.concat(frames, ignore_index=True), fractions, graph.n_edges)
    summary, differences, curve_stats = judge_curves(curves, list(ranked), n_edges=graph.n_edges,
                                                     cpr_order=proto.cpr_order, cmd_order=proto.cmd_order,
                                                     target=target, seed=seed)
    curves = faithfulness_column(curves)
    method, size, judged = pick_circuit(summary)
    weights = ranked[method] if method else np.zeros(graph.n_edges)
    kept = rank_edges(order_scores(weights, proto, proto.cmd_order))[:size]
    edges = graph.frame()
    edges["score"] = screen_mean
    edges["effect"] = screen_mean.astype(np.float64)
    edges["ci_low"] = np.nan
    edges["ci_high"] = np.nan
    edges["method"] = ESTIMATED
    edges.loc[verified, ["effect", "ci_low", "ci_high"]] = np.column_stack([per_prompt.mean(0), low, high])
    edges.loc[verified, "method"] = EXACT
    edges["rank"] = np.argsort(rank_edges(ranked["verified"]))
    edges["in_circuit"] = False
    edges.loc[kept, "in_circuit"] = True
    prompt_ids = [i for b in discovery for i in b.indices]
    timings["total_s"] = round(time.perf_counter() - start, 3)
    per_group = Graph(graph.n_layers, graph.n_heads, handle.n_kv_heads, graph.residual)
    arguments = {"protocol": proto.name, "ablation": ablation, "screen": screen, "rankings": list(ranked),
                 "steps": steps, "verify": int(verify), "fractions": [float(f) for f in fractions],
                 "n_random": n_random, "target": target, "seed": seed, "heldout": heldout, "in_sample": in_sample,
                 "n_prompts": n_discovery + n_heldout, "n_discovery": n_discovery, "n_heldout": n_heldout,
                 "judged_on": judged, "kv_counting": proto.kv_counting, "bos": proto.bos,
                 "cpr_order": proto.cpr_order, "cmd_order": proto.cmd_order, "n_edges": graph.n_edges,
                 "graph": [graph.n_layers, graph.n_heads, graph.n_kv_heads, graph.residual],
                 "n_edges_per_kv_group": per_group.n_edges, "n_edges_per_query_head": per_head_graph(graph).n_edges,
                 "circuit_edges": _edge_counts(graph, kept)}
    return CircuitResult(edges, curves, summary, _top_heads(graph, kept, weights), method, arguments, timings,
                         _prompt_rows(graph, verified, per_prompt, clean, prompt_ids), differences, curve_stats, ranked)
