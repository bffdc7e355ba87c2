"""The report in headless Chromium: every figure drawn, no error, no network request, a screenshot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cortexmap.report.browser import find_chromium, rendered_dom, screenshot

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no chromium on PATH (Debian: apt-get install chromium)")


def _check_rendered(page: Path, png: Path | None = None) -> list[str]:
    run = rendered_dom(page, width=1400, height=1400, png_path=png)
    assert re.search(r'<body[^>]*data-rendered="1"', run.dom), "the page script did not finish drawing"
    errors = re.search(r'<div id="errors">(.*?)</div>\s*<script', run.dom, re.DOTALL)
    assert errors is not None and errors.group(1).strip() == "", errors.group(1) if errors else run.dom[-2000:]
    assert run.console == [], run.console
    assert run.requests == [], run.requests
    names = re.findall(r'<div class="figure[^"]*" id="fig-([^"]+)"', run.dom)
    assert names
    blocks = re.split(r'<div class="figure[^"]*" id="fig-', run.dom)[1:]
    for name, block in zip(names, blocks):
        assert 'class="main-svg"' in block, f"figure {name} has no rendered plot"
    return names


def test_small_report_renders_offline_without_errors(small_report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    names = _check_rendered(small_report, shot)
    assert "cortex_map" in names and "bands" in names
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_screenshot_without_height_captures_the_whole_page(tmp_path: Path) -> None:
    import struct

    page = tmp_path / "tall.html"
    page.write_text('<html><body style="margin:0"><div style="height:2600px;background:#4f46e5"></div><script>'
                    'document.body.setAttribute("data-height", document.documentElement.scrollHeight);</script></body></html>')
    shot = screenshot(page, tmp_path / "full.png", width=800)
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])  # PNG IHDR
    assert (width, height) == (800, 2600)


def test_rich_report_renders_offline_without_errors(rich_report: Path) -> None:
    names = _check_rendered(rich_report)
    assert {"regulator_graph", "contrasts", "compare_0", "pruning", "circuit_0", "circuit_curves_0"} <= set(names)


def test_explain_figure_renders_offline_without_errors(tmp_path: Path) -> None:
    import pandas as pd

    from cortexmap.report.circuits import decision_graph
    from cortexmap.report.export import write_figure

    edges = pd.DataFrame({"sender": ["emb", "L0H1", "M0", "L1H2"], "receiver": ["L0KV1", "M0", "L1H2", "logits"],
                          "kind": ["v", "in", "q", "in"], "score": [0.4, -0.1, 0.3, 0.9],
                          "effect": [0.5, -0.2, 0.3, 1.1], "share": [0.25, -0.1, 0.15, 0.55]})
    heads = pd.DataFrame({"node": ["L0KV1", "L0H1", "M0", "L1H2"], "effect_out": [0.0, -0.2, 0.3, 1.1],
                          "effect_in": [0.5, 0.0, -0.2, 0.3]})
    page = write_figure(decision_graph(edges, heads, 2, 4, 2, title="one decision"), tmp_path / "explain.html")
    run = rendered_dom(page, width=1100, height=600)
    assert run.console == [], run.console
    assert run.requests == [], run.requests
    assert 'class="main-svg"' in run.dom and re.search(r">L0KV1</text>", run.dom)  # the nodes were drawn


def test_attention_figure_renders_offline_without_errors(tmp_path: Path) -> None:
    import pandas as pd

    from cortexmap.report.circuits import attention_graph
    from cortexmap.report.export import write_figure

    senders = pd.DataFrame({
        "sender": ["M0", "L0H1", "emb", "L1H0"], "side": ["key", "query", "query", "key"],
        "receiver": ["L2KV1", "L2H3", "L2H3", "L2KV1"], "kind": ["k", "q", "q", "k"],
        "effect": [0.08, -0.05, 0.03, -0.01], "ci_low": [0.06, -0.07, 0.01, -0.02], "ci_high": [0.1, -0.03, 0.05, 0.0],
        "share": [1.6, -1.0, 0.6, -0.2], "eap": [0.07, -0.04, 0.02, -0.01], "n_prompts": 16})
    fig = attention_graph(senders, "L2H3", 3, 4, 2, title="why L2H3 attends<br>edges into L2H3: query side")
    page = write_figure(fig, tmp_path / "attention.html")
    run = rendered_dom(page, width=1100, height=600)
    assert run.console == [], run.console
    assert run.requests == [], run.requests
    assert 'class="main-svg"' in run.dom
    assert re.search(r">L2KV1</text>", run.dom) and re.search(r">L2H3</text>", run.dom)  # both receivers drawn
    assert len(re.findall(r'class="js-line"', run.dom)) >= 4  # one path per sender edge
