"""Explanation.figure / save on a tiny random llama with GQA: every verified edge drawn, with its numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from cortexmap.circuits import Explanation, explain_decision
from cortexmap.errors import CortexmapError
from cortexmap.models import load_model
from cortexmap.report.browser import find_chromium
from cortexmap.report.circuits import LOWERS, RAISES
from tests.sweep.tiny_run import make_model_dir

PROMPT = "when anna and bert went to the store bert gave a drink to"


@pytest.fixture(scope="module")
def explanation(tmp_path_factory: pytest.TempPathFactory) -> Explanation:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the per-test one-thread fixture
    try:
        handle = load_model(str(make_model_dir(tmp_path_factory.mktemp("explain"))))
        return explain_decision(handle, PROMPT, " anna", " bert", verify=10, steps=2)
    finally:
        torch.set_num_threads(before)


def in_html(text: str, page: str) -> bool:
    """``text`` in a plotly HTML page, whichever JSON encoder wrote it (orjson keeps "→", json writes "\\u2192")."""
    ascii_form = "".join(c if ord(c) < 128 else f"\\u{ord(c):04x}" for c in text)
    return text in page or ascii_form in page


def _lines(fig: go.Figure) -> dict[str, go.Scatter]:
    return {t.name: t for t in fig.data if t.mode == "lines"}


def test_saved_html_holds_every_verified_edge_and_its_numbers(explanation: Explanation, tmp_path: Path) -> None:
    path = explanation.save(tmp_path / "sub" / "explain.html")
    assert path == tmp_path / "sub" / "explain.html"
    assert [p.name for p in path.parent.iterdir()] == ["explain.html"]  # no temporary left beside it
    page = path.read_text(encoding="utf-8")
    assert 'src="http' not in page and "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js inlined
    for r in explanation.edges.itertuples():
        hover = (f"{r.sender} → {r.receiver} ({r.kind})\\u003cbr\\u003eeap-ig score {r.score:+.3f}\\u003cbr\\u003e"
                 f"effect {r.effect:+.3f} (exact)\\u003cbr\\u003eshare {r.share:.2f} of the flip")
        assert in_html(hover, page), hover


def test_edge_widths_follow_the_size_of_the_effect(explanation: Explanation) -> None:
    edges = explanation.edges
    lines = _lines(explanation.figure())
    assert len(lines) == len(edges) == 10
    drawn = [lines[f"{r.sender} → {r.receiver}.{r.kind}"] for r in edges.itertuples()]
    widths = np.array([t.line.width for t in drawn])
    size = edges["effect"].abs().to_numpy()
    i, j = np.triu_indices(len(size), k=1)
    assert np.array_equal(np.sign(widths[i] - widths[j]), np.sign(size[i] - size[j]))
    assert [t.line.color for t in drawn] == [LOWERS if e < 0 else RAISES for e in edges["effect"]]


def test_nodes_are_the_verified_edges_endpoints(explanation: Explanation) -> None:
    nodes = next(t for t in explanation.figure().data if t.mode == "markers+text")
    names = [label.split("<br>")[0] for label in nodes.customdata]
    assert set(names) == set(explanation.edges["sender"]) | set(explanation.edges["receiver"])
    assert list(nodes.text) == names  # every node named, KV groups and MLPs included
    first = explanation.heads.iloc[0]
    assert f"out {first.effect_out:+.3f}, in {first.effect_in:+.3f}" in nodes.customdata[names.index(first.node)]


def test_an_unknown_suffix_is_refused_and_nothing_written(explanation: Explanation, tmp_path: Path) -> None:
    with pytest.raises(CortexmapError, match=r"give a path ending in .*\.html"):
        explanation.save(tmp_path / "explain.gif")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(find_chromium() is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_static_svg_is_written(explanation: Explanation, tmp_path: Path) -> None:
    pytest.importorskip("kaleido")
    path = explanation.save(tmp_path / "explain.svg")
    assert path.read_text().lstrip().startswith("<svg") and [p.name for p in tmp_path.iterdir()] == ["explain.svg"]
