"""report.page routing: findings reach report sections by their kind, whatever their sentences say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cortexmap.analysis import KINDS, Finding
from cortexmap.analysis.findings import PARENT_OF
from cortexmap.report import bands, roles, sections
from cortexmap.report.data import load_report_data
from cortexmap.report.page import ROUTES, esc, findings_list, route_findings, sentences


def _kinds(routed: dict[str, list[Finding]]) -> dict[str, list[str]]:
    return {name: [f.kind for f in found] for name, found in routed.items()}


def test_every_kind_has_a_route() -> None:
    assert set(ROUTES) == set(KINDS)
    assert {name for names in ROUTES.values() for name in names} == {"overview", "caveats", "bands", "map", "roles",
                                                                     "regulators", "agreement", "compare"}


def test_a_detail_goes_where_its_headline_goes() -> None:
    for detail, parent in PARENT_OF.items():
        assert set(ROUTES[detail]) <= set(ROUTES[parent]), (detail, parent)


def test_rewording_a_sentence_does_not_move_it() -> None:
    findings = [Finding(kind=kind, text=f"{kind}: something") for kind in KINDS]
    # Each sentence now opens with words another kind's sentences used to open with.
    openings = ["Note: ", "Role ", "Depth order ", "Not evaluated: ", "Regulator ", "  "]
    reworded = [dataclasses.replace(f, text=f"{openings[i % len(openings)]}{f.text}") for i, f in enumerate(findings)]
    assert _kinds(route_findings(reworded)) == _kinds(route_findings(findings))
    routed = _kinds(route_findings(reworded))
    assert routed["bands"] == ["depth_order", "depth_step", "level_depth", "layer_bands", "band"]
    assert routed["overview"] == ["audit", "depth_order", "groups", "agreement", "specialization", "adaptivity",
                                  "regulator", "regulation", "redundancy", "redundancy_pair", "errs", "errs_unit",
                                  "errs_flip"]
    assert routed["agreement"] == ["agreement", "disagreement"]
    assert routed["roles"] == ["critical", "role", "role_evidence"] and routed["compare"] == ["conservation"]
    assert routed["regulators"] == ["regulator", "contrast", "regulation"] and routed["caveats"] == ["not_evaluated", "note"]


def test_reworded_findings_stay_in_their_report_sections(rich_runs: tuple[Path, Path], rich_report: Path) -> None:
    data = load_report_data(rich_runs[0])
    findings = data.records.findings()
    assert {"agreement", "disagreement", "critical", "role", "role_evidence", "redundancy_pair",
            "errs_flip"} <= {f.kind for f in findings}  # the fixture exercises the new kinds
    reworded = [dataclasses.replace(f, text=f"Note: sentence {i} of kind {f.kind}") for i, f in enumerate(findings)]
    routed = route_findings(reworded)
    html = {"roles": roles.roles_section(data, routed), "bands": bands.bands_section(data, routed),
            "regulators": sections.regulators_section(data, routed, set()), "map": sections.map_section(data, routed),
            "findings": sections.findings_section(routed), "summary": sections.summary_section(data, routed)}
    places = {"overview": "findings", "caveats": "findings", "agreement": "summary"}
    for i, f in enumerate(findings):
        expected = {places.get(name, name) for name in ROUTES[f.kind]}
        shown = {name for name, page in html.items() if f"sentence {i} of kind" in page}
        assert shown == expected, (f.kind, shown, expected)
    depth = data.records.depth_order
    assert esc(depth.hypothesis) in html["bands"] and depth.verdict in html["bands"]  # drawn from its fields


def test_findings_list_escapes_bolds_the_label_and_indents_details() -> None:
    items = findings_list([Finding(kind="note", text="Note: <b>x</b> & y"), Finding(kind="note", text="no label")])
    assert items == '<ul class="findings"><li><b>Note</b>: &lt;b&gt;x&lt;/b&gt; &amp; y</li><li>no label</li></ul>'
    assert findings_list([]) == "" and sentences([]) == ""
    nested = findings_list([Finding(kind="errs", text="headline"), Finding(kind="errs_flip", text="detail")])
    assert nested == '<ul class="findings"><li>headline</li><li class="detail">detail</li></ul>'
