"""``check``: measure every invariant on a model and return a :class:`CheckReport`.

Two subsets. ``full`` (``cortexmap check``) runs every invariant below. ``fast`` (what ``cortexmap
map`` runs before mapping a model that is not bundled) keeps the ones that take a few forward
passes: hooks, identity interventions, the geometry table, weight edits of two heads and the
projection sum.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable

from cortexmap.checks import forward, sweep, weights
from cortexmap.checks.inputs import check_inputs
from cortexmap.checks.report import CheckReport, InvariantResult, last_record, save_record

Invariant = Callable[[Any, Any], InvariantResult]

FULL: tuple[Invariant, ...] = (
    forward.hooks_noop, forward.identity_interventions, weights.geometry_facts, weights.weight_edit,
    weights.projection_sum, weights.head_values, forward.batch_vs_single, forward.padding,
    forward.attention_implementations, forward.attention_rows, sweep.exact_sweep, sweep.attribution_sign,
)


def _fast_weight_edit(handle: Any, inputs: Any) -> InvariantResult:
    heads = weights.sample_heads(handle)
    return weights.weight_edit(handle, inputs, heads=[heads[0], heads[-1]])


FAST: tuple[Invariant, ...] = (forward.hooks_noop, forward.identity_interventions, weights.geometry_facts,
                               _fast_weight_edit, weights.projection_sum)
# The name a result carries, for progress lines and for results of invariants that raised.
NAMES: dict[Invariant, str] = {
    forward.hooks_noop: "hooks_noop", forward.identity_interventions: "identity", weights.geometry_facts: "geometry",
    weights.weight_edit: "weight_edit", _fast_weight_edit: "weight_edit", weights.projection_sum: "projection_sum",
    weights.head_values: "head_values", forward.batch_vs_single: "batching", forward.padding: "padding",
    forward.attention_implementations: "attention_impl", forward.attention_rows: "attention_rows",
    sweep.exact_sweep: "exact_sweep", sweep.attribution_sign: "attribution_sign",
}


def check(handle: Any, subset: str = "full", *, record: bool = True,
          progress: Callable[[str], None] | None = None) -> CheckReport:
    """Prove the tool's assumptions on ``handle``'s model: each invariant's largest deviation against its tolerance.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle`.
        subset: ``"full"`` (every invariant) or ``"fast"`` (a few forward passes; what ``map`` runs).
        record: keep the report as the model's last check (``cortexmap info`` shows it).
        progress: called with each invariant's name as it starts.

    Returns:
        The :class:`CheckReport`; ``report.passed`` is False when a gated invariant failed.
    """
    from cortexmap.errors import CortexmapError
    from cortexmap.sweep.manifest import package_versions

    if subset not in ("full", "fast"):
        raise CortexmapError(f"unknown check subset {subset!r}: use full or fast")
    started = time.time()
    inputs = check_inputs(handle)
    report = CheckReport(handle.describe(), subset, checked_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         cortexmap_version=package_versions()["cortexmap"])
    for invariant in FULL if subset == "full" else FAST:
        name = NAMES.get(invariant, invariant.__name__)
        if progress:
            progress(name)
        t0 = time.time()
        try:
            result = invariant(handle, inputs)
        except Exception as exc:  # an assumption so broken the measurement itself fails: a failed invariant
            first = (str(exc).splitlines() or [""])[0][:200]
            result = InvariantResult(name, "the invariant could be measured", None, 0.0, False,
                                     f"measuring it raised {type(exc).__name__}: {first}")
        result.seconds = round(time.time() - t0, 3)
        report.results.append(result)
    report.seconds = time.time() - started
    if record:
        save_record(report)
    return report


def gate(handle: Any, skip: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The check ``map`` runs before mapping: the fast subset on a model that is not bundled.

    Args:
        handle: the loaded model.
        skip: ``--skip-check``: map without checking (recorded).
        progress: called with a line as the check starts.

    Returns:
        The manifest's ``check`` record: the fast check's summary, or why it did not run (a
        bundled model's invariants are covered by cortexmap's own tests; ``skipped`` on request).

    Raises:
        CheckFailedError: an invariant failed (one line naming it, and how to map anyway).
    """
    from cortexmap.errors import CheckFailedError
    from cortexmap.models.bundled import BUNDLED

    dtype = str(handle.dtype).replace("torch.", "")
    if skip:
        return {"status": "skipped", "reason": "--skip-check", "last": last_record(handle.model_hash, dtype)}
    if handle.spec in BUNDLED:
        return {"status": "not run", "reason": "bundled model: cortexmap's test suite checks its invariants",
                "last": last_record(handle.model_hash, dtype)}
    if progress:
        progress(f"checking cortexmap's invariants on {handle.spec} (fast subset; --skip-check to skip)")
    report = check(handle, "fast")
    if not report.passed:
        raise CheckFailedError(f"{report.failure_line()}; results on this model would not be exact "
                               f"(run cortexmap check {handle.spec} for the full table, or --skip-check to map anyway)")
    return report.summary()
