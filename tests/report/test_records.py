"""The report reads typed atlas records: every finding is on the page, with what the atlas measured.

The pages are the session's rendered reports (tests/report/conftest.py): ``rich_report`` rests on
patch and mean with zero beside them and holds planted role evidence; ``small_report`` rests on
zero ablation alone. Expected values come from the fixtures' planted numbers or from the records
themselves, read independently of the report's code.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cortexmap.analysis.findings import ci, num
from cortexmap.report.data import load_report_data
from cortexmap.report.maps import CRITICAL_MARK, ROLE_CODES, map_marks
from cortexmap.report.measure import ZERO_WHY
from tests.report.conftest import EVIDENCE, EVIDENCE_HALF

REPORT = Path(__file__).resolve().parents[2] / "src" / "cortexmap" / "report"


def _visible(page: str) -> str:
    """The page's text as a reader sees it: scripts dropped, tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<script.*?</script>", "", page, flags=re.S)))


def _block(page: str, start: str, end: str) -> str:
    i = page.index(start)
    return page[i:page.index(end, i)]


def _rows(table_html: str) -> list[list[str]]:
    """The visible cells of every body row of the tables in ``table_html``."""
    bodies = "".join(re.findall(r"<tbody>(.*?)</tbody>", table_html, flags=re.S))
    return [[_visible(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in re.findall(r"<tr>(.*?)</tr>", bodies)]


def _array(value: object) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array (``{"dtype", "bdata"}``, base64)."""
    if isinstance(value, dict):
        import base64

        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


def _figure(page: str, name: str) -> dict:
    blob = re.search(r'<script type="application/json" id="figure-data">(.*?)</script>', page, re.DOTALL)
    assert blob is not None
    return json.loads(blob.group(1))[name]


def test_every_finding_of_the_atlas_and_the_comparison_is_on_the_page(rich_runs: tuple[Path, Path],
                                                                      rich_report: Path, small_run: Path,
                                                                      small_report: Path) -> None:
    for run, report, compared in ((rich_runs[0], rich_report, [rich_runs[1]]), (small_run, small_report, [])):
        data = load_report_data(run, compared)
        findings = data.records.findings() + [f for c in data.comparisons if c.record for f in c.record.findings()]
        visible = _visible(report.read_text())
        missing = [(f.kind, f.text) for f in findings if f.text not in visible]
        assert findings and not missing, missing[:3]


def test_the_statement_says_what_was_measured_and_where_interventions_disagree(rich_runs: tuple[Path, Path],
                                                                              rich_report: Path) -> None:
    page = rich_report.read_text()
    statement = _block(page, 'id="measured"', '<div class="stats">')
    assert page.index('id="measured"') < page.index('id="map"')  # near the top: first thing in the overview
    text = _visible(statement)
    assert "activation patching from each pair's corrupt prompt" in text and "mean ablation" in text
    assert "holds only where the head is important under both" in text
    assert ZERO_WHY in text and "also measured zero" in text and "rests on zero ablation alone" not in text
    records = load_report_data(rich_runs[0]).records
    agreement = records.agreement
    assert agreement.interventions == ["patch", "mean"] and agreement.n_any > agreement.n_all  # the fixture disagrees
    assert next(f for f in agreement.findings() if f.kind == "agreement").text in text
    shown = _rows(_block(statement, "Where the interventions disagree", "</table>") + "</table>")
    expected = [[c["head_id"], c["task"], c["important_under"]]
                + [f"{num(c[f'effect:{iv}'])} {ci(c[f'ci_low:{iv}'], c[f'ci_high:{iv}'])}" for iv in ("patch", "mean")]
                for c in agreement.cells.to_dict("records")]
    assert shown == expected and len(expected) == agreement.n_any - agreement.n_all


def test_a_zero_only_run_says_every_claim_rests_on_zero_ablation(small_report: Path) -> None:
    page = small_report.read_text()
    statement = _block(page, 'id="measured"', '<div class="stats">')
    assert 'class="card measure warn"' in statement
    text = _visible(statement)
    assert "Every claim in this report rests on zero ablation alone" in text and ZERO_WHY in text
    assert "cortexmap map --interventions patch,mean" in text


def test_a_named_role_prints_its_evidence_rows(rich_runs: tuple[Path, Path], rich_report: Path) -> None:
    from tests.report.conftest import planted_heads

    page = rich_report.read_text()
    block = _block(page, 'id="role-name_mover"', 'id="role-negative_name_mover"')
    assert '<span class="badge good">passes</span>' in block
    manifest = json.loads((rich_runs[0] / "manifest.json").read_text())
    tasks = {t: v["level"] for t, v in manifest["tasks"].items()}
    heads = planted_heads(tasks, manifest["model"]["n_layers"], manifest["model"]["n_heads"], 0)["ioi"]
    rows = _rows(block)
    for head in heads:  # every planted head, every planted statistic: the planted value and interval, passed
        for stat, value in EVIDENCE["ioi"].items():
            row = next(r for r in rows if r[0] == head and r[2] == stat)
            assert row[1] == "ioi" and row[3] == num(value)
            assert row[4] == ci(value - EVIDENCE_HALF, value + EVIDENCE_HALF) and row[7] == "✓ passes"
        effect = next(r for r in rows if r[0] == head and r[2] == "effect")
        assert effect[5].startswith("critical") and effect[7] == "✓ passes"
    effects = pd.read_parquet(rich_runs[0] / "effects.parquet")
    ioi = effects[(effects["task"] == "ioi") & effects["intervention"].isin(["patch", "mean"])]
    for head in heads:  # the effect row is the least harmful claim intervention's normalized effect
        floor = ioi[ioi["head_id"] == head]["effect_normalized"].max()
        assert next(r for r in rows if r[0] == head and r[2] == "effect")[3] == num(floor)


def test_critical_table_lists_each_claim_interventions_effect(rich_runs: tuple[Path, Path], rich_report: Path) -> None:
    page = rich_report.read_text()
    rows = _rows(_block(page, 'id="critical-table"', "</table>") + "</table>")
    effects = pd.read_parquet(rich_runs[0] / "effects.parquet")
    for head, task, _, patch, mean in rows:
        for iv, cell in (("patch", patch), ("mean", mean)):
            r = effects[(effects["head_id"] == head) & (effects["task"] == task) & (effects["intervention"] == iv)].iloc[0]
            assert cell == f"{num(r.effect_normalized)} {ci(r.ci_low / abs(r.clean), r.ci_high / abs(r.clean))}"
            assert r.effect_normalized <= -0.05  # critical: harmful under each claim intervention
    assert len(rows) == len(load_report_data(rich_runs[0]).records.roles.critical)


def test_the_similarity_histogram_plots_correlations(rich_runs: tuple[Path, Path], rich_report: Path) -> None:
    data = load_report_data(rich_runs[0], [rich_runs[1]])
    matches = data.comparisons[0].record.matches
    fig = _figure(rich_report.read_text(), "compare_0")
    bars = next(t for t in fig["data"] if t["type"] == "bar")
    counts, _ = np.histogram(matches["correlation"].astype(float), bins=20, range=(-1.0, 1.0))
    centers = _array(bars["x"])
    assert _array(bars["y"]).tolist() == counts.tolist() and centers.min() > -1 and centers.max() < 1
    assert fig["layout"]["xaxis2"]["title"]["text"].startswith("correlation")
    assert (matches["similarity"].abs() > 1).any() or (matches["similarity"] != matches["correlation"]).any()


def test_map_marks_name_roles_and_mark_critical_heads() -> None:
    atlas = pd.DataFrame({"roles": ["name_mover", "agreement;name_mover", "", ""],
                          "critical_for": ["ioi", "ioi;sva_across_pp", "capitals", ""]})
    assert map_marks(atlas).tolist() == [ROLE_CODES["name_mover"], ROLE_CODES["agreement"] + "+", CRITICAL_MARK, ""]
    assert {"name_mover", "negative_name_mover", "agreement", "operand_mover"} <= set(ROLE_CODES)
    assert not {"ioi_name_mover", "subject_verb_agreement", "arithmetic", "article_noun", "number_date"} & set(ROLE_CODES)


def test_the_report_reads_no_nested_findings_dict() -> None:
    sources = {path.name: path.read_text() for path in REPORT.glob("*.py")}
    assert len(sources) >= 8
    for name, text in sources.items():
        for pattern in (r"findings\[", r"findings\.get\(", r"data\.findings\b", r"as_legacy_dict", r"compare_models"):
            assert not re.search(pattern, text), (name, pattern)
