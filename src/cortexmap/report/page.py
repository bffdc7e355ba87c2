"""HTML building blocks of the report: header, cards, findings lists and tables.

Every function returns an HTML fragment (a ``str``) with all text escaped; the stylesheet and
script live in ``report/assets`` and are inlined by :mod:`cortexmap.report.render`. Figures are
placeholders (``<div class="figure" data-figure=NAME>``) that the page script fills from the
inlined figure JSON. Numbers are formatted by :func:`cortexmap.analysis.findings.num` and ``ci``,
the formatters of the finding sentences. Findings go to sections by their ``kind`` (``ROUTES``).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from cortexmap.analysis.findings import Finding, num
from cortexmap.report.theme import level_color

# Where each kind of finding is shown: headlines also in the overview, settings and gaps as caveats.
ROUTES: dict[str, tuple[str, ...]] = {
    "audit": ("overview",), "agreement": ("agreement", "overview"), "disagreement": ("agreement",),
    "depth_order": ("bands", "overview"), "depth_step": ("bands",), "level_depth": ("bands",),
    "layer_bands": ("bands",), "band": ("bands",), "groups": ("map", "overview"), "critical": ("roles",),
    "role": ("roles",), "role_evidence": ("roles",), "specialization": ("overview",), "adaptivity": ("overview",),
    "regulator": ("regulators", "overview"), "contrast": ("regulators",),
    "regulation": ("regulators", "overview"), "redundancy": ("overview",), "redundancy_pair": ("overview",),
    "conservation": ("compare",), "errs": ("overview",), "errs_unit": ("overview",), "errs_flip": ("overview",),
    "not_evaluated": ("caveats",), "note": ("caveats",),
}


def esc(value: Any) -> str:
    """HTML-escape ``str(value)``."""
    return html.escape(str(value), quote=True)


def route_findings(findings: Iterable[Finding]) -> dict[str, list[Finding]]:
    """Sort findings into report sections by their ``kind`` (see ``ROUTES``), keeping their order.

    Headline findings (depth order, groups, regulators) go to their section and to ``"overview"``;
    what was not evaluated and the analysis settings to ``"caveats"``; a kind without a route to
    ``"overview"``.
    """
    out: dict[str, list[Finding]] = {}
    for finding in findings:
        for name in ROUTES.get(finding.kind, ("overview",)):
            out.setdefault(name, []).append(finding)
    return out


def findings_list(findings: Sequence[Finding], css: str = "findings") -> str:
    """A bullet list of findings' texts, the label before the first colon in bold.

    A detail finding (one with a ``parent`` kind) is indented under the headline it follows.
    """
    items = []
    for finding in findings:
        head, sep, rest = finding.text.partition(": ")
        text = f"<b>{esc(head)}</b>: {esc(rest)}" if sep and len(head) < 100 else esc(finding.text)
        items.append(f'<li class="detail">{text}</li>' if finding.parent else f"<li>{text}</li>")
    return f'<ul class="{css}">{"".join(items)}</ul>' if items else ""


def sentences(findings: Sequence[Finding], label: str = "As sentences") -> str:
    """Findings already drawn as a table, as their sentences in a collapsed block (empty for none)."""
    if not findings:
        return ""
    return (f'<details class="sentences"><summary>{esc(label)} ({len(findings)})</summary>'
            f"{findings_list(findings, 'findings small')}</details>")


def badge(verdict: str | None) -> str:
    """A verdict as a coloured pill: green for a positive verdict, amber for a negative one, grey otherwise."""
    tone = {"supported": "good", "passes": "good", "conserved": "good", "candidate": "good", "agree": "good",
            "critical": "good", "flips": "good", "differs": "good", "not supported": "bad", "no head passes": "bad",
            "not conserved": "bad", "no candidate": "bad", "disagree": "bad", "fails": "bad",
            "underpowered": "bad"}.get(verdict or "", "none")
    return f'<span class="badge {tone}">{esc(verdict or "no verdict")}</span>'


def figure(name: str, caption: str = "") -> str:
    """Placeholder of a plotly figure, with an optional caption under it."""
    cap = f'<p class="caption">{caption}</p>' if caption else ""
    return f'<div class="figure" id="fig-{esc(name)}" data-figure="{esc(name)}"></div>{cap}'


def card(body: str, title: str = "", css: str = "") -> str:
    """A white card, optionally titled."""
    head = f"<h3>{esc(title)}</h3>" if title else ""
    return f'<div class="card {css}">{head}{body}</div>'


def section(anchor: str, title: str, lede: str, body: str) -> str:
    """A top-level report section with an anchor the nav links to."""
    return (f'<section id="{esc(anchor)}"><div class="section-head"><h2>{esc(title)}</h2>'
            f'<p class="lede">{lede}</p></div>{body}</section>')


def note(text: str, command: str | None = None) -> str:
    """A muted "not measured" box, optionally with the command that would measure it."""
    cmd = f'<code class="cmd">{esc(command)}</code>' if command else ""
    return f'<div class="note">{text}{cmd}</div>'


def stat(label: str, value: str, detail: str, tone: str = "") -> str:
    """A headline number with its evidence line (tone: "good", "bad" or "")."""
    return (f'<div class="stat {tone}"><div class="stat-label">{esc(label)}</div><div class="stat-value">{esc(value)}'
            f'</div><div class="stat-detail">{esc(detail)}</div></div>')


def chip(text: str) -> str:
    """A small pill in the header."""
    return f'<span class="chip">{esc(text)}</span>'


def swatch(color: str) -> str:
    """A colour square for tables and legends."""
    return f'<span class="swatch" style="background:{esc(color)}"></span>'


def level_tag(level: Any) -> str:
    """A task level as a coloured tag ("none" for None / NaN)."""
    if not isinstance(level, str) or not level:
        return '<span class="muted">none</span>'
    return f'<span class="tag" style="--c:{level_color(level)}">{esc(level)}</span>'


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, sortable: bool = False, css: str = "",
          raw: Sequence[int] = ()) -> str:
    """An HTML table; ``raw`` lists column indices whose cells are trusted HTML, the rest are escaped.

    A sortable table sorts on a header click by each cell's ``data-v`` (numbers sort numerically).
    Cells may be ``(display, sort_value)`` pairs.
    """
    head = "".join(f'<th{" tabindex=0" if sortable else ""}>{esc(c)}</th>' for c in columns)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            shown, key = cell if isinstance(cell, tuple) else (cell, cell)
            text = str(shown) if i in raw else esc(shown)
            sort = f' data-v="{esc(num(key, 6) if isinstance(key, float) else key)}"' if sortable else ""
            cells.append(f"<td{sort}>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    cls = " ".join(c for c in ("table", "sortable" if sortable else "", css) if c)
    return f'<div class="table-wrap"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column definition table (values escaped; nested dicts/lists shown compactly)."""
    rows = []
    for key, value in pairs:
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "—"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) or "—"
        elif value is None:
            value = "—"
        rows.append(f"<tr><th>{esc(key)}</th><td>{esc(num(value) if isinstance(value, float) else value)}</td></tr>")
    return f'<table class="kv">{"".join(rows)}</table>'


def seconds(value: Any) -> str:
    """Seconds as ``1 h 02 min``, ``3 min 20 s`` or ``12.3 s``."""
    if not isinstance(value, (int, float)):
        return str(value)
    if value >= 3600:
        return f"{int(value // 3600)} h {int(value % 3600 // 60):02d} min"
    if value >= 60:
        return f"{int(value // 60)} min {int(value % 60):02d} s"
    return f"{value:.1f} s"


def header(title: str, subtitle: str, chips: Sequence[str], generated: str) -> str:
    """The page header: model name, its shape and the run's key facts."""
    return (f'<header class="hero"><div class="wrap"><div class="eyebrow">cortexmap · attention-head atlas</div>'
            f'<h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p><div class="chips">{"".join(chip(c) for c in chips)}'
            f'</div><div class="generated">{esc(generated)}</div></div></header>')


def nav(entries: Sequence[tuple[str, str]]) -> str:
    """The sticky section navigation."""
    links = "".join(f'<a href="#{esc(anchor)}">{esc(label)}</a>' for anchor, label in entries)
    return f'<nav class="nav"><div class="wrap">{links}</div></nav>'
