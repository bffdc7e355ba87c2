"""What the atlas measured, stated where the report opens.

The statement names the claim's interventions, their agreement, and why zero ablation is not the
evidence.

Conventions fixed here:

* The statement names every claim intervention of the atlas
  (:attr:`~cortexmap.analysis.atlas.AtlasRecords.interventions`) in words (:data:`MEASURES`), with
  the rule that a head-level claim holds only under every one of them.
* The agreement between the interventions is :attr:`AtlasRecords.agreement` (an
  :class:`~cortexmap.analysis.agreement.Agreement`): its findings' sentences (the counts, the
  Jaccard overlap with its interval, the zero-ablation comparison), and each disagreeing cell (the
  first :data:`MAX_CELLS`) as a table row with every intervention's effect and interval. One claim
  intervention leaves nothing to agree on, and the block says so.
* Zero ablation is described as off-distribution (:data:`ZERO_WHY`) in every report. A run whose
  claims rest on zero ablation alone (``counterfactual`` False) gets a warning that every claim in
  the report rests on it.
"""

from __future__ import annotations

from typing import Any

from cortexmap.analysis.atlas import AtlasRecords
from cortexmap.analysis.findings import Finding, ci, num
from cortexmap.report.page import card, esc, findings_list, sentences, table

MEASURES = {
    "patch": ("activation patching from each pair's corrupt prompt", "the head's output replaced by its output on the "
              "matched corrupt prompt, so only what the corrupt prompt changes is removed"),
    "mean": ("mean ablation", "the head's output replaced by its mean output over every token of the task's prompts"),
    "resample": ("resample ablation", "the head's output replaced by its output on another prompt of the task with "
                 "the same token length"),
    "zero": ("zero ablation", "the head's output replaced by zeros"),
    "amplify": ("amplification", "the head's output scaled"),
}
METHODS = {"attribution": "first-order attribution estimates (one forward and one backward pass), not measured effects",
           "screen": "a screen's estimates, verified exactly only for the heads it flagged"}
ZERO_WHY = ("Zero ablation is not the evidence: it replaces a head's output with a vector the model never produces "
            "(no input makes a head write exactly zero), so every later layer reads an input off its training "
            "distribution, and the harm it measures can come from that shift rather than from what the head does. "
            "Patching from a corrupt prompt and mean ablation keep the head's output on its distribution and remove "
            "only the information in question.")
MAX_CELLS = 40  # disagreeing cells shown as table rows (all are in atlas.json)


def measured(interventions: tuple[str, ...] | list[str]) -> str:
    """The claim interventions in words, each with what it replaces, joined by "and"."""
    return " and ".join(f"{MEASURES[iv][0]} ({MEASURES[iv][1]})" if iv in MEASURES else iv for iv in interventions)


def _method(method: str) -> str:
    return f"{method} effects" + (f": {METHODS[method]}" if method in METHODS else "")


def _under(n: int) -> str:
    return {1: "it", 2: "both"}.get(n, f"all {n}")


def _disagreements(records: AtlasRecords) -> str:
    cells = records.agreement.cells
    if cells is None or not len(cells):
        return ""
    ivs = list(records.agreement.interventions)
    rows: list[list[Any]] = []
    for r in cells.head(MAX_CELLS).to_dict("records"):
        rows.append([r["head_id"], r["task"], r["important_under"]]
                    + [f"{num(r.get(f'effect:{iv}'))} {ci(r.get(f'ci_low:{iv}'), r.get(f'ci_high:{iv}'))}" for iv in ivs])
    more = (f'<p class="caption">{len(cells) - MAX_CELLS} more disagreeing cells are listed in atlas.json.</p>'
            if len(cells) > MAX_CELLS else "")
    return ('<p><b>Where the interventions disagree</b> (important under one only; such cells enter no claim):</p>'
            + table(["head", "task", "important under"] + [f"{iv} effect / |clean| [95% CI]" for iv in ivs], rows)
            + more)


def _agreement(records: AtlasRecords, routed: dict[str, list[Finding]]) -> str:
    a = records.agreement
    found = routed.get("agreement", [])
    headlines = [f for f in found if f.kind == "agreement"]
    details = [f for f in found if f.kind == "disagreement"]
    if len(a.interventions) < 2:
        what = (f"Only {esc(a.interventions[0] if a.interventions else 'one intervention')} carries the claims, so no "
                "second intervention can confirm or contradict them.")
        return f"<p><b>Agreement.</b> {what}</p>" + findings_list(headlines)
    return ("<p><b>Agreement between the interventions</b> (only cells important under every one enter the "
            "atlas):</p>" + findings_list(headlines) + _disagreements(records)
            + sentences(details, "Disagreeing cells as sentences"))


def measurement_block(records: AtlasRecords, routed: dict[str, list[Finding]], *,
                      present: tuple[str, ...] | list[str] = ()) -> str:
    """The "What this atlas measures" card (module docstring).

    Args:
        records: the atlas records.
        routed: findings by report place (:func:`~cortexmap.report.page.route_findings`).
        present: every intervention the run measured (zero ablation among them is named as shown
            for comparison only).

    Returns:
        An HTML card, ``id="measured"``.
    """
    ivs = tuple(records.interventions)
    n = len(ivs)
    if records.counterfactual:
        lead = (f"<p>Each head was measured by {esc(measured(ivs))}, on {esc(_method(records.method))}. A head-level "
                f"claim (critical for a task, a named role, a functional group, a layer-band cell) holds only where the "
                f"head is important under {_under(n)}.</p>")
        others = [iv for iv in present if iv not in ivs]
        aside = (f" This run also measured {esc(' and '.join(others))}: shown in the Effects section for comparison, "
                 "never as evidence." if others else "")
        zero = f"<p>{esc(ZERO_WHY)}{aside}</p>"
        css = "measure"
    else:
        name = " and ".join(MEASURES.get(iv, (iv, ""))[0] for iv in ivs)
        lead = (f"<p><b>Every claim in this report rests on {esc(name)} alone</b>: {esc(measured(ivs))}, on "
                f"{esc(_method(records.method))}. This run has no counterfactual intervention (patching from a corrupt "
                "prompt, mean or resample ablation), so no head-level claim here is counterfactual evidence.</p>")
        zero = (f"<p>{esc(ZERO_WHY)} Map with patch and mean (<code>cortexmap map --interventions patch,mean</code>, the "
                "default) for counterfactual evidence.</p>")
        css = "measure warn"
    rule = f'<p class="caption">Claim rule: {esc(records.claim)}.</p>'
    body = lead + zero + _agreement(records, routed) + rule
    return card(body, "What this atlas measures", css).replace('<div class="card', '<div id="measured" class="card', 1)
