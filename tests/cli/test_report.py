"""`cortexmap report` and `cortexmap figures`: files written from a finished run, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.cli.invoke import assert_ok, assert_one_line_error, invoke


def test_report_writes_one_html_file(small_run: Path, tmp_path: Path) -> None:
    run = shutil.copytree(small_run, tmp_path / "run")
    assert_ok(invoke("analyze", run, "--permutations", 200))
    page = tmp_path / "atlas.html"
    assert assert_ok(invoke("report", run, "--out", page)).strip() == f"wrote {page}"
    html = page.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "smollm2-135m" in html


def test_cli_report_prints_one_line_on_bad_input(tmp_path: Path) -> None:
    assert_one_line_error(invoke("report", tmp_path / "nope"), "not a cortexmap run")


def test_figures_exports_every_report_figure(rich_runs: tuple[Path, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's wiring; the files are HTML here, as kaleido's SVG/PNG take seconds per figure
    (tests/report/test_export.py renders those)."""
    import cortexmap.report

    real, calls = cortexmap.report.export_figures, []

    def html_only(run_dir: str, out_dir: str, **options: object) -> list[Path]:
        calls.append((run_dir, out_dir, options))
        return real(run_dir, out_dir, formats=("html",))

    monkeypatch.setattr(cortexmap.report, "export_figures", html_only)
    run = shutil.copytree(rich_runs[1], tmp_path / "run")
    out = assert_ok(invoke("figures", run, "--out", tmp_path / "figs"))
    assert calls == [(str(run), str(tmp_path / "figs"), {})]
    written = sorted(p.name for p in (tmp_path / "figs").glob("*.html"))
    assert "cortex_map.html" in written and "bands.html" in written
    assert all(name in out for name in written)


def test_figures_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    assert_one_line_error(invoke("figures", tmp_path / "nope", "--out", tmp_path / "figs"), "not a cortexmap run")
