"""render_report: a self-contained page with every section, built from a run without analysis."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cortexmap.errors import ResultsError
from cortexmap.report import ensure_atlas, render_report


class _Links(HTMLParser):
    """Every src / href / srcset / poster attribute of the page's tags (script bodies are not tags)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "poster", "data")]


def _links(page: str) -> list[str]:
    parser = _Links()
    parser.feed(page)
    return parser.links


def _figures(page: str) -> dict:
    blob = re.search(r'<script type="application/json" id="figure-data">(.*?)</script>', page, re.DOTALL)
    assert blob is not None
    return json.loads(blob.group(1))


def test_report_builds_the_missing_atlas_and_is_self_contained(small_run: Path, small_report: Path) -> None:
    assert small_report == small_run / "report.html"
    assert (small_run / "atlas.json").exists() and (small_run / "atlas.parquet").exists()
    page = small_report.read_text()
    assert all(link.startswith("#") for link in _links(page)), [l for l in _links(page) if not l.startswith("#")]
    assert page.count("<script>") == 2  # plotly.js once (not per figure) + the page script
    figures = _figures(page)
    assert {"cortex_map", "task_head_matrix", "bands"} <= set(figures)
    assert any(name.startswith("effects_") for name in figures)
    placeholders = re.findall(r'<div class="figure" id="fig-([^"]+)" data-figure="\1">', page)
    assert set(placeholders) == set(figures)
    for anchor in ("summary", "map", "findings", "effects", "bands", "roles", "regulators", "compare", "prune", "manifest"):
        assert f'<section id="{anchor}">' in page
        assert f'href="#{anchor}"' in page


def test_findings_carry_intervals_and_baselines(small_report: Path) -> None:
    page = small_report.read_text()
    assert "95% CI" in page and "p = " in page
    assert "Depth order" in page and "Functional groups" in page
    assert 'id="critical-table"' in page and "sortable" in page


def test_unmeasured_parts_say_how_to_measure_them(small_run: Path, small_report: Path) -> None:
    page = small_report.read_text()
    assert f"cortexmap analyze {small_run} --regulators" in page
    assert "--compare OTHER_RUN" in page
    assert f"--run {small_run}" in page


def test_rich_run_shows_regulators_comparison_and_pruning(rich_report: Path) -> None:
    page = rich_report.read_text()
    figures = _figures(page)
    assert {"regulator_graph", "regulator_scores", "contrasts", "compare_0", "pruning",
            "effects_patch_exact", "effects_mean_exact", "effects_zero_exact"} <= set(figures)
    assert "synthetic-a vs synthetic-b" in page
    assert "Regulator candidate L1H2" in page  # the planted regulator, stated with its interval
    assert "--regulators" not in page
    circuit = figures["circuit_0"]["data"]  # the circuit view: one line per drawn edge, hover at its middle
    table = __import__("pandas").read_parquet(rich_report.parent / "circuit.parquet")
    drawn = table[table["in_circuit"]]
    assert sum(t.get("mode") == "lines" for t in circuit) == len(drawn)
    hover = next(t for t in circuit if t.get("mode") == "markers" and t.get("text"))["text"]
    strongest = drawn.loc[drawn["effect"].abs().idxmax()]
    assert any(f"{strongest.sender} → {strongest.receiver}" in h and f"{strongest.effect:+.3f}" in h for h in hover)
    assert "Circuit of ioi" in page and "CPR (higher better)" in page and "circuit_curves_0" in figures


def test_report_out_path_and_existing_atlas_is_reused(small_run: Path, small_report: Path, tmp_path: Path) -> None:
    before = (small_run / "atlas.json").stat().st_mtime_ns
    out = render_report(small_run, out=tmp_path / "sub" / "atlas.html")
    assert out == tmp_path / "sub" / "atlas.html" and out.stat().st_size > 1_000_000
    assert (small_run / "atlas.json").stat().st_mtime_ns == before


def test_half_written_atlas_is_rebuilt(rich_runs: tuple[Path, Path]) -> None:
    _, run_b = rich_runs
    ensure_atlas(run_b)
    (run_b / "atlas.parquet").unlink()
    atlas, records = ensure_atlas(run_b)
    assert (run_b / "atlas.parquet").exists() and len(atlas) == 8 * 3 and records.n_layers == 8


def test_an_atlas_written_by_an_older_cortexmap_is_rebuilt(rich_runs: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "old"
    shutil.copytree(rich_runs[1], run, ignore=shutil.ignore_patterns("report.html"))
    ensure_atlas(run)
    (run / "atlas.json").write_text(json.dumps({"n_layers": 8, "roles": {"table": [], "evaluated": {}}}))  # old layout
    _, records = ensure_atlas(run)
    assert records.n_heads == 3 and records.interventions == ("patch", "mean")
    assert "interventions" in json.loads((run / "atlas.json").read_text())  # rewritten in the current layout


def test_not_a_run_is_refused_with_the_command_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"is not a cortexmap run \(no manifest.json\); create one with `cortexmap map --out"):
        render_report(tmp_path)


def test_unfinished_run_is_refused_with_resume(small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "unfinished"
    run.mkdir()
    (run / "manifest.json").write_text((small_run / "manifest.json").read_text())
    with pytest.raises(ResultsError, match="--resume"):
        render_report(run)
    with pytest.raises(ResultsError, match="not a cortexmap run"):
        render_report(small_run, compare=[tmp_path / "nothing"])


def test_report_never_imports_torch(rich_runs: tuple[Path, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from cortexmap.report import render_report; "
            f"render_report({str(rich_runs[1])!r}, out={str(tmp_path / 'r.html')!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_run_without_important_heads_renders_and_says_so(small_run: Path, tmp_path: Path) -> None:
    import shutil

    import pandas as pd

    run = tmp_path / "null"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("atlas.*", "report.html", "prompt_effects.parquet"))
    effects = pd.read_parquet(run / "effects.parquet")
    zero = dict(effect=0.0, effect_normalized=0.0, ci_low=-0.01, ci_high=0.01)
    effects.assign(intervened=effects["clean"], **zero).to_parquet(run / "effects.parquet")
    page = render_report(run).read_text()
    visible = re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>", "", page, flags=re.S))
    assert "no task with important heads" in visible and "No head is critical for" in visible
    assert not re.search(r"\bNone\b", visible)
    assert render_report(run)._repr_html_().startswith("<iframe srcdoc=")  # displays inline in Jupyter
