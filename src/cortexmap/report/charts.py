"""Figures of the findings: layer bands, regulator heads, cross-model matches and pruning curves.

Each function takes the loaded :class:`~cortexmap.report.data.ReportData` (or the part it needs)
and returns a plotly figure, or ``None`` when its input was not measured. Numbers are the fields of
the typed atlas records (level depths, bands, regulators, conservation); intervals are the 95%
intervals the analyses report; nothing is re-estimated here except plain means for display.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cortexmap.analysis import influence_matrix, layer_distribution
from cortexmap.analysis.records import jsonable
from cortexmap.report.data import Comparison, ReportData
from cortexmap.report.maps import grid_axes, grid_height, head_details
from cortexmap.report.theme import (
    ACCENT,
    GRID,
    LEVEL_ORDER,
    MUTED,
    NEUTRAL,
    base_layout,
    group_colors,
    hcl_palette,
    level_color,
)

N_EDGES = 60


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _segments(fig: go.Figure, segmentation: list[dict], n_layers: int, row: int) -> None:
    """The BIC layer bands as one strip of coloured spans, labelled where they are wide enough."""
    pad = 0.5 / max(n_layers - 1, 1)
    for seg in segmentation:
        lo, hi = seg["depth_start"] - pad, seg["depth_end"] + pad
        if seg["dominant_level"] is None:  # no important head in the band
            color, label = "#9aa0a6", f"L{seg['layer_start']}–L{seg['layer_end']} no important heads"
        else:
            color = level_color(seg["dominant_level"])
            label = f"L{seg['layer_start']}–L{seg['layer_end']} {seg['dominant_level']} ×{seg['enrichment']:.1f}"
        low, high = seg.get("enrichment_ci_low"), seg.get("enrichment_ci_high")
        interval = f" [95% CI {low:.1f}, {high:.1f}]" if _finite(low) and _finite(high) else ""
        fig.add_trace(go.Bar(x=[hi - lo], base=[lo], y=["bands"], orientation="h", showlegend=False, width=0.9,
                             marker={"color": _rgba(color, 0.35), "line": {"color": "#ffffff", "width": 2}},
                             text=[label if hi - lo > 0.16 else ""], textposition="inside", insidetextanchor="middle",
                             textfont={"size": 10, "color": "#374151"}, hovertemplate=f"{label}{interval} (enrichment; 1 = none)<extra></extra>"),
                      row=row, col=1)


def _rows(frame: pd.DataFrame | None) -> list[dict]:
    """A record's table as JSON-ready row dicts (NaN as None, numpy scalars unwrapped)."""
    return [] if frame is None or not len(frame) else [jsonable(r) for r in frame.to_dict("records")]


def _numeric(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """A copy with ``columns`` as floats (a record read back from JSON holds None where NaN was)."""
    return frame.assign(**{c: pd.to_numeric(frame[c], errors="coerce") for c in columns if c in frame})


def band_figure(data: ReportData) -> go.Figure:
    """Level mean depths with 95% CIs (top), the layer bands (middle), importance over depth per level (bottom).

    Args:
        data: the loaded run (its level-depth and band records, and its view for the per-layer shares).

    Returns:
        The three-row figure over relative depth.
    """
    n_layers = data.results.n_layers
    dist = layer_distribution(data.view)
    per_level = dist.dropna(subset=["share"]).groupby(["level", "layer", "rel_depth"], as_index=False)["share"].mean()
    depths = [r for r in _rows(data.records.level_depths.table) if r["n_evaluated"] and _finite(r["mean_depth"])]
    present = {r["level"] for r in depths} | set(per_level["level"])
    levels = [lv for lv in LEVEL_ORDER if lv in present] + sorted(present - set(LEVEL_ORDER))
    segmentation = _rows(data.records.bands.bands)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, row_heights=[0.30, 0.07, 0.63], vertical_spacing=0.035)
    for row in depths:
        lv, mean = row["level"], row["mean_depth"]
        low, high = (row["ci_low"], row["ci_high"]) if _finite(row["ci_low"]) and _finite(row["ci_high"]) else (mean, mean)
        fig.add_trace(go.Scatter(
            x=[mean], y=[lv], mode="markers", marker={"size": 11, "color": level_color(lv)},
            error_x={"type": "data", "symmetric": False, "array": [high - mean], "arrayminus": [mean - low],
                     "color": level_color(lv), "thickness": 2, "width": 5},
            showlegend=False, legendgroup=lv,
            hovertemplate=(f"<b>{lv}</b><br>mean task depth %{{x:.2f}} [95% CI {low:.2f}, {high:.2f}]"
                           f"<br>{row['n_evaluated']} of {row['n_tasks']} tasks, {row['n_important']} important "
                           "head-task cells<extra></extra>")), row=1, col=1)
    fig.add_vline(x=0.5, line={"dash": "dot", "color": MUTED, "width": 1}, row=1, col=1)
    _segments(fig, segmentation, n_layers, row=2)
    for lv in levels:
        rows = per_level[per_level["level"] == lv].sort_values("rel_depth")
        if rows.empty:
            continue
        color = level_color(lv)
        fig.add_trace(go.Scatter(x=rows["rel_depth"], y=rows["share"], name=lv, mode="lines+markers", legendgroup=lv,
                                 line={"color": color, "width": 2}, marker={"size": 4}, fill="tozeroy",
                                 fillcolor=_rgba(color, 0.10), customdata=rows["layer"],
                                 hovertemplate=f"<b>{lv}</b> · layer %{{customdata}}<br>share of importance %{{y:.2f}}<extra></extra>"),
                      row=3, col=1)
    fig.update_layout(**base_layout(height=500, margin={"l": 80, "r": 20, "t": 40, "b": 50}, barmode="overlay"))
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(levels)), row=1, col=1, showgrid=False)
    fig.update_yaxes(showticklabels=True, showgrid=False, row=2, col=1, tickfont={"size": 10, "color": MUTED})
    fig.update_yaxes(title={"text": "share of importance"}, rangemode="tozero", row=3, col=1)
    for row in (1, 2):
        fig.update_xaxes(range=[-0.04, 1.04], showgrid=row == 1, row=row, col=1)
    fig.update_xaxes(title={"text": "relative depth (layer / (n_layers − 1))"}, range=[-0.04, 1.04], row=3, col=1)
    return fig


def regulator_graph(data: ReportData) -> go.Figure | None:
    """Layered node-link plot of the strongest head-to-head influences (edges run to later layers).

    Args:
        data: the loaded run.

    Returns:
        The ``N_EDGES`` strongest source -> target pairs on the layer x head grid, or None without
        influence measurements.
    """
    if data.influence is None:
        return None
    matrix = influence_matrix(data.influence)
    edges = matrix.nlargest(N_EDGES, "out_change")
    atlas = data.atlas
    n_layers, n_heads = data.results.n_layers, data.results.n_heads
    details = head_details(data)
    colors = group_colors(atlas["group"].tolist())
    fig = go.Figure()
    top = edges["out_change"].max()
    for lo, hi, width in ((0.0, 0.5, 1.0), (0.5, 0.8, 2.2), (0.8, 1.01, 3.5)):
        chosen = edges[(edges["out_change"] >= lo * top) & (edges["out_change"] < hi * top)]
        xs: list[Any] = []
        ys: list[Any] = []
        for r in chosen.itertuples():
            xs += [r.source_layer, r.target_layer, None]
            ys += [r.source_head, r.target_head, None]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                     line={"width": width, "color": _rgba(ACCENT, 0.25 + 0.5 * lo)}))
    fig.add_trace(go.Scatter(x=atlas["layer"], y=atlas["head"], mode="markers", showlegend=False, hoverinfo="skip",
                             marker={"size": 5, "color": NEUTRAL}))
    involved = set(edges["source_id"]) | set(edges["target_id"])
    nodes = atlas[atlas["head_id"].isin(involved)]
    score = nodes["regulator_score"].fillna(0.0)
    size = 9 + 18 * (score / score.max() if score.max() > 0 else score)
    fig.add_trace(go.Scatter(x=nodes["layer"], y=nodes["head"], mode="markers", showlegend=False,
                             text=[details[h] for h in nodes["head_id"]], hovertemplate="%{text}<extra></extra>",
                             marker={"size": size, "color": [colors[int(g)] for g in nodes["group"]],
                                     "line": {"width": 1.5, "color": "#374151"}}))
    axes = grid_axes(n_layers, n_heads)
    axes["xaxis"]["range"] = [-0.8, n_layers - 0.2]
    axes["yaxis"]["range"] = [n_heads - 0.4, -0.6]
    fig.update_layout(**base_layout(height=grid_height(n_heads, n_layers) + 20, **axes))
    return fig


def regulator_bars(data: ReportData, n_top: int = 12) -> go.Figure | None:
    """Top regulator scores with 95% CIs, each against the 95th percentile of the other heads of its layer.

    Args:
        data: the loaded run.
        n_top: heads shown (best first).

    Returns:
        A bar chart, or None when the run's regulator record holds no scores.
    """
    scores = data.records.regulators.scores
    if scores is None or not len(scores):
        return None
    top = _numeric(scores.head(n_top).iloc[::-1], ("score", "ci_low", "ci_high", "breadth", "p_value", "baseline_p95"))
    colors = [ACCENT if c else NEUTRAL for c in top["candidate"]]
    fig = go.Figure(go.Bar(x=top["score"], y=top["head_id"], orientation="h", marker={"color": colors}, showlegend=False,
                           error_x={"type": "data", "symmetric": False, "array": top["ci_high"] - top["score"],
                                    "arrayminus": top["score"] - top["ci_low"], "color": "#374151", "thickness": 1.2},
                           customdata=np.stack([top["ci_low"], top["ci_high"], top["breadth"], top["p_value"],
                                                top["baseline_p95"]], axis=1),
                           hovertemplate="<b>%{y}</b> score %{x:.3f} [95% CI %{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                                         "<br>breadth %{customdata[2]:.2f}, within-layer rank p %{customdata[3]:.2g} "
                                         "(Bonferroni)<br>95th pct of its layer's other heads %{customdata[4]:.3f}"
                                         "<extra></extra>"))
    fig.add_trace(go.Scatter(x=top["baseline_p95"], y=top["head_id"], mode="markers", showlegend=False,
                             marker={"symbol": "line-ns-open", "size": 16, "color": MUTED, "line": {"width": 2}},
                             hovertemplate="%{y}: 95th pct of its layer's other heads %{x:.3f}<extra></extra>"))
    fig.update_layout(**base_layout(height=max(240, 26 * len(top) + 90), xaxis={"title": {"text": "regulator score"},
                                                                                  "gridcolor": GRID}))
    return fig


def contrast_figure(data: ReportData) -> go.Figure | None:
    """Condition contrasts of regulator scores (a − b) with 95% CIs; filled markers have q < 0.05.

    Args:
        data: the loaded run.

    Returns:
        A forest plot, or None when the regulator record holds no contrasts.
    """
    contrasts = data.records.regulators.contrasts
    if contrasts is None or not len(contrasts):
        return None
    table = _numeric(contrasts, ("diff", "ci_low", "ci_high", "p_value", "q_value")).sort_values(["condition_a", "diff"])
    table["label"] = (table["head_id"].astype(str) + " · " + table["condition_a"].astype(str) + " − "
                      + table["condition_b"].astype(str).str.split(":").str[-1])
    significant = table["q_value"].fillna(1.0) < 0.05
    fig = go.Figure(go.Scatter(
        x=table["diff"], y=table["label"], mode="markers",
        marker={"size": 9, "color": [ACCENT if s else "#ffffff" for s in significant], "line": {"width": 1.5, "color": ACCENT}},
        error_x={"type": "data", "symmetric": False, "array": table["ci_high"] - table["diff"],
                 "arrayminus": table["diff"] - table["ci_low"], "color": ACCENT, "thickness": 1.2},
        customdata=np.stack([table["ci_low"], table["ci_high"], table["p_value"], table["q_value"]], axis=1),
        hovertemplate="<b>%{y}</b><br>difference %{x:.3f} [95% CI %{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                      "<br>permutation p %{customdata[2]:.3g}, q %{customdata[3]:.3g}<extra></extra>"))
    fig.add_vline(x=0, line={"color": MUTED, "width": 1})
    fig.update_layout(**base_layout(height=max(240, 24 * len(table) + 90),
                                    xaxis={"title": {"text": "regulator score difference (a − b)"}, "gridcolor": GRID},
                                    yaxis={"automargin": True, "showgrid": False}))
    return fig


def compare_figure(comparison: Comparison) -> go.Figure | None:
    """Matched heads' relative depths (A vs B) and the distribution of their profile correlations.

    Both panels use ``correlation`` (the cosine of the matched heads' centred z-profiles, in
    [-1, 1]); the conservation score, a mean covariance, is stated beside the figure, not drawn on
    this scale.

    Args:
        comparison: one cross-model comparison.

    Returns:
        The two-panel figure, or None when the comparison could not be computed.
    """
    record = comparison.record
    if record is None or not len(record.matches):
        return None
    matches = _numeric(record.matches, ("similarity", "correlation", "rel_depth_a", "rel_depth_b"))
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5], horizontal_spacing=0.2,
                        subplot_titles=("depth of matched heads", "profile correlation of matched pairs"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": MUTED, "width": 1},
                             hoverinfo="skip", showlegend=False), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=matches["rel_depth_a"], y=matches["rel_depth_b"], mode="markers", showlegend=False,
        marker={"size": 9, "color": matches["correlation"], "colorscale": "Viridis", "cmin": -1, "cmax": 1,
                "colorbar": {"title": {"text": "correlation", "side": "top"}, "thickness": 10, "len": 0.8, "x": 0.41,
                             "xanchor": "left"},
                "line": {"width": 0.5, "color": "#ffffff"}},
        text=matches["head_a"].astype(str) + " ↔ " + matches["head_b"].astype(str),
        customdata=matches["similarity"],
        hovertemplate="%{text}<br>correlation %{marker.color:.2f} (covariance %{customdata:.3f})"
                      "<br>depth %{x:.2f} → %{y:.2f}<extra></extra>"), row=1, col=1)
    values = matches["correlation"].dropna().clip(-1.0, 1.0)
    counts, edges = np.histogram(values, bins=20, range=(-1.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    fig.add_trace(go.Bar(x=centers, y=counts, width=edges[1] - edges[0], marker={"color": hcl_palette(1, start=250)[0]},
                         showlegend=False, hovertemplate="correlation %{x:.2f}<br>%{y} pairs<extra></extra>"), row=1, col=2)
    fig.add_vline(x=record.min_similarity, line={"dash": "dot", "color": MUTED, "width": 1}, row=1, col=2)
    fig.update_layout(**base_layout(height=380, margin={"l": 60, "r": 20, "t": 60, "b": 50}, bargap=0.05))
    fig.update_xaxes(title={"text": f"relative depth in {comparison.model_a}"}, range=[-0.05, 1.05], row=1, col=1)
    fig.update_yaxes(title={"text": f"relative depth in {comparison.model_b}"}, range=[-0.05, 1.05], row=1, col=1)
    fig.update_xaxes(title={"text": "correlation of centred z-profiles (dotted: depth-correlation floor)"},
                     range=[-1.02, 1.02], row=1, col=2)
    fig.update_yaxes(title={"text": "pairs"}, row=1, col=2)
    return fig


def prune_figure(curve: pd.DataFrame | None) -> go.Figure | None:
    """Held-out loss change against the fraction of heads pruned, one line per method / replacement / healing.

    Args:
        curve: ``prune/curve.parquet`` of the run, or None.

    Returns:
        The figure, or None without a curve.
    """
    if curve is None:
        return None
    rows = curve[curve["method"] != "none"]
    methods = sorted(rows["method"].unique())
    colors = dict(zip(methods, hcl_palette(len(methods), start=250, chroma=60, lightness=52)))
    fig = go.Figure()
    for (method, replace, healed), line in rows.groupby(["method", "replace", "healed"], sort=True):
        line = line.sort_values("fraction")
        battery = line["task_delta_pct"] if "task_delta_pct" in line else pd.Series(np.nan, index=line.index)
        extra = np.stack([line["heads_pruned"], line["total_params_removed"] / 1e6, line["heldout_ppl"], battery], axis=1)
        scored = bool(np.isfinite(battery.to_numpy(dtype=float)).any())
        fig.add_trace(go.Scatter(
            x=line["fraction"], y=line["loss_delta_pct"], mode="lines+markers",
            name=f"{method} · {replace}" + (" · healed" if healed else ""),
            line={"color": colors[method], "width": 2.2, "dash": "dot" if healed else ("solid" if replace == "zero" else "dash")},
            marker={"size": 7}, customdata=extra,
            hovertemplate=(f"<b>{method}</b> · {replace}{' · healed' if healed else ''}<br>%{{x:.0%}} of heads "
                           "(%{customdata[0]}), %{customdata[1]:.1f}M params removed<br>held-out loss %{y:+.1f}% "
                           "(ppl %{customdata[2]:.2f})"
                           + ("<br>task battery score %{customdata[3]:+.1f}%" if scored else "")
                           + "<extra></extra>")))
    fig.add_hline(y=0, line={"color": MUTED, "width": 1})
    fig.update_layout(**base_layout(height=400, xaxis={"title": {"text": "fraction of heads pruned"}, "tickformat": ".0%",
                                                       "gridcolor": GRID},
                                    yaxis={"title": {"text": "held-out loss change (%)"}, "gridcolor": GRID},
                                    margin={"l": 60, "r": 20, "t": 50, "b": 50}))
    return fig
