"""Layer x head figures: the cortex map, per-task effect heatmaps and the task x head matrix.

Every grid figure puts layers on x (depth grows to the right, as in the layer-band view) and
heads on y (head 0 on top). Effects are ``effect_normalized`` (a fraction of the clean logit
difference; negative = the intervention hurts) on a zero-centred RdBu scale; a dot marks an
*important* cell under that intervention (:data:`cortexmap.rules.IMPORTANT`: effect <= -5% of clean
and z <= -3). The cortex map writes each head's role codes (:data:`ROLE_CODES`, names passed on their
evidence) and marks a head critical for some task with no mechanism named (:data:`CRITICAL_MARK`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cortexmap.analysis.selection import select_effects
from cortexmap.report.data import ReportData
from cortexmap.rules import IMPORTANT
from cortexmap.report.theme import (
    EFFECT_SCALE,
    LEVEL_ORDER,
    MUTED,
    base_layout,
    group_colors,
    level_color,
    text_color,
)

ROLE_CODES = {"previous_token": "PT", "induction": "IND", "duplicate_token": "DUP", "successor": "SUC",
              "attention_sink": "SNK", "name_mover": "NM", "negative_name_mover": "NNM", "coreference": "COR",
              "agreement": "AGR", "fact_retrieval": "FCT", "operand_mover": "OPM"}
CRITICAL_MARK = "•"  # a head critical for some task, with no mechanism named
MAX_MATRIX_HEADS = 400


def _fmt(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def claim_effects(data: ReportData) -> dict[str, pd.DataFrame]:
    """The effect rows of every claim intervention of the atlas, on the atlas's method.

    Args:
        data: the loaded run.

    Returns:
        ``intervention -> select_effects`` output, in the atlas's claim order.
    """
    return {iv: select_effects(data.results.effects, intervention=iv, method=data.records.method)
            for iv in data.records.interventions}


def selected_effects(data: ReportData) -> pd.DataFrame:
    """The effect rows of the atlas's first claim intervention (what single-intervention figures show)."""
    iv = data.records.interventions[0]
    return select_effects(data.results.effects, intervention=iv, method=data.records.method)


def _split(value: Any) -> list[str]:
    return [v for v in value.split(";") if v] if isinstance(value, str) else []


def head_details(data: ReportData, n_top: int = 3) -> dict[str, str]:
    """Hover HTML per head: group, level, roles, tasks it is critical for, strongest task effects, probe scores.

    Args:
        data: the loaded run.
        n_top: tasks listed per head (largest ``|effect_normalized|`` under the first claim
            intervention first), each with every claim intervention's effect and 95% CI.

    Returns:
        ``head_id -> HTML`` for every head of the atlas.
    """
    frames = claim_effects(data)
    ivs = list(frames)
    cells: dict[tuple[str, str], list[str]] = {}
    for iv, effects in frames.items():
        scale = effects["clean"].abs().replace(0.0, np.nan)
        for head, task, value, lo, hi in zip(effects["head_id"], effects["task"], effects["effect_normalized"],
                                             effects["ci_low"] / scale, effects["ci_high"] / scale):
            cells.setdefault((head, task), []).append(f"{iv} {_fmt(value)} [{_fmt(lo)}, {_fmt(hi)}]")
    first = frames[ivs[0]].assign(mag=lambda f: f["effect_normalized"].abs())
    top = first.sort_values("mag", ascending=False).groupby("head_id").head(n_top)
    lines_of: dict[str, list[str]] = {}
    for head, task in zip(top["head_id"], top["task"]):
        lines_of.setdefault(head, []).append(f"{task}: {', '.join(cells.get((head, task), []))}")
    probes = [c for c in data.atlas.columns if str(c).startswith("probe:")]
    out = {}
    for row in data.atlas.to_dict("records"):
        head = row["head_id"]
        level = row["dominant_level"] if isinstance(row["dominant_level"], str) else "none (no important task)"
        parts = [f"<b>{head}</b>  ·  {row['group_name']}", f"dominant level: {level}"]
        if _split(row.get("roles")):
            parts.append(f"roles (on their evidence): {', '.join(_split(row['roles']))}")
        if _split(row.get("critical_for")):
            parts.append(f"critical for: {', '.join(_split(row['critical_for']))}")
        parts.append("<i>effect / |clean| [95% CI]</i>")
        parts += lines_of.get(head, ["not measured"])
        scores = sorted(((row[c], c.split(":", 1)[1]) for c in probes if row[c] is not None and math.isfinite(row[c])),
                        reverse=True)[:3]
        if scores:
            parts.append("probes: " + ", ".join(f"{name} {score:.2f}" for score, name in scores))
        if row.get("specialization") is not None and math.isfinite(row["specialization"]):
            parts.append(f"specialization {row['specialization']:.2f}")
        if row.get("regulator_score") is not None and math.isfinite(row["regulator_score"]):
            parts.append(f"regulator score {row['regulator_score']:.3f}")
        out[head] = "<br>".join(parts)
    return out


def map_marks(atlas: pd.DataFrame) -> pd.Series:
    """The text drawn in each head's cell: its first role's code (``+`` for more), else the critical mark, else ""."""
    def mark(roles: Any, critical: Any) -> str:
        named = _split(roles)
        if named:
            return ROLE_CODES.get(named[0], named[0][:3].upper()) + ("+" if len(named) > 1 else "")
        return CRITICAL_MARK if _split(critical) else ""

    return pd.Series([mark(r, c) for r, c in zip(atlas["roles"], atlas["critical_for"])], index=atlas.index)


def _grid(values: pd.Series, atlas: pd.DataFrame, n_layers: int, n_heads: int, fill: Any = None) -> list[list[Any]]:
    """[head][layer] nested list of ``values`` (indexed like ``atlas``)."""
    grid = [[fill] * n_layers for _ in range(n_heads)]
    for lay, hd, value in zip(atlas["layer"], atlas["head"], values):
        grid[int(hd)][int(lay)] = value
    return grid


def _categorical(codes: pd.Series, colors: list[str]) -> tuple[list[list[float]], float, float]:
    """A step colourscale so that integer codes 0..n-1 take ``colors``."""
    n = max(len(colors), 1)
    scale = []
    for i, color in enumerate(colors):
        scale += [[i / n, color], [(i + 1) / n, color]]
    return scale, -0.5, n - 0.5


def grid_axes(n_layers: int, n_heads: int) -> dict[str, Any]:
    """Axes of a layer x head grid: layers on x, head 0 on top, ticks thinned for big models."""
    x_step = max(1, math.ceil(n_layers / 32))
    y_step = max(1, math.ceil(n_heads / 24))
    return {"xaxis": {"title": {"text": "layer"}, "dtick": x_step, "showgrid": False, "zeroline": False,
                      "range": [-0.5, n_layers - 0.5]},
            "yaxis": {"title": {"text": "head"}, "dtick": y_step, "range": [n_heads - 0.5, -0.5], "showgrid": False,
                      "zeroline": False}}


def grid_height(n_heads: int, n_layers: int, width: int = 1100) -> int:
    """Figure height that keeps grid cells roughly square at ``width`` pixels."""
    cell = min(44.0, max(10.0, (width - 120) / max(n_layers, 1)))
    return int(min(1000, max(260, n_heads * cell + 130)))


def cortex_map(data: ReportData) -> go.Figure:
    """Every head coloured by functional group (or, via the buttons, by dominant level), with role codes.

    Args:
        data: the loaded run.

    Returns:
        A heatmap figure with one hover card per head; role codes are drawn when cells are wide enough.
    """
    atlas = data.atlas
    n_layers, n_heads = data.results.n_layers, data.results.n_heads
    hover = _grid(atlas["head_id"].map(head_details(data)), atlas, n_layers, n_heads, "")
    groups = sorted(int(g) for g in atlas["group"].unique())
    gcolors = group_colors(groups)
    names = atlas.drop_duplicates("group").set_index("group")["group_name"].to_dict()
    levels = [lv for lv in LEVEL_ORDER if lv in set(atlas["dominant_level"].dropna())]
    levels += sorted(set(atlas["dominant_level"].dropna()) - set(levels))
    level_codes = atlas["dominant_level"].map({lv: i + 1 for i, lv in enumerate(levels)}).fillna(0).astype(int)
    traces: list[go.BaseTraceType] = []
    for key, codes, colors in (
        ("group", atlas["group"].map({g: i for i, g in enumerate(groups)}), [gcolors[g] for g in groups]),
        ("level", level_codes, ["#eceef1"] + [level_color(lv) for lv in levels]),
    ):
        scale, zmin, zmax = _categorical(codes, colors)
        traces.append(go.Heatmap(z=_grid(codes, atlas, n_layers, n_heads), text=hover, hovertemplate="%{text}<extra></extra>",
                                 colorscale=scale, zmin=zmin, zmax=zmax, showscale=False, xgap=2, ygap=2,
                                 visible=key == "group", name=key))
    legend = [(f"group:{g}", names[g], gcolors[g]) for g in groups]
    legend += [("level:none", "no important task", "#eceef1")] + [(f"level:{lv}", lv, level_color(lv)) for lv in levels]
    for key, label, color in legend:
        traces.append(go.Scatter(x=[None], y=[None], mode="markers", name=label, legendgroup=key,
                                 marker={"symbol": "square", "size": 12, "color": color, "line": {"width": 1, "color": "#c7cbd1"}},
                                 visible=key.startswith("group"), showlegend=True))
    fig = go.Figure(traces)
    cell = (1100 - 120) / max(n_layers, 1)
    if cell >= 20:  # role codes fit in the cells
        marks = map_marks(atlas)
        roled = atlas[marks != ""]
        codes_text = list(marks[marks != ""])
        colors = [text_color(gcolors[int(g)]) for g in roled["group"]]
        fig.add_trace(go.Scatter(x=roled["layer"], y=roled["head"], mode="text", text=codes_text, hoverinfo="skip",
                                 textfont={"size": 9 if cell < 30 else 10, "color": colors}, showlegend=False))
    n_group_traces = 2 + len(legend)
    show_group = [True, False] + [k.startswith("group") for k, _, _ in legend] + [True] * (len(fig.data) - n_group_traces)
    show_level = [False, True] + [k.startswith("level") for k, _, _ in legend] + [True] * (len(fig.data) - n_group_traces)
    buttons = [{"label": "functional group", "method": "update", "args": [{"visible": show_group}]},
               {"label": "dominant level", "method": "update", "args": [{"visible": show_level}]}]
    fig.update_layout(**base_layout(height=grid_height(n_heads, n_layers) + 60, **grid_axes(n_layers, n_heads),
                                    margin={"l": 50, "r": 10, "t": 50, "b": 40},
                                    legend={"orientation": "h", "yanchor": "top", "y": -0.16, "x": 0, "font": {"size": 11},
                                            "itemclick": False, "itemdoubleclick": False}),
                      updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, "x": 0, "xanchor": "left",
                                    "y": 1.0, "yanchor": "bottom", "pad": {"b": 8}, "showactive": True,
                                    "bgcolor": "#ffffff", "bordercolor": "#d1d5db", "font": {"size": 11}}])
    return fig


def _task_views(selected: pd.DataFrame, n_layers: int, n_heads: int) -> list[dict[str, Any]]:
    """Per task: z grid, hover data grid, important-dot grid and a symmetric colour range."""
    views = []
    scale = selected["clean"].abs().replace(0.0, np.nan)
    frame = selected.assign(lo=selected["ci_low"] / scale, hi=selected["ci_high"] / scale)
    for task, rows in frame.groupby("task", sort=True):
        z = [[None] * n_layers for _ in range(n_heads)]
        custom = [[[None] * 6 for _ in range(n_layers)] for _ in range(n_heads)]
        dots = [[""] * n_layers for _ in range(n_heads)]
        for r in rows.itertuples():
            lay, hd = int(r.layer), int(r.head)
            value = float(r.effect_normalized) if math.isfinite(r.effect_normalized) else None
            z[hd][lay] = value
            custom[hd][lay] = [_num(r.lo), _num(r.hi), _num(r.clean), _num(r.intervened), _num(r.effect), int(r.n_prompts)]
            if value is not None and IMPORTANT.mask(value, r.se_normalized):
                dots[hd][lay] = "•"
        magnitude = rows["effect_normalized"].abs().replace([np.inf, -np.inf], np.nan).dropna()
        bound = float(np.percentile(magnitude, 99)) if len(magnitude) else 1.0
        views.append({"task": str(task), "level": str(rows["level"].iloc[0]), "z": z, "custom": custom, "dots": dots,
                      "bound": max(bound, 0.02)})
    return views


def _num(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _effect_hover(task: str, level: str) -> str:
    return (f"<b>L%{{x}}H%{{y}}</b> · {task} ({level})<br>effect / |clean| <b>%{{z:.3f}}</b> "
            "[95% CI %{customdata[0]:.3f}, %{customdata[1]:.3f}]<br>metric: clean %{customdata[2]:.2f} → "
            "intervened %{customdata[3]:.2f} (effect %{customdata[4]:.2f})<br>%{customdata[5]} prompts<extra></extra>")


def effect_heatmap(effects: pd.DataFrame, intervention: str, method: str, n_layers: int, n_heads: int,
                   alpha: float | None = None) -> go.Figure:
    """Layer x head heatmap of one intervention's normalized effects, a dropdown choosing the task.

    Args:
        effects: the run's effects table.
        intervention: which intervention's rows to show.
        method: ``"exact"`` or ``"attribution"``.
        n_layers: layers of the model.
        n_heads: heads per layer.
        alpha: amplification factor when the intervention has several.

    Returns:
        The figure; each dropdown entry restyles the heatmap to one task (colour range per task).
    """
    selected = select_effects(effects, intervention=intervention, method=method, alpha=alpha)
    views = _task_views(selected, n_layers, n_heads)
    first = views[0]
    fig = go.Figure(go.Heatmap(z=first["z"], customdata=first["custom"], text=first["dots"], texttemplate="%{text}",
                               textfont={"size": 10, "color": "rgba(17,24,39,0.7)"}, hovertemplate=_effect_hover(first["task"], first["level"]),
                               colorscale=EFFECT_SCALE, zmid=0, zmin=-first["bound"], zmax=first["bound"], xgap=1, ygap=1,
                               colorbar={"title": {"text": "effect /<br>|clean|", "side": "top"}, "thickness": 12, "len": 0.9}))
    buttons = [{"label": f"{v['task']} · {v['level']}", "method": "restyle",
                "args": [{"z": [v["z"]], "customdata": [v["custom"]], "text": [v["dots"]], "zmin": [-v["bound"]],
                          "zmax": [v["bound"]], "hovertemplate": [_effect_hover(v["task"], v["level"])]}, [0]]}
               for v in views]
    fig.update_layout(**base_layout(height=grid_height(n_heads, n_layers) + 30, **grid_axes(n_layers, n_heads),
                                    margin={"l": 50, "r": 10, "t": 60, "b": 45}),
                      updatemenus=[{"buttons": buttons, "direction": "down", "x": 0, "xanchor": "left", "y": 1.02,
                                    "yanchor": "bottom", "showactive": True, "bgcolor": "#ffffff",
                                    "bordercolor": "#d1d5db", "font": {"size": 12}}],
                      annotations=[{"text": "• important under this intervention (effect ≤ −5% of clean, z ≤ −3)", "x": 1, "xref": "paper", "xanchor": "right",
                                    "y": 1.02, "yref": "paper", "yanchor": "bottom", "showarrow": False,
                                    "font": {"size": 11, "color": MUTED}}])
    return fig


def task_head_matrix(data: ReportData) -> go.Figure:
    """Tasks (rows, by level) x active heads (columns, ordered by functional group then depth).

    Args:
        data: the loaded run.

    Returns:
        A two-row figure: the group strip over the effect matrix (all heads when none is active,
        at most ``MAX_MATRIX_HEADS`` columns, the strongest kept).
    """
    atlas = data.atlas.set_index("head_id")
    selected = selected_effects(data)
    active = atlas[atlas["group"] != 0]
    heads = (active if len(active) else atlas).sort_values(["group", "layer", "head"])
    if len(heads) > MAX_MATRIX_HEADS:  # keep the strongest heads so the matrix stays legible
        strength = selected.groupby("head_id")["effect_normalized"].apply(lambda s: s.abs().max())
        keep = set(strength.reindex(heads.index).nlargest(MAX_MATRIX_HEADS).index)
        heads = heads[heads.index.isin(keep)]
    pivot = selected.pivot_table(index="task", columns="head_id", values="effect_normalized", aggfunc="first")
    levels = selected.drop_duplicates("task").set_index("task")["level"].astype(str)
    order = {lv: i for i, lv in enumerate(LEVEL_ORDER)}
    tasks = sorted(pivot.index, key=lambda t: (order.get(levels[t], len(order)), t))
    z = pivot.reindex(index=tasks, columns=heads.index)
    values = z.to_numpy(dtype=float)
    bound = float(np.nanpercentile(np.abs(values), 99)) if np.isfinite(values).any() else 1.0
    cells = [[None if not math.isfinite(v) else v for v in row] for row in values]
    gcolors = group_colors(atlas["group"].tolist())
    groups = sorted({int(g) for g in heads["group"]})
    scale, zmin, zmax = _categorical(pd.Series(groups), [gcolors[g] for g in groups])
    strip = [[groups.index(int(g)) for g in heads["group"]]]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.05, 0.95], vertical_spacing=0.01)
    fig.add_trace(go.Heatmap(z=strip, x=list(heads.index), y=["group"], colorscale=scale, zmin=zmin, zmax=zmax,
                             showscale=False, text=[list(heads["group_name"])], xgap=0,
                             hovertemplate="%{x}: %{text}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=cells, x=list(heads.index), y=tasks, colorscale=EFFECT_SCALE, zmid=0,
                             zmin=-max(bound, 0.02), zmax=max(bound, 0.02), xgap=0, ygap=1,
                             hovertemplate="%{x} · %{y}<br>effect / |clean| %{z:.3f}<extra></extra>",
                             colorbar={"title": {"text": "effect /<br>|clean|", "side": "top"}, "thickness": 12, "len": 0.9}),
                  row=2, col=1)
    ticktext = [f"<span style='color:{level_color(levels[t])}'>■</span> {t}" for t in tasks]
    fig.update_layout(**base_layout(height=min(900, max(260, 22 * len(tasks) + 140)),
                                    margin={"l": 10, "r": 10, "t": 20, "b": 60}))
    fig.update_yaxes(showticklabels=False, row=1, col=1, showgrid=False)
    fig.update_yaxes(tickvals=tasks, ticktext=ticktext, autorange="reversed", showgrid=False, automargin=True, row=2, col=1)
    fig.update_xaxes(showticklabels=len(heads) <= 80, tickangle=-90, tickfont={"size": 9}, showgrid=False, row=2, col=1)
    fig.update_xaxes(showgrid=False, row=1, col=1)
    return fig
