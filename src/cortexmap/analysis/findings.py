"""Findings as typed records: what an atlas found, one record per stated result; a sentence is one view of it.

A :class:`Finding` holds what a finding is about (``kind``, ``subject``, ``head``, ``task``), its
estimate (``effect`` with its 95% interval ``ci_low`` / ``ci_high``), what the estimate is judged
against (``baseline``, ``baseline_label``, ``p_value``), the ``verdict`` and the ``method`` the
numbers rest on, every other number its sentence states (``stats``), and that sentence (``text``).
every analysis record's ``findings()`` builds them (:class:`cortexmap.analysis.AtlasRecords`); the CLI prints
the texts and the report places each finding by its ``kind``, never by the words of its text, so
rewording a sentence moves nothing.

Conventions fixed here:

* ``kind`` is one of :data:`KINDS`; a detail kind (:data:`PARENT_OF`) belongs to the headline
  finding of its parent kind that precedes it, and is printed indented under it.
* ``verdict`` is one of :data:`VERDICTS`, or None where the finding states no verdict.
* ``stats`` keys name secondary numbers; an interval of a secondary number ``x`` is
  ``x_ci_low`` / ``x_ci_high``, so every interval a sentence states is in the record.
* Numbers are formatted for display by :func:`num` and :func:`ci` only (the report uses them too).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from cortexmap.heads import HeadId

KINDS = (
    "audit",           # screen audit: miss rate of the screen among unverified heads
    "depth_order",     # ordinal test of the level-depth hypothesis (headline)
    "depth_step",      # one step of the depth order (detail of depth_order)
    "level_depth",     # one level's mean relative depth of importance (detail of depth_order)
    "layer_bands",     # the BIC segmentation into layer bands (headline)
    "band",            # one band and its dominant level's enrichment (detail of layer_bands)
    "groups",          # functional groups: silhouette against a null, stability
    "agreement",       # do the counterfactual interventions agree on which heads are important (headline)
    "disagreement",    # one head-task cell important under one intervention only (detail of agreement)
    "critical",        # heads critical for a task: harm under every counterfactual intervention, no mechanism named
    "role",            # a named role: the strongest head with all its evidence, or the closest one
    "role_evidence",   # one evidence row of a named role (detail of role)
    "specialization",  # mean specialization index against a task-shuffled null
    "adaptivity",      # a task whose importance leans early or late, or the largest difference
    "regulator",       # a regulator candidate, or the top scores when none passes
    "contrast",        # a regulator score that differs between conditions, or the smallest p
    "regulation",      # the edge test: ablating a head changes q/k composition more on demanding inputs
    "redundancy",      # joint ablations: redundant share and mean relative interaction
    "redundancy_pair", # one pair's interaction with its interval (detail of redundancy)
    "conservation",    # cross-model: matched head profiles against a null
    "errs",            # why the model errs: a task's heads or edges whose effects differ on wrong prompts (headline)
    "errs_unit",       # one more differing head or edge (detail of errs)
    "errs_flip",       # a head patched from right into wrong prompts of the same template: flip rate (detail of errs)
    "not_evaluated",   # an analysis that could not run, and why
    "note",            # a setting every number depends on
)

PARENT_OF = {"depth_step": "depth_order", "level_depth": "depth_order", "band": "layer_bands", "errs_unit": "errs",
             "errs_flip": "errs", "disagreement": "agreement", "role_evidence": "role",
             "redundancy_pair": "redundancy"}

VERDICTS = ("supported", "not supported", "not evaluated", "passes", "fails", "no head passes", "candidate",
            "no candidate", "differs", "no difference", "leans early", "leans late", "critical", "agree", "disagree",
            "underpowered", "conserved", "not conserved", "flips", "no flip")


def num(value: Any, digits: int = 2) -> str:
    """A number for display.

    Args:
        value: a number, or anything else (shown as ``str``).
        digits: decimals.

    Returns:
        ``n/a`` for None, NaN and infinities; scientific notation from 1e5 on and, when ``digits``
        > 0, for non-zero values below ``10**-digits``; else ``digits`` decimals.
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 1e5 or (digits > 0 and 0 < abs(value) < 10 ** -digits):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def ci(low: Any, high: Any, digits: int = 2) -> str:
    """``[95% CI low, high]``, each bound formatted by :func:`num`."""
    return f"[95% CI {num(low, digits)}, {num(high, digits)}]"


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One stated result of an atlas (see the module docstring for the conventions).

    Attributes:
        kind: one of :data:`KINDS`.
        text: the sentence the CLI prints and the report shows (without indentation).
        subject: what the finding is about besides a head: a role, level, task pair, layer
            range or hypothesis.
        head: the head it names, ``"L3H5"``.
        task: the task or probe its evidence comes from.
        effect: the estimate (effect size, score, correlation or rate).
        ci_low: lower bound of its 95% interval.
        ci_high: upper bound of its 95% interval.
        baseline: the value it is judged against.
        baseline_label: what the baseline is (e.g. ``"layer-shuffle null mean"``).
        p_value: the p-value of the test behind the verdict (a q-value sits in ``stats``).
        verdict: one of :data:`VERDICTS`, or None.
        method: the measurement the numbers rest on (``"exact"``, ``"attribution"``, ``"probe"``).
        stats: every other number the sentence states, by name.
    """

    kind: str
    text: str
    subject: str | None = None
    head: str | None = None
    task: str | None = None
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    baseline: float | None = None
    baseline_label: str | None = None
    p_value: float | None = None
    verdict: str | None = None
    method: str | None = None
    stats: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}: use one of {', '.join(VERDICTS)}")
        if self.head is not None:
            HeadId.parse(self.head)

    @property
    def parent(self) -> str | None:
        """The kind of the headline finding this detail belongs to; None for a headline."""
        return PARENT_OF.get(self.kind)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (NaN as None), plus ``parent``."""
        from cortexmap.analysis.records import jsonable

        return jsonable({**dataclasses.asdict(self), "parent": self.parent})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """The finding :meth:`to_dict` wrote (``parent`` is derived, so it is ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
