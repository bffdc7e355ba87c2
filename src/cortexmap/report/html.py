"""``render_report``: one self-contained HTML atlas of a run (plotly.js, styles and data inlined).

The page works offline: plotly.js is inlined once, figures are JSON specs rendered by a small
script that records any error in ``#errors`` and sets ``data-rendered`` on ``<body>`` when done.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs

from cortexmap.errors import ResultsError
from cortexmap.report import figures
from cortexmap.report.style import CSS, SCRIPT

PRUNE_CURVE = Path("prune") / "curve.parquet"


def ensure_atlas(run_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """Load the run's atlas, building it (pure analysis, no model) when ``cortexmap analyze`` was not run."""
    from cortexmap.pipeline import ATLAS, FINDINGS, analyze_run
    from cortexmap.sweep.store import load_results

    results = load_results(run_dir)  # raises the one-line errors for non-runs and unfinished runs
    root = results.root
    if not (root / ATLAS).exists() or not (root / FINDINGS).exists():
        return analyze_run(root)
    return pd.read_parquet(root / ATLAS), json.loads((root / FINDINGS).read_text())


def _table(df: pd.DataFrame, sortable: bool = True) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, row in df.iterrows():
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(f'<td data-v="{v}">{v:.3g}</td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}" class="card"><h2>{html.escape(title)}</h2>{body}</section>'


def _figure(fig: Any, name: str) -> str:
    spec = pio.to_json(fig, validate=False)
    return f'<div class="figure" id="fig-{name}"></div><script type="application/json" data-fig="fig-{name}">{spec}</script>'


def _compare_section(run_dir: Path, others: list[str]) -> str:
    from cortexmap.pipeline import compare_runs

    result = compare_runs([run_dir, *others])
    parts = []
    for comp in result["comparisons"]:
        scalars = {k: v for k, v in comp.items() if isinstance(v, (int, float, str, bool)) and k not in ("run_b",)}
        parts.append(f"<h3>{html.escape(comp['a'])} vs {html.escape(comp['b'])}</h3>" +
                     _table(pd.DataFrame([scalars]).T.reset_index().rename(columns={"index": "measure", 0: "value"}), False))
        matched = pd.DataFrame(comp.get("matches", comp.get("pairs", [])))
        if not matched.empty:
            parts.append(_table(matched.head(30)))
    return "".join(parts)


def render_report(run_dir: str | Path, compare: list[str] | None = None, out: str | Path | None = None) -> Path:
    """Write the HTML atlas of a run and return its path (default ``RUN_DIR/report.html``).

    Raises:
        ResultsError: not a run, or an unfinished run.
    """
    from cortexmap.analysis import summarize_findings
    from cortexmap.sweep.store import load_results

    atlas, findings = ensure_atlas(run_dir)
    results = load_results(run_dir)
    root, manifest = results.root, results.manifest
    n_layers, n_heads = results.n_layers, results.n_heads
    model = manifest["model"]
    sections = [
        _section("summary", "Findings", "<ul>" + "".join(f"<li>{html.escape(l)}</li>" for l in summarize_findings(findings)) + "</ul>"),
        _section("map", "Cortex map", _figure(figures.cortex_map(atlas, n_layers, n_heads), "map")),
        _section("effects", "Effects per task", _figure(figures.effect_heatmaps(results.effects, n_layers, n_heads), "effects")
                 + _figure(figures.task_head_matrix(results.effects, atlas), "matrix")),
        _section("bands", "Layer bands", _figure(figures.band_view(findings), "bands")),
    ]
    roles = pd.DataFrame(findings.get("roles", {}).get("table", []))
    sections.append(_section("roles", "Head roles", _table(roles) if not roles.empty else "<p>No head passes a role's evidence rule.</p>"))
    reg = figures.regulator_chart(findings)
    sections.append(_section("regulators", "Regulator heads", _figure(reg, "regulators") if reg is not None else
                             f"<p class='muted'>Not measured. Run <code>cortexmap analyze {html.escape(str(root))} --regulators</code>.</p>"))
    if compare:
        sections.append(_section("compare", "Cross-model comparison", _compare_section(root, compare)))
    if (root / PRUNE_CURVE).exists():
        sections.append(_section("prune", "Pruning", _figure(figures.pruning_chart(pd.read_parquet(root / PRUNE_CURVE)), "prune")))
    facts = {"model": model.get("spec"), "type": model.get("model_type"), "layers x heads": f"{n_layers} x {n_heads}",
             "KV heads": model.get("n_kv_heads"), "parameters": f"{model.get('n_params', 0):,}", "hash": str(model.get("hash"))[:16],
             **{f"version {k}": v for k, v in manifest.get("versions", {}).items()},
             **{f"arg {k}": v for k, v in manifest.get("arguments", {}).items() if k != "extra"},
             "total time (s)": manifest.get("timings", {}).get("total_s")}
    sections.append(_section("manifest", "Run manifest", _table(pd.DataFrame({"key": list(facts), "value": [str(v) for v in facts.values()]}), False)))
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in [("summary", "Findings"), ("map", "Map"), ("effects", "Effects"),
                  ("bands", "Bands"), ("roles", "Roles"), ("regulators", "Regulators"), ("manifest", "Manifest")])
    header = (f"<header><h1>cortexmap atlas · {html.escape(str(model.get('spec')))}</h1><p>{html.escape(str(model.get('model_type')))}, "
              f"{n_layers} layers x {n_heads} heads, {len(results.effects['task'].unique())} tasks, "
              f"interventions: {html.escape(', '.join(manifest.get('interventions', [])))}</p><nav>{nav}</nav></header>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>cortexmap atlas · {html.escape(str(model.get('spec')))}</title>"
            f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>{header}<main>"
            f"<div id='errors'></div>{''.join(sections)}</main><script>{SCRIPT}</script></body></html>")
    target = Path(out) if out else root / "report.html"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, target)
    return target


def export_figures(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the report's figures as standalone HTML files (plotly.js inlined) for reuse in papers.

    Static PNG/SVG export needs plotly's kaleido engine and a Chromium; when both are present
    each figure is also written as ``.svg`` and ``.png``.
    """
    from cortexmap.sweep.store import load_results

    atlas, findings = ensure_atlas(run_dir)
    results = load_results(run_dir)
    figs = {"cortex_map": figures.cortex_map(atlas, results.n_layers, results.n_heads),
            "effects": figures.effect_heatmaps(results.effects, results.n_layers, results.n_heads),
            "task_head_matrix": figures.task_head_matrix(results.effects, atlas), "bands": figures.band_view(findings)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figs.items():
        path = out / f"{name}.html"
        fig.write_html(path, include_plotlyjs=True, full_html=True)
        written.append(path)
        for fmt in ("svg", "png"):
            try:
                fig.write_image(out / f"{name}.{fmt}", format=fmt, width=1100, height=fig.layout.height or 600)
                written.append(out / f"{name}.{fmt}")
            except Exception:  # noqa: BLE001 - no kaleido/Chromium: the HTML figure stands
                break
    return written


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1300, height: int = 2400) -> Path:
    """Render a report page to PNG with headless Chromium (Debian's ``chromium`` package)."""
    import shutil
    import subprocess
    import tempfile

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise ResultsError("no chromium on PATH; install it (apt-get install chromium) to take screenshots")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                        "--hide-scrollbars", f"--window-size={width},{height}", "--virtual-time-budget=8000",
                        f"--screenshot={Path(png_path).resolve()}", Path(html_path).resolve().as_uri()],
                       capture_output=True, timeout=180, check=False)
    if not Path(png_path).exists():
        raise ResultsError(f"chromium wrote no screenshot of {html_path}")
    return Path(png_path)
