"""The default method on a CPU: screen every head cheaply, verify in screen order until a stopping rule, audit the rest.

``screen`` (what ``--method auto`` runs without a GPU) never lets an estimate stand in for a
measurement:

1. **Screen.** Every head is measured *exactly* on a seeded subsample of ``screen_prompts``
   prompts (stored as ``method == "screen"`` rows). On SmolLM2 this ranks heads far better than
   first-order attribution (BENCHMARKS.md, "cost of verified recall").
2. **Verify.** Heads are measured exactly on every prompt in screen order, ``chunk`` at a time,
   until the last ``chunk`` verified heads all fall below the bar: ``|effect_normalized| <
   min(bar, the 10th largest verified |effect_normalized|)``, i.e. none of them is important
   or would enter the top 10; at least ``min_heads``, at most ``max_heads`` heads per unit.
3. **Audit.** ``audit`` heads drawn at random (seeded) from the unverified ones are measured
   exactly too. The share of them at or above the bar estimates the share of important heads the
   screen missed, with a Clopper-Pearson 95% interval (:func:`miss_rate`).

Verified and audited heads are ``method == "exact"`` rows; every other head is *screened out
below the bar*, never called important on the screen's numbers.

Pure numpy and scipy: the measurements come in through a callback, so the rule and the audit
are tested on planted effects without a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
from scipy.stats import binomtest

BAR = 0.05  # |effect_normalized| at which a head counts as important here (5% of the clean metric)
TOP = 10


@dataclass(frozen=True)
class VerifyPolicy:
    """Budget and stopping rule of the ``screen`` method (recorded in the manifest)."""

    screen_prompts: int = 6
    chunk: int = 16
    min_heads: int = 32
    max_heads: int = 96
    audit: int = 16
    bar: float = BAR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def expected_heads(self, n_columns: int) -> float:
        """Heads a unit typically measures on every prompt (verified and audited), for plans and progress."""
        return min(float(n_columns), self.min_heads * 1.5 + self.audit)

    def screen_share(self, n_prompts: int) -> float:
        return min(1.0, self.screen_prompts / max(1, n_prompts))


@dataclass
class Verification:
    """What adaptive verification measured for one unit (columns are ``layer * n_heads + head``)."""

    verified: list[int]
    audited: list[int]
    effects: dict[int, float]  # column -> exact effect_normalized (verified and audited)
    stopped: str  # "rule", "budget" or "all"

    def audited_important(self, bar: float) -> int:
        return sum(abs(self.effects[c]) >= bar for c in self.audited)


def screen_order(screen_effect: np.ndarray) -> np.ndarray:
    """Columns by decreasing screened ``|effect|``; unmeasured (NaN) columns last."""
    magnitude = np.nan_to_num(np.abs(np.asarray(screen_effect, dtype=float)), nan=-1.0)
    return np.argsort(-magnitude, kind="stable")


def should_stop(values_in_order: list[float], chunk: int, bar: float) -> bool:
    """The stopping rule: the last ``chunk`` verified heads are all below ``min(bar, 10th largest)``."""
    if len(values_in_order) < chunk:
        return False
    magnitudes = np.abs(np.asarray(values_in_order, dtype=float))
    tenth = np.sort(magnitudes)[::-1][TOP - 1] if len(magnitudes) >= TOP else 0.0
    threshold = min(bar, tenth) if len(magnitudes) >= TOP else bar
    return bool((magnitudes[-chunk:] < threshold).all())


def adaptive_verify(order: np.ndarray, measure: Callable[[list[int]], dict[int, float]], policy: VerifyPolicy,
                    seed: int = 0) -> Verification:
    """Verify columns in ``order`` until :func:`should_stop` (within the budget), then audit the rest.

    Args:
        order: every column, best screened first (:func:`screen_order`).
        measure: exact ``effect_normalized`` of the given columns (one call per chunk; the audit
            sample is measured in one call).
        policy: budget and rule.
        seed: seeds the audit sample.
    """
    order = [int(c) for c in order]
    effects: dict[int, float] = {}
    verified: list[int] = []
    cap = min(len(order), policy.max_heads)
    stopped = "budget"
    while len(verified) < cap:
        step = order[len(verified):min(cap, len(verified) + policy.chunk)]
        effects.update(measure(step))
        verified.extend(step)
        if len(verified) >= policy.min_heads and should_stop([effects[c] for c in verified], policy.chunk, policy.bar):
            stopped = "rule"
            break
    rest = order[len(verified):]
    if not rest:
        return Verification(verified, [], effects, "all")
    rng = np.random.default_rng(seed)
    audited = sorted(int(c) for c in rng.choice(rest, size=min(policy.audit, len(rest)), replace=False))
    if audited:
        effects.update(measure(audited))
    return Verification(verified, audited, effects, stopped)


def miss_rate(important: int, audited: int) -> dict[str, float | int | None]:
    """Share of audited (unverified) heads that are important, with its Clopper-Pearson 95% interval."""
    if audited == 0:
        return {"audited": 0, "important": 0, "rate": None, "ci_low": None, "ci_high": None}
    ci = binomtest(important, audited).proportion_ci(confidence_level=0.95, method="exact")
    return {"audited": audited, "important": important, "rate": important / audited,
            "ci_low": float(ci.low), "ci_high": float(ci.high)}


def unit_record(result: Verification, n_columns: int, policy: VerifyPolicy) -> dict[str, Any]:
    """The manifest entry of one unit: counts, the stopping reason and its audit."""
    unverified = n_columns - len(result.verified)
    audit = miss_rate(result.audited_important(policy.bar), len(result.audited))
    return {"screened": n_columns, "verified": len(result.verified), "stopped": result.stopped,
            "unverified": unverified, **{f"audit_{k}": v for k, v in audit.items()}}


def pooled_audit(units: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run's miss rate: audited important / audited heads over every unit, with its interval.

    ``missed_estimate`` scales the rate by the unverified heads of the units (an estimate of how
    many important heads the atlas lacks, over all units together).
    """
    audited = sum(int(u.get("audit_audited") or 0) for u in units.values())
    important = sum(int(u.get("audit_important") or 0) for u in units.values())
    unverified = sum(int(u.get("unverified") or 0) for u in units.values())
    out = miss_rate(important, audited)
    out["unverified"] = unverified
    if out["rate"] is not None:
        out.update(missed_estimate=out["rate"] * unverified, missed_ci_low=out["ci_low"] * unverified,
                   missed_ci_high=out["ci_high"] * unverified)
    return out
