"""Plotly figures of an atlas: cortex map, effect heatmaps, task x head matrix, bands, regulators, pruning.

Every builder takes pandas objects (no torch) and returns a ``plotly.graph_objects.Figure``.
Effects use a diverging RdBu scale centred at zero; groups and levels a qualitative palette.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

LEVEL_COLORS = {"lexical": "#4C78A8", "syntactic": "#72B7B2", "semantic": "#54A24B", "pragmatic": "#F58518",
                "reasoning": "#E45756", "custom": "#B279A2"}
GROUP_PALETTE = ["#d9d9d9", "#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6",
                 "#9D755D", "#EECA3B"]
_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), font=dict(size=12))


def _grid(atlas: pd.DataFrame, column: str, n_layers: int, n_heads: int, fill: Any = np.nan) -> np.ndarray:
    grid = np.full((n_layers, n_heads), fill, dtype=object if isinstance(fill, str) else float)
    for row in atlas.itertuples():
        grid[int(row.layer), int(row.head)] = getattr(row, column)
    return grid


def _hover(row: Any, probe_cols: list[str]) -> str:
    lines = [f"<b>{row['head_id']}</b>  (relative depth {row['rel_depth']:.2f})", f"group: {row['group_name']}"]
    if isinstance(row.get("roles"), str) and row["roles"]:
        lines.append(f"roles: {row['roles']}")
    if isinstance(row.get("top_task"), str):
        lines.append(f"top task: {row['top_task']} effect {row['top_effect']:+.3f} "
                     f"[{row['top_ci_low']:+.3f}, {row['top_ci_high']:+.3f}]")
    probes = ", ".join(f"{c.split(':', 1)[1]} {row[c]:.2f}" for c in probe_cols if pd.notna(row[c]))
    if probes:
        lines.append(f"probes: {probes}")
    return "<br>".join(lines)


def cortex_map(atlas: pd.DataFrame, n_layers: int, n_heads: int) -> go.Figure:
    """Layer x head grid coloured by functional group, hover details per head."""
    probe_cols = [c for c in atlas.columns if c.startswith("probe:")]
    groups = sorted(atlas["group"].dropna().unique().tolist())
    names = atlas.drop_duplicates("group").set_index("group")["group_name"].to_dict()
    z = np.full((n_layers, n_heads), np.nan)
    text = np.full((n_layers, n_heads), "", dtype=object)
    for _, row in atlas.iterrows():
        z[int(row["layer"]), int(row["head"])] = groups.index(row["group"])
        text[int(row["layer"]), int(row["head"])] = _hover(row, probe_cols)
    n = max(len(groups), 1)
    colorscale = []
    for i in range(n):
        color = GROUP_PALETTE[i % len(GROUP_PALETTE)]
        colorscale += [[i / n, color], [(i + 1) / n, color]]
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"H{h}" for h in range(n_heads)], y=[f"L{l}" for l in range(n_layers)], text=text,
        hovertemplate="%{text}<extra></extra>", colorscale=colorscale, zmin=-0.5, zmax=n - 0.5, xgap=2, ygap=2,
        colorbar=dict(tickvals=list(range(n)), ticktext=[names.get(g, str(g)) for g in groups], title="group")))
    fig.update_layout(title="Cortex map: functional group of every head", height=max(420, 22 * n_layers),
                      yaxis=dict(autorange="reversed", title="layer"), xaxis=dict(title="head", side="top"), **_LAYOUT)
    return fig


def effect_heatmaps(effects: pd.DataFrame, n_layers: int, n_heads: int) -> go.Figure:
    """Layer x head normalized-effect heatmap per (task, intervention, method), chosen from a dropdown."""
    keys = list(effects.groupby(["task", "intervention", "method"], sort=True).groups)
    fig = go.Figure()
    bound = float(np.nanpercentile(np.abs(effects["effect_normalized"].to_numpy(dtype=float)), 99) or 1.0)
    for i, (task, kind, method) in enumerate(keys):
        part = effects[(effects.task == task) & (effects.intervention == kind) & (effects.method == method)]
        z = np.full((n_layers, n_heads), np.nan)
        hover = np.full((n_layers, n_heads), "", dtype=object)
        for r in part.itertuples():
            z[r.layer, r.head] = r.effect_normalized
            hover[r.layer, r.head] = (f"{r.head_id}: effect {r.effect:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
                                      f"<br>normalized {r.effect_normalized:+.3f}, clean {r.clean:.2f}, n={r.n_prompts}")
        fig.add_trace(go.Heatmap(z=z, text=hover, hovertemplate="%{text}<extra></extra>", colorscale="RdBu",
                                 zmid=0, zmin=-bound, zmax=bound, visible=i == 0, xgap=1, ygap=1,
                                 x=[f"H{h}" for h in range(n_heads)], y=[f"L{l}" for l in range(n_layers)],
                                 colorbar=dict(title="effect /<br>|clean|")))
    buttons = [dict(label=f"{t} · {k} · {m}", method="update",
                    args=[{"visible": [j == i for j in range(len(keys))]}]) for i, (t, k, m) in enumerate(keys)]
    fig.update_layout(title=dict(text="Effect of intervening on each head (diverging, centred at 0)", x=0.35),
                      updatemenus=[dict(buttons=buttons, x=0, y=1.1, xanchor="left", yanchor="bottom", direction="down")],
                      height=max(420, 22 * n_layers), yaxis=dict(autorange="reversed", title="layer"),
                      xaxis=dict(title="head"), **{**_LAYOUT, "margin": dict(l=60, r=20, t=90, b=50)})
    return fig


def task_head_matrix(effects: pd.DataFrame, atlas: pd.DataFrame) -> go.Figure:
    """Tasks x heads (active heads only), heads ordered by functional group then depth."""
    active = atlas[atlas["group"] != 0].sort_values(["group", "layer", "head"])
    if active.empty:
        active = atlas.sort_values(["layer", "head"])
    table = effects.pivot_table(index="task", columns="head_id", values="effect_normalized", aggfunc="mean")
    table = table.reindex(columns=[h for h in active["head_id"] if h in table.columns])
    bound = float(np.nanpercentile(np.abs(table.to_numpy(dtype=float)), 99)) if table.size else 1.0
    fig = go.Figure(go.Heatmap(z=table.to_numpy(), x=list(table.columns), y=list(table.index), colorscale="RdBu",
                               zmid=0, zmin=-bound, zmax=bound, colorbar=dict(title="effect /<br>|clean|")))
    fig.update_layout(title="Task x head matrix (active heads, ordered by group)", height=max(380, 20 * len(table)),
                      **_LAYOUT)
    return fig


def band_view(findings: dict) -> go.Figure:
    """Mean relative depth of each level's important heads, with 95% intervals."""
    depths = pd.DataFrame(findings.get("bands", {}).get("level_depths", []))
    fig = go.Figure()
    if not depths.empty:
        depths = depths.dropna(subset=["mean_depth"])
        order = [l for l in LEVEL_COLORS if l in set(depths["level"])]
        depths = depths.set_index("level").loc[order].reset_index()
        fig.add_trace(go.Scatter(
            x=depths["mean_depth"], y=depths["level"], mode="markers", marker=dict(size=14, color=[LEVEL_COLORS[l] for l in depths["level"]]),
            error_x=dict(type="data", symmetric=False, array=depths["ci_high"] - depths["mean_depth"],
                         arrayminus=depths["mean_depth"] - depths["ci_low"]),
            hovertemplate="%{y}: mean depth %{x:.2f}<extra></extra>"))
    fig.add_vline(x=0.5, line_dash="dot", annotation_text="uniform baseline", line_color="#888")
    hyp = findings.get("bands", {}).get("hypothesis", {})
    title = "Where each level's important heads sit (relative depth)"
    if hyp.get("verdict"):
        title += (f"<br><sub>'{hyp.get('hypothesis')}': <b>{hyp['verdict']}</b>, Spearman rho {hyp['rho']:+.2f} "
                  f"[{hyp['ci_low']:+.2f}, {hyp['ci_high']:+.2f}], p = {hyp['p_value']:.3g} vs layer-shuffle null</sub>")
    fig.update_layout(title=title, xaxis=dict(range=[0, 1], title="relative depth (0 = first layer, 1 = last)"),
                      yaxis=dict(autorange="reversed"), height=360, **_LAYOUT)
    return fig


def regulator_chart(findings: dict) -> go.Figure | None:
    """Top regulator candidates' scores with 95% intervals, if influence was measured."""
    reg = findings.get("regulators")
    if not reg:
        return None
    top = pd.DataFrame(reg.get("top", reg.get("scores", [])))
    if top.empty or "score" not in top:
        return None
    top = top.head(15)
    fig = go.Figure(go.Bar(x=top["head_id"], y=top["score"], marker_color="#4C78A8",
                           error_y=dict(type="data", symmetric=False, array=top["ci_high"] - top["score"],
                                        arrayminus=top["score"] - top["ci_low"]) if "ci_low" in top else None))
    fig.update_layout(title="Regulator score (breadth x strength of influence on later heads)", height=360, **_LAYOUT)
    return fig


def pruning_chart(curve: pd.DataFrame) -> go.Figure:
    """Held-out loss change against the fraction of heads pruned, per method and replacement."""
    fig = go.Figure()
    for (method, replace, healed), part in curve.groupby(["method", "replace", "healed"]):
        part = part.sort_values("fraction")
        fig.add_trace(go.Scatter(x=part["fraction"], y=part["loss_delta_pct"], mode="lines+markers",
                                 name=f"{method} / {replace}{' / healed' if healed else ''}"))
    fig.add_hline(y=2, line_dash="dot", line_color="#888", annotation_text="2% loss")
    fig.update_layout(title="Pruning curve: held-out loss increase (%)", xaxis_title="fraction of heads pruned",
                      yaxis_title="loss change (%)", height=380, **_LAYOUT)
    return fig
