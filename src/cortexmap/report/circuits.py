"""The report's circuit view: a task's circuit as a layered graph, and its faithfulness curves.

Read from ``circuit.parquet`` / ``circuit_curves.parquet`` (written by ``cortexmap circuit``; see
docs/schema.md). Layers run left to right: the embeddings at the far left, each layer's heads at
their head index and its MLP one row below them (on sandwich models the layer's normalized
attention output ``A{l}`` between the two), the logits at the far right; a key or value edge
ends at the middle of its KV group's query heads. Only the circuit's strongest edges are drawn
(``N_EDGES``, by |effect|), width proportional to |effect|, orange where patching the edge lowers
the metric and blue where it raises it; hovering an edge's midpoint gives its numbers, with the
95% interval of an exact (path-patched) effect. Heads carry their atlas roles (names passed on their
evidence) and the tasks they are critical for in the hover text.
:func:`decision_graph` draws one decision (``cortexmap explain``) the same way from its verified
edges, with hover numbers for a single prompt (screen score, exact effect, share; no intervals);
:func:`attention_graph` draws why a head attends (``cortexmap explain --attention``): each sender
as an edge into the head's query or its KV group's key, width = |effect on the attention metric|.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from cortexmap.analysis.findings import ci, num
from cortexmap.report.data import ReportData
from cortexmap.report.page import card, esc, figure, note, section, table
from cortexmap.report.theme import ACCENT, MUTED, NEUTRAL, base_layout

N_EDGES = 60
LOWERS, RAISES = "#d97706", "#2563eb"  # patching the edge lowers / raises the target - foil difference
RANKING_COLORS = {"verified": ACCENT, "eap-ig": "#059669", "eap": "#d97706", "random": MUTED}
_HEAD = re.compile(r"^L(\d+)H(\d+)$")
_KV = re.compile(r"^L(\d+)KV(\d+)$")
_MLP = re.compile(r"^M(\d+)$")
_ATTN = re.compile(r"^A(\d+)$")  # a sandwich layer's normalized attention output


def _position(node: str, n_layers: int, n_heads: int, group: int) -> tuple[float, float]:
    """Where a node is drawn: x = layer (emb -1, logits n_layers), y = head row (MLP below the heads)."""
    if node == "emb":
        return -1.0, (n_heads - 1) / 2
    if node == "logits":
        return float(n_layers), (n_heads - 1) / 2
    if m := _HEAD.match(node):
        return float(m.group(1)), float(m.group(2))
    if m := _KV.match(node):
        return float(m.group(1)), int(m.group(2)) * group + (group - 1) / 2
    if m := _MLP.match(node):
        return float(m.group(1)) + 0.3, float(n_heads)
    if m := _ATTN.match(node):
        return float(m.group(1)) + 0.15, n_heads - 0.5
    raise ValueError(f"unknown circuit node {node!r}")


def _tasks(data: ReportData) -> list[str]:
    return [] if data.circuits is None else sorted(data.circuits["task"].unique())


def edge_graph(edges: pd.DataFrame, hover: Sequence[str], n_layers: int, n_heads: int, n_kv_heads: int,
               node_hover: Mapping[str, str] | None = None, *, label_all: bool = False) -> go.Figure:
    """Edges on the layer x head grid, width proportional to |effect| (see the module docstring).

    Args:
        edges: ``sender, receiver, kind, effect`` per edge; every row is drawn.
        hover: one hover text per edge (HTML), shown at the edge's midpoint.
        n_layers: layers of the model.
        n_heads: query heads per layer.
        n_kv_heads: KV groups per layer (a ``k``/``v`` edge ends at the middle of its group).
        node_hover: extra hover text per node name (e.g. its atlas roles).
        label_all: write every node's name beside it (KV groups and MLPs to their right), not only
            the heads', emb's and the logits' above them.

    Returns:
        One line trace per edge (named ``sender → receiver.kind``, in the rows' order), then the
        midpoint markers carrying ``hover``, then the nodes (the edges' endpoints).
    """
    group = max(1, n_heads // max(1, n_kv_heads))
    extra = node_hover or {}
    top = float(edges["effect"].abs().max()) or 1.0
    fig = go.Figure()
    mid_x, mid_y = [], []
    for r in edges.itertuples():
        (x0, y0), (x1, y1) = (_position(r.sender, n_layers, n_heads, group),
                              _position(r.receiver, n_layers, n_heads, group))
        color = LOWERS if r.effect < 0 else RAISES
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                                 name=f"{r.sender} → {r.receiver}.{r.kind}",
                                 line={"width": 0.8 + 7 * abs(r.effect) / top, "color": color}, opacity=0.75))
        mid_x.append((x0 + x1) / 2)
        mid_y.append((y0 + y1) / 2)
    fig.add_trace(go.Scatter(x=mid_x, y=mid_y, mode="markers", text=list(hover),
                             hovertemplate="%{text}<extra></extra>",
                             marker={"size": 7, "color": "rgba(0,0,0,0)"}, showlegend=False))
    nodes = sorted(set(edges["sender"]) | set(edges["receiver"]))
    xy = [_position(n, n_layers, n_heads, group) for n in nodes]
    labels = [f"{n}<br>{extra[n]}" if extra.get(n) else n for n in nodes]
    above = [bool(_HEAD.match(n)) or n in ("emb", "logits") for n in nodes]
    fig.add_trace(go.Scatter(x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers+text", showlegend=False,
                             text=[n if label_all or above[i] else "" for i, n in enumerate(nodes)],
                             textposition=["top center" if a else "middle right" for a in above],
                             textfont={"size": 9}, customdata=labels,
                             hovertemplate="%{customdata}<extra></extra>",
                             marker={"size": 10, "color": "#ffffff", "line": {"width": 1.5, "color": "#374151"}}))
    fig.update_layout(**base_layout(
        height=max(320, 26 * (n_heads + 3)),
        xaxis={"title": {"text": "layer (emb left, logits right)"}, "range": [-1.6, n_layers + 0.6], "zeroline": False,
               "showgrid": False},
        yaxis={"title": {"text": "head (MLP below)"}, "range": [n_heads + 0.8, -1.0], "zeroline": False,
               "showgrid": False}))
    return fig


def circuit_graph(data: ReportData, task: str) -> go.Figure | None:
    """The task's circuit: its ``N_EDGES`` strongest edges on the layer x head grid."""
    edges = data.circuits[(data.circuits["task"] == task) & data.circuits["in_circuit"]]
    if edges.empty:
        return None
    edges = edges.reindex(edges["effect"].abs().sort_values(ascending=False).index).head(N_EDGES)
    n_heads = data.results.n_heads
    n_kv = int(data.results.manifest["model"].get("n_kv_heads") or n_heads)
    notes = {}
    for head, named, critical in zip(data.atlas["head_id"], data.atlas["roles"].fillna(""),
                                     data.atlas["critical_for"].fillna("")):
        parts = ([f"roles: {named.replace(';', ', ')}"] if named else []) + (
            [f"critical for: {critical.replace(';', ', ')}"] if critical else [])
        if parts:
            notes[head] = "<br>".join(parts)
    hover = []
    for r in edges.itertuples():
        interval = (f" [95% CI {r.ci_low:+.3f}, {r.ci_high:+.3f}]"
                    if isinstance(r.ci_low, float) and math.isfinite(r.ci_low) else "")
        hover.append(f"{r.sender} → {r.receiver} ({r.kind})<br>effect {r.effect:+.3f}{interval}<br>{r.method}")
    return edge_graph(edges, hover, data.results.n_layers, n_heads, n_kv, notes)


def decision_graph(edges: pd.DataFrame, heads: pd.DataFrame, n_layers: int, n_heads: int, n_kv_heads: int, *,
                   screen: str = "eap-ig", title: str | None = None) -> go.Figure:
    """One decision's verified edges (``cortexmap explain``), every one drawn.

    A single prompt has no intervals: an edge's hover gives its screen score, its exact effect
    and its share of the flip; a node's hover the summed effects of its verified edges.

    Args:
        edges: ``sender, receiver, kind, score, effect, share`` per verified edge
            (:attr:`~cortexmap.circuits.explain.Explanation.edges`).
        heads: ``node, effect_out, effect_in`` per node (:attr:`~cortexmap.circuits.explain.Explanation.heads`).
        n_layers: layers of the model.
        n_heads: query heads per layer.
        n_kv_heads: KV groups per layer.
        screen: the screen that scored the edges, named in the hover text.
        title: a title above the graph.

    Returns:
        The figure (see :func:`edge_graph` for its traces).
    """
    share = lambda r: f"share {r.share:.2f} of the flip" if math.isfinite(r.share) else "share n/a (no flip)"
    hover = [f"{r.sender} → {r.receiver} ({r.kind})<br>{screen} score {r.score:+.3f}<br>effect {r.effect:+.3f} "
             f"(exact)<br>{share(r)}" for r in edges.itertuples()]
    nodes = {r.node: f"out {r.effect_out:+.3f}, in {r.effect_in:+.3f} (verified edges)" for r in heads.itertuples()}
    fig = edge_graph(edges, hover, n_layers, n_heads, n_kv_heads, nodes, label_all=True)
    if title:
        fig.update_layout(title={"text": title, "x": 0, "font": {"size": 13}}, margin={"t": 70})
    return fig


def attention_graph(senders: pd.DataFrame, head: str, n_layers: int, n_heads: int, n_kv_heads: int, *,
                    title: str | None = None) -> go.Figure:
    """The senders that move one head's attention, as edges into its query and its KV group's key.

    Args:
        senders: ``sender, side, receiver, kind, effect, ci_low, ci_high, share, eap, n_prompts`` per
            drawn edge (:attr:`~cortexmap.circuits.attend.AttentionExplanation.senders`).
        head: the receiving head, ``"L{l}H{h}"``.
        n_layers: layers of the model.
        n_heads: query heads per layer.
        n_kv_heads: KV groups per layer.
        title: a title above the graph.

    Returns:
        The figure (see :func:`edge_graph` for its traces); orange where patching the sender's edge
        lowers the attention metric, blue where it raises it; hover gives the exact effect with its
        95% interval over prompts, its share of the whole change and the EAP screen's estimate.
    """
    hover = [f"{r.sender} → {r.receiver} ({r.side} side of {head})<br>effect {r.effect:+.4f} "
             f"[95% CI {r.ci_low:+.4f}, {r.ci_high:+.4f}] (exact, {r.n_prompts} prompts)<br>"
             + (f"share {r.share:.2f} of the whole change" if math.isfinite(r.share) else "share n/a (no change)")
             + f"<br>eap {r.eap:+.4f} (screen)" for r in senders.itertuples()]
    nodes = {head: "the receiving head: its attention is the metric"}
    nodes.update({r: f"the key of {head}'s KV group" for r in senders.loc[senders["side"] == "key", "receiver"]})
    fig = edge_graph(senders, hover, n_layers, n_heads, n_kv_heads, nodes, label_all=True)
    if title:
        fig.update_layout(title={"text": title, "x": 0, "font": {"size": 13}}, margin={"t": 84})
    return fig


def curves_figure(data: ReportData, task: str) -> go.Figure | None:
    """Faithfulness against circuit size for every ranking; random circuits as their mean and range."""
    curves = data.circuit_curves
    if curves is None:
        return None
    rows = curves[(curves["task"] == task) & ~curves["method"].isin(["full", "empty"])]
    if rows.empty:
        return None
    per = rows.groupby(["method", "draw", "fraction"], as_index=False)["faithfulness"].first()
    fig = go.Figure()
    for method, part in per.groupby("method"):
        color = RANKING_COLORS.get(method, NEUTRAL)
        stats = part.groupby("fraction")["faithfulness"].agg(["mean", "min", "max"]).reset_index()
        if method == "random" and part["draw"].nunique() > 1:
            fig.add_trace(go.Scatter(x=list(stats["fraction"]) + list(stats["fraction"][::-1]),
                                     y=list(stats["max"]) + list(stats["min"][::-1]), fill="toself", hoverinfo="skip",
                                     line={"width": 0}, fillcolor="rgba(107,114,128,0.15)", showlegend=False))
        fig.add_trace(go.Scatter(x=stats["fraction"], y=stats["mean"], mode="lines+markers", name=method,
                                 line={"color": color, "dash": "dot" if method == "random" else "solid"},
                                 hovertemplate=f"{method}: %{{y:.2f}} at %{{x:.3%}} of edges<extra></extra>"))
    fig.add_hline(y=0.8, line={"dash": "dash", "color": MUTED, "width": 1})
    fig.update_layout(**base_layout(height=320, xaxis={"title": {"text": "circuit size (share of edges)"},
                                                       "type": "log", "tickformat": ".1%"},
                                    yaxis={"title": {"text": "faithfulness (0 = empty, 1 = full model)"}}))
    return fig


def circuit_figures(data: ReportData) -> dict[str, go.Figure | None]:
    """``circuit_<i>`` and ``circuit_curves_<i>`` for every traced task, in task order."""
    out: dict[str, go.Figure | None] = {}
    for i, task in enumerate(_tasks(data)):
        out[f"circuit_{i}"] = circuit_graph(data, task)
        out[f"circuit_curves_{i}"] = curves_figure(data, task)
    return out


def _summary_rows(entry: dict[str, Any]) -> list[list[Any]]:
    """Rows of the manifest's circuit summary: one per ranking (and random draw), with intervals over prompts."""
    rows = []
    for s in entry.get("summary") or []:
        suffix = "" if s["method"] != "random" else (
            f" (mean of {s['n_draws']} draws)" if "n_draws" in s else f" #{s['draw']}")
        name = s["method"] + suffix
        smallest = ("not reached" if s.get("smallest") is None else
                    f"{s['smallest_n_edges']} edges ({s['smallest']:.1%}) [{s.get('smallest_n_edges_low')}, "
                    f"{s.get('smallest_n_edges_high')}]")
        rows.append([name, f"{num(s['cpr'], 3)} {ci(s.get('cpr_low'), s.get('cpr_high'), 3)}",
                     f"{num(s['cmd'], 3)} {ci(s.get('cmd_low'), s.get('cmd_high'), 3)}", smallest])
    return rows


def circuit_section(data: ReportData, present: set[str]) -> str:
    """One card per traced task: the circuit graph, its faithfulness curves and their summary."""
    tasks = _tasks(data)
    if not tasks:
        body = note("No circuit was traced for this run.", f"cortexmap circuit {data.results.root} --task ioi")
        return section("circuits", "Circuits", "Which heads feed which, for one decision or task.", body)
    parts = []
    entries = data.results.manifest.get("circuits", {})
    for i, task in enumerate(tasks):
        inner = []
        if f"circuit_{i}" in present:
            inner.append(figure(f"circuit_{i}", f"The {N_EDGES} strongest edges of the smallest circuit reaching 80% "
                                "faithfulness; width = |effect| of patching the edge alone (orange lowers, blue raises "
                                "the target - foil logit difference); hover an edge's middle for its interval."))
        if f"circuit_curves_{i}" in present:
            inner.append(figure(f"circuit_curves_{i}", "Faithfulness of the circuit keeping each ranking's top edges "
                                "(every other edge patched), with random circuits of the same sizes (mean and range); "
                                "dashed: 80%."))
        rows = _summary_rows(entries.get(task, {}))
        if rows:
            inner.append(table(["ranking", "CPR (higher better) [95% CI]", "CMD (lower better) [95% CI]",
                                "smallest 80% circuit"], rows))
        parts.append(card("".join(inner) or note("No circuit edges to draw."), f"Circuit of {esc(task)}"))
    return section("circuits", "Circuits", "Which heads feed which: path-patched edges, MIB faithfulness.",
                   "".join(parts))
