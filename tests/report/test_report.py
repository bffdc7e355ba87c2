"""The HTML atlas: rendered from a small committed SmolLM2 run and opened in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cortexmap.cli import app
from cortexmap.errors import ResultsError
from cortexmap.report import render_report

RUN = Path(__file__).parent.parent / "data" / "run_small"


@pytest.fixture
def run(tmp_path):  # noqa: ANN001, ANN201
    target = tmp_path / "run"
    shutil.copytree(RUN, target)
    return target


def test_report_builds_missing_analysis_and_is_self_contained(run):  # noqa: ANN001
    assert not (run / "atlas.json").exists()
    page = render_report(run).read_text()
    assert (run / "atlas.json").exists() and (run / "atlas.parquet").exists()
    # No external resource: every src/href is inline or a fragment.
    assert not re.search(r"<(script|link|img|iframe|source)\b[^>]*\b(src|href)\s*=", page)
    for anchor in ("summary", "map", "effects", "bands", "roles", "regulators", "manifest"):
        assert f'id="{anchor}"' in page
    assert page.count('class="figure"') >= 4


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium_without_errors_or_network(run, tmp_path):  # noqa: ANN001
    page = render_report(run)
    profile = tmp_path / "profile"
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
              "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000", "--window-size=1300,2400"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180).stdout
    assert 'data-rendered="1"' in dom
    errors = re.search(r'<div id="errors">(.*?)</div>', dom, re.S)
    assert errors is not None and errors.group(1).strip() == ""
    figures = re.findall(r'<div class="figure[^"]*" id="(fig-[^"]+)"', dom)
    assert len(figures) >= 4
    for fig in figures:  # every figure container holds a rendered plot
        block = dom.split(f'id="{fig}"', 1)[1][:20000]
        assert "main-svg" in block, fig
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_not_a_run_and_unfinished_runs_get_clear_messages(tmp_path, run):  # noqa: ANN001
    with pytest.raises(ResultsError, match="not a cortexmap run"):
        render_report(tmp_path)
    (run / "effects.parquet").unlink()
    with pytest.raises(ResultsError, match="--resume"):
        render_report(run)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "not a cortexmap run" in result.output and "Traceback" not in result.output
