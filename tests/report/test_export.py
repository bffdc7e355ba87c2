"""export_figures: the report's figures as SVG / PNG files (kaleido driving the system Chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortexmap.errors import CortexmapError
from cortexmap.report import export_figures
from cortexmap.report.browser import find_chromium


def test_unknown_format_or_figure_is_refused(rich_runs: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(CortexmapError, match="unknown figure format"):
        export_figures(rich_runs[1], tmp_path, formats=("gif",))
    pytest.importorskip("kaleido")
    with pytest.raises(CortexmapError, match="no figure named"):
        export_figures(rich_runs[1], tmp_path, names=["pruning"])


@pytest.mark.skipif(find_chromium() is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_figures_are_written_as_svg_and_png(rich_runs: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("kaleido")
    paths = export_figures(rich_runs[1], tmp_path / "figs", names=["cortex_map", "bands"])
    assert {p.name for p in paths} == {"cortex_map.svg", "cortex_map.png", "bands.svg", "bands.png"}
    for path in paths:
        assert path.exists() and path.stat().st_size > 1000
    assert (tmp_path / "figs" / "cortex_map.svg").read_text().lstrip().startswith("<svg")


def test_html_export_needs_no_browser(rich_runs: tuple[Path, Path], tmp_path: Path) -> None:
    paths = export_figures(rich_runs[1], tmp_path / "html", formats=("html",), names=["cortex_map", "bands"])
    assert {p.name for p in paths} == {"cortex_map.html", "bands.html"}
    assert (tmp_path / "html" / "plotly.min.js").exists()  # shared, so each file stays small
    assert all(p.stat().st_size < 500_000 for p in paths)


def test_effect_heatmaps_are_split_per_task(rich_runs: tuple[Path, Path]) -> None:
    from cortexmap.report.data import load_report_data
    from cortexmap.report.export import _per_task
    from cortexmap.report.render import build_figures

    fig = build_figures(load_report_data(rich_runs[1]))["effects_patch_exact"]
    singles = _per_task("effects_patch_exact", fig)
    assert len(singles) == 6 and all(name.startswith("effects_patch_exact__") for name in singles)
    first = next(iter(singles.values()))
    assert not first.layout.updatemenus and first.layout.title.text
