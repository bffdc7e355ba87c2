"""The default method on a CPU: screen every head cheaply, verify in screen order until a stopping rule, audit the rest.

``screen`` (what ``--method auto`` runs without a GPU) never lets an estimate stand in for a
measurement:

1. **Screen.** Every head is measured *exactly* on a seeded subsample of ``screen_prompts``
   prompts (stored as ``method == "screen"`` rows). On SmolLM2 this ranks heads far better than
   first-order attribution (BENCHMARKS.md, "cost of verified recall").
2. **Verify.** Heads are measured exactly on every prompt in screen order, ``chunk`` at a time,
   until none of the last ``chunk`` verified heads is *important* (``|effect_normalized| >= bar``
   and ``|z| >= z_min``: the atlas's "active" rule) or would enter the top 10 by ``|effect|``;
   at least ``min_heads``, at most ``max_heads`` heads per unit.
   If none of the verified heads is important, the task has no head the screen can follow and
   its "no head matters" is itself the finding: then every head is measured exactly
   (``measure_all_if_none``), so a null map rests on exact numbers, not on an audit sample.
3. **Audit.** ``audit`` heads drawn at random (seeded) from the unverified ones are measured
   exactly too. The share of them that are important estimates the share of important heads the
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

BAR = 0.05  # |effect_normalized| at which a head counts as important (5% of the clean metric) ...
Z_MIN = 3.0  # ... when also this far from zero (the atlas's "active" rule)
TOP = 10


@dataclass(frozen=True)
class VerifyPolicy:
    """Budget and stopping rule of the ``screen`` method (recorded in the manifest)."""

    screen_prompts: int = 4
    chunk: int = 16
    min_heads: int = 32
    max_heads: int = 64
    audit: int = 16
    bar: float = BAR
    z_min: float = Z_MIN
    measure_all_if_none: bool = True

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
    effects: dict[int, tuple[float, float]]  # column -> exact (effect_normalized, z), verified and audited
    stopped: str  # "rule", "budget", "all" (every head fits the budget) or "none-important" (every head measured)

    def audited_important(self, policy: VerifyPolicy) -> int:
        return sum(is_important(*self.effects[c], policy) for c in self.audited)


def is_important(effect: float, z: float, policy: VerifyPolicy) -> bool:
    """``|effect_normalized| >= bar`` and ``|z| >= z_min`` (a NaN z, e.g. one prompt, counts as certain)."""
    return abs(effect) >= policy.bar and not abs(z) < policy.z_min


def screen_order(screen_effect: np.ndarray) -> np.ndarray:
    """Columns by decreasing screened ``|effect|``; unmeasured (NaN) columns last."""
    magnitude = np.nan_to_num(np.abs(np.asarray(screen_effect, dtype=float)), nan=-1.0)
    return np.argsort(-magnitude, kind="stable")


def should_stop(values_in_order: list[tuple[float, float]], policy: VerifyPolicy) -> bool:
    """The stopping rule: none of the last ``chunk`` verified ``(effect, z)`` is important or in the top 10."""
    chunk = policy.chunk
    if len(values_in_order) < max(chunk, TOP):
        return False
    magnitudes = np.abs(np.asarray([v[0] for v in values_in_order], dtype=float))
    tenth = np.sort(magnitudes)[::-1][TOP - 1]
    last = values_in_order[-chunk:]
    return not any(is_important(e, z, policy) for e, z in last) and bool((magnitudes[-chunk:] < tenth).all())


def adaptive_verify(order: np.ndarray, measure: Callable[[list[int]], dict[int, tuple[float, float]]],
                    policy: VerifyPolicy, seed: int = 0) -> Verification:
    """Verify columns in ``order`` until :func:`should_stop` (within the budget), then audit the rest.

    Args:
        order: every column, best screened first (:func:`screen_order`).
        measure: exact ``(effect_normalized, z)`` of the given columns (one call per chunk; the
            audit sample is measured in one call).
        policy: budget and rule.
        seed: seeds the audit sample.
    """
    order = [int(c) for c in order]
    effects: dict[int, tuple[float, float]] = {}
    verified: list[int] = []
    cap = min(len(order), policy.max_heads)
    stopped = "budget"
    while len(verified) < cap:
        step = order[len(verified):min(cap, len(verified) + policy.chunk)]
        effects.update(measure(step))
        verified.extend(step)
        if len(verified) >= policy.min_heads and should_stop([effects[c] for c in verified], policy):
            stopped = "rule"
            break
    rest = order[len(verified):]
    if rest and policy.measure_all_if_none and not any(is_important(*effects[c], policy) for c in verified):
        for start in range(0, len(rest), policy.chunk):
            effects.update(measure(rest[start:start + policy.chunk]))
        return Verification(order, [], effects, "none-important")
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
    audit = miss_rate(result.audited_important(policy), len(result.audited))
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
