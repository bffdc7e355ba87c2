"""``render_report``: one self-contained HTML atlas of a run, and the figures it is made of.

The page opens offline: plotly.js, the stylesheet, the page script and every figure (as plotly
JSON, one ``<script type="application/json" id="figure-data">`` blob) are inlined once. The page
script draws the figures, records any error in ``<div id="errors">`` and sets
``<body data-rendered="1">`` when every figure is drawn, which the browser test checks.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from cortexmap.analysis.findings import num
from cortexmap.atomic import write_text
from cortexmap.results.layout import REPORT
from cortexmap.report import bands, charts, circuits, maps, roles, sections
from cortexmap.report.data import ReportData, load_report_data
from cortexmap.report.page import esc, header, nav, route_findings



class ReportPath(type(Path())):  # type: ignore[misc]
    """The written page's path; in Jupyter it displays the page inline (``_repr_html_``)."""

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.read_text(encoding="utf-8"), quote=True)}" '
                'style="width:100%;height:900px;border:0"></iframe>')


def effect_views(data: ReportData) -> list[tuple[str, str, dict]]:
    """The effect heatmaps a run gets: one per (intervention, method, alpha), the atlas's claim first.

    Args:
        data: the loaded run.

    Returns:
        ``(figure name, title, select_effects keyword arguments)`` per heatmap; the title starts
        with the intervention's name.
    """
    effects = data.results.effects
    claim = list(data.records.interventions)
    keys = effects[["intervention", "method", "alpha"]].drop_duplicates()
    rank = [claim.index(iv) if iv in claim and m == data.records.method else len(claim)
            for iv, m in zip(keys["intervention"], keys["method"])]
    keys = keys.assign(rank=rank).sort_values(["rank", "intervention", "method", "alpha"])
    views = []
    for r in keys.itertuples():
        alpha = None if r.alpha is None or (isinstance(r.alpha, float) and math.isnan(r.alpha)) else float(r.alpha)
        suffix = f" · α = {alpha:g}" if alpha is not None else ""
        role = " · claim" if r.rank < len(claim) else (" · off-distribution" if r.intervention == "zero" else "")
        name = f"effects_{r.intervention}_{r.method}" + (f"_a{alpha:g}" if alpha is not None else "")
        views.append((name, f"{r.intervention} · {r.method}{suffix}{role}",
                      {"intervention": r.intervention, "method": r.method, "alpha": alpha}))
    return views


def build_figures(data: ReportData) -> dict[str, go.Figure]:
    """Every figure of the report by name (the names ``export_figures`` writes).

    Args:
        data: the loaded run.

    Returns:
        ``name -> figure``; figures whose input was not measured are left out.
    """
    n_layers, n_heads = data.results.n_layers, data.results.n_heads
    figures: dict[str, go.Figure | None] = {"cortex_map": maps.cortex_map(data)}
    for name, _, kwargs in effect_views(data):
        figures[name] = maps.effect_heatmap(data.results.effects, n_layers=n_layers, n_heads=n_heads, **kwargs)
    figures["task_head_matrix"] = maps.task_head_matrix(data)
    figures["bands"] = charts.band_figure(data)
    figures["regulator_graph"] = charts.regulator_graph(data)
    figures["regulator_scores"] = charts.regulator_bars(data)
    figures["contrasts"] = charts.contrast_figure(data)
    for i, comparison in enumerate(data.comparisons):
        figures[f"compare_{i}"] = charts.compare_figure(comparison)
    figures["pruning"] = charts.prune_figure(data.prune_curve)
    figures.update(circuits.circuit_figures(data))
    return {name: fig for name, fig in figures.items() if fig is not None}


def _asset(name: str) -> str:
    return resources.files("cortexmap.report").joinpath("assets", name).read_text(encoding="utf-8")


def _script_json(payload: str) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` or ``<!--`` can close it early)."""
    return payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def check_chip(record: dict | None) -> str:
    """Whether and when ``cortexmap check`` checked the model, from the manifest's ``check`` record."""
    if not record:
        return "model not checked (run made before cortexmap check)"

    def when(r: dict) -> str:
        return f"{r.get('status')} ({r.get('subset')} check, {str(r.get('checked_at', ''))[:10]})"

    status = record.get("status")
    if status in ("passed", "failed"):
        return f"invariants {when(record)}"
    last = record.get("last")
    if last:
        return f"invariants {when(last)}" + (", map ran with --skip-check" if status == "skipped" else "")
    return f"invariants not checked: {record.get('reason', status)}"


def _header(data: ReportData) -> str:
    m = data.results.manifest
    model = m.get("model", {})
    records = data.records
    n_layers, n_heads = data.results.n_layers, data.results.n_heads
    params = model.get("n_params")
    subtitle = f"{model.get('model_type', '')} · {n_layers} layers × {n_heads} heads = {n_layers * n_heads} heads"
    if model.get("n_kv_heads") and model.get("n_kv_heads") != n_heads:
        subtitle += f" · {model['n_kv_heads']} KV heads per layer"
    if isinstance(params, (int, float)):
        subtitle += f" · {params / 1e6:.1f}M parameters"
    tasks = m.get("tasks", {})
    levels = sorted({t.get("level") for t in tasks.values() if t.get("level")})
    claim = (f"claims: {' + '.join(records.interventions)} · {records.method}"
             + ("" if records.counterfactual else " (off-distribution only)"))
    chips = [f"{len(tasks)} tasks · {len(levels)} levels", f"interventions: {', '.join(m.get('interventions', []))}",
             claim, f"{m.get('dtype', '')} on {m.get('device', '')}", f"seed {m.get('seed')}"]
    chips.append(check_chip(m.get("check")))
    total = m.get("timings", {}).get("total_s")
    if isinstance(total, (int, float)):
        chips.append(f"mapped in {num(total / 60, 1)} min")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return header(data.model_name, subtitle, chips,
                  f"generated {stamp} by cortexmap {m.get('cortexmap_version', '')} from {data.results.root}")


def build_page(data: ReportData, figures: dict[str, go.Figure]) -> str:
    """The complete HTML document of a loaded run and its figures.

    Args:
        data: the loaded run.
        figures: :func:`build_figures` output.

    Returns:
        The page as one string.
    """
    routed = route_findings(data.records.findings())
    present = set(figures)
    effect_names = [view for view in effect_views(data) if view[0] in present]
    compare_names = [f"compare_{i}" for i in range(len(data.comparisons))]
    body = "".join([
        sections.summary_section(data, routed),
        sections.map_section(data, routed),
        sections.findings_section(routed),
        sections.effects_section(data, effect_names),
        bands.bands_section(data, routed),
        roles.roles_section(data, routed),
        sections.regulators_section(data, routed, present),
        circuits.circuit_section(data, present),
        sections.compare_section(data, compare_names),
        sections.prune_section(data, present),
        sections.manifest_section(data),
    ])
    blob = _script_json("{" + ",".join(f"{json.dumps(name)}:{pio.to_json(fig, validate=False)}"
                                       for name, fig in figures.items()) + "}")
    title = f"{data.model_name} · cortexmap atlas"
    footer = ('<footer><div class="wrap">cortexmap atlas · self-contained page (no network needed) · effects are '
              "fractions of the task's clean metric (the logit difference, or its log-probability / probability form for "
              "multi-token answers and answer sets); claims rest on the interventions stated under “What this atlas "
              "measures”; intervals are 95% bootstrap intervals unless stated.</div></footer>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{_asset('report.css')}</style></head><body>{_header(data)}{nav(sections.SECTIONS)}"
            f'<main class="wrap">{body}</main>{footer}<div id="errors"></div>'
            f"<script>{get_plotlyjs()}</script>"
            f'<script type="application/json" id="figure-data">{blob}</script>'
            f"<script>{_asset('report.js')}</script></body></html>")


def render_report(run_dir: str | Path, compare: Sequence[str | Path] | None = None, out: str | Path | None = None) -> Path:
    """Write the HTML atlas of a run (building its atlas first when ``cortexmap analyze`` was not run).

    Args:
        run_dir: a run directory written by ``cortexmap map``.
        compare: other run directories to compare the run with (cross-model panels).
        out: the HTML file to write; default ``RUN_DIR/report.html``.

    Returns:
        The path of the written file.

    Raises:
        ResultsError: ``run_dir`` (or a ``compare`` entry) is not a run directory or is unfinished.
    """
    data = load_report_data(run_dir, compare or ())
    page = build_page(data, build_figures(data))
    return ReportPath(write_text(Path(out) if out is not None else data.results.root / REPORT, page))
