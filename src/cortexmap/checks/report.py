"""What ``cortexmap check`` returns: one result per invariant, the report, and its record on disk.

Each invariant is measured as its **largest deviation** from what should hold, against a stated
**tolerance**. Deviations of logits are relative: ``max |a - b| / max |b|`` over every logit
compared, so one tolerance per dtype fits models whose logits run to 10 or to 100. A tolerance of
0 means bit-identical. Some rows are *reported, not failed* (``gate=False``): their outcome is a
fact about the model (does the attribution screen's sign agree with exact effects?) rather than a
promise of the tool.

The record of the last check of a model (keyed by its weights' hash and dtype) is kept under the
cache directory, so ``cortexmap info`` and the report can say whether and when it was checked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cortexmap.atomic import write_json

# Relative tolerance of logits by dtype: float32 matmuls reordered (a weight edit against a hook,
# eager against fused attention) differ by ~1e-6 of the logit scale; half precisions by ~1e-3..1e-2.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def tolerance_for(dtype: torch.dtype) -> float:
    """The relative tolerance of a model in ``dtype`` (float32's for unlisted dtypes)."""
    return TOLERANCE.get(dtype, TOLERANCE[torch.float32])


@dataclass
class InvariantResult:
    """One measured invariant.

    Attributes:
        name: short identifier (``weight_edit``, ``padding``, ...), what a failure line names.
        claim: what should hold, in one sentence.
        deviation: the largest deviation measured (None: not measured, see ``detail``).
        tolerance: the deviation allowed (0: bit-identical).
        passed: deviation within tolerance (None: not checked on this model).
        detail: where the largest deviation was, or why the invariant was not checked.
        gate: False for rows reported but never failed.
        seconds: time the invariant took.
    """

    name: str
    claim: str
    deviation: float | None
    tolerance: float
    passed: bool | None
    detail: str = ""
    gate: bool = True
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.gate and self.passed is False

    @property
    def outcome(self) -> str:
        if self.passed is None:
            return "not checked"
        if not self.gate:
            return "reported"
        return "pass" if self.passed else "FAIL"

    def line(self) -> str:
        """One line naming the invariant, what broke and by how much."""
        value = "n/a" if self.deviation is None else f"{self.deviation:.3g}"
        return f"{self.name}: {self.claim} — deviation {value} > tolerance {self.tolerance:.3g} ({self.detail})"


def measured(name: str, claim: str, deviation: float, tolerance: float, detail: str = "") -> InvariantResult:
    """An invariant result whose pass/fail follows from its deviation (NaN fails)."""
    deviation = float(deviation)
    return InvariantResult(name, claim, deviation, tolerance, bool(deviation <= tolerance), detail)


def unchecked(name: str, claim: str, why: str) -> InvariantResult:
    """An invariant this model cannot be checked on, with the reason."""
    return InvariantResult(name, claim, None, 0.0, None, why)


@dataclass
class CheckReport:
    """The outcome of :func:`~cortexmap.checks.check` on one model.

    Attributes:
        model: the model's facts (``handle.describe()``).
        subset: ``"full"`` or ``"fast"`` (the subset ``map`` runs before mapping).
        results: one :class:`InvariantResult` per invariant, in the order run.
        checked_at: UTC time of the check, ISO 8601.
        seconds: wall time of the whole check.
        cortexmap_version: the version that checked.
    """

    model: dict[str, Any]
    subset: str
    results: list[InvariantResult] = field(default_factory=list)
    checked_at: str = ""
    seconds: float = 0.0
    cortexmap_version: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[InvariantResult]:
        return [r for r in self.results if r.failed]

    def failure_line(self) -> str:
        """One line naming every broken invariant (empty when the check passed)."""
        if not self.failures:
            return ""
        return (f"{len(self.failures)} invariant(s) failed on {self.model.get('spec', 'the model')}: "
                + "; ".join(r.line() for r in self.failures))

    def summary(self) -> dict[str, Any]:
        """What manifests and ``cortexmap info`` record of a check."""
        counts = {o: sum(r.outcome == o for r in self.results) for o in ("pass", "FAIL", "reported", "not checked")}
        return {"status": "passed" if self.passed else "failed", "subset": self.subset, "checked_at": self.checked_at,
                "cortexmap_version": self.cortexmap_version, "dtype": self.model.get("dtype"),
                "counts": counts, "failed": [r.name for r in self.failures], "seconds": round(self.seconds, 2)}

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "subset": self.subset, "checked_at": self.checked_at,
                "seconds": round(self.seconds, 3), "cortexmap_version": self.cortexmap_version,
                "passed": self.passed, "results": [asdict(r) for r in self.results]}


def _record_path(model_hash: str, dtype: str) -> Path:
    from cortexmap.models.bundled import cache_dir

    return cache_dir() / "checks" / f"{model_hash[:32]}-{dtype}.json"


def save_record(report: CheckReport) -> Path | None:
    """Keep the report as the model's last check (None: the model has no weights hash to key it by)."""
    model_hash = str(report.model.get("hash") or "")
    if not model_hash:
        return None
    return write_json(report.to_dict(), _record_path(model_hash, str(report.model.get("dtype"))))


def last_record(model_hash: str, dtype: str) -> dict[str, Any] | None:
    """The summary of the last check of a model in ``dtype``, or None when it was never checked."""
    if not model_hash:
        return None
    path = _record_path(model_hash, dtype)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    results = [InvariantResult(**r) for r in data.get("results", [])]
    report = CheckReport(data.get("model", {}), data.get("subset", "full"), results, data.get("checked_at", ""),
                         data.get("seconds", 0.0), data.get("cortexmap_version", ""))
    return report.summary()
