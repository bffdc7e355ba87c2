"""The default method on a CPU: screen every head cheaply, verify in screen order until a stopping rule, audit the rest.

``screen`` (what ``--method auto`` runs without a GPU) never lets an estimate stand in for a
measurement:

1. **Screen.** Every head is measured *exactly* on a seeded subsample of ``screen_prompts``
   prompts, then the ``refine_heads`` best of them (:func:`screen_order`) on ``refine_prompts``
   more (successive halving: the budget goes where the ranking is uncertain and matters). These
   are stored as ``method == "screen"`` rows. On SmolLM2 this ranks heads far better than
   first-order attribution (BENCHMARKS.md, "cost of verified recall").
2. **Verify.** Heads are measured exactly on every prompt in screen order (the refined heads by
   their refined numbers first, then the rest; :func:`refined_order`), ``chunk`` at a time,
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

from cortexmap.rules import ACTIVE, ImportanceRule
from cortexmap.stats import clopper_pearson

TOP = 10


@dataclass(frozen=True)
class VerifyPolicy:
    """Budget and stopping rule of the ``screen`` method (recorded in the manifest)."""

    screen_prompts: int = 2
    refine_heads: int = 120
    refine_prompts: int = 4
    chunk: int = 16
    min_heads: int = 32
    max_heads: int = 40
    audit: int = 8
    bar: float = ACTIVE.bar
    z_min: float = ACTIVE.z
    measure_all_if_none: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def expected_heads(self, n_columns: int) -> float:
        """Heads a unit typically measures on every prompt (verified and audited), for plans and progress."""
        return min(float(n_columns), float(self.max_heads + self.audit))

    def screen_heads(self, n_columns: int, n_prompts: int) -> float:
        """The screen's cost in heads measured on every prompt: all heads on the subsample, the refined ones on more."""
        n = max(1, n_prompts)
        return (n_columns * min(1.0, self.screen_prompts / n)
                + min(n_columns, self.refine_heads) * min(1.0, self.refine_prompts / n))


@dataclass
class Verification:
    """What adaptive verification measured for one unit (columns are ``layer * n_heads + head``).

    With several interventions verified jointly (one task's interventions: every verified or
    audited head is measured under each), an effect is a tuple of one ``(effect_normalized, z)``
    per intervention; with one, it is that pair.
    """

    verified: list[int]
    audited: list[int]
    effects: dict[int, Any]  # column -> (effect_normalized, z), or a tuple of them, verified and audited
    stopped: str  # "rule", "budget", "all" (every head fits the budget) or "none-important" (every head measured)

    def audited_important(self, policy: VerifyPolicy, index: int | None = None) -> int:
        """Audited heads important under intervention ``index`` (None: under any)."""
        return sum(_important_at(self.effects[c], policy, index) for c in self.audited)


def is_important(effect: float, z: float, policy: VerifyPolicy) -> bool:
    """The :data:`~cortexmap.rules.ACTIVE` rule at the policy's bar (a NaN z, e.g. one prompt, counts as certain)."""
    return ImportanceRule(ACTIVE.name, policy.bar, policy.z_min, harmful_only=False).holds(effect, z)


def _pairs(value: Any) -> tuple[tuple[float, float], ...]:
    """One ``(effect, z)`` per intervention, whether ``value`` is one pair or a tuple of pairs."""
    return tuple(value) if len(value) and isinstance(value[0], (tuple, list)) else (tuple(value),)


def _important_at(value: Any, policy: VerifyPolicy, index: int | None) -> bool:
    pairs = _pairs(value)
    return any(is_important(*pairs[i], policy) for i in (range(len(pairs)) if index is None else [index]))


def screen_order(screen_effect: np.ndarray) -> np.ndarray:
    """Columns by decreasing screened ``|effect|``; NaN last.

    With ``[n_interventions, n]`` (interventions verified jointly) a column's place is its best
    rank under any intervention, ties broken by its worst: the lists are interleaved, so each
    intervention's top heads come early even where another intervention's effects are larger.
    """
    magnitude = np.nan_to_num(np.abs(np.asarray(screen_effect, dtype=float)), nan=-1.0)
    if magnitude.ndim == 1:
        return np.argsort(-magnitude, kind="stable")
    ranks = np.stack([np.argsort(np.argsort(-m, kind="stable"), kind="stable") for m in magnitude])
    return np.lexsort((ranks.max(axis=0), ranks.min(axis=0)))


def refined_order(first: np.ndarray, refined: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``columns`` (the refined heads) in :func:`screen_order` of their refined effects, then every other column in ``first``'s order.

    Args:
        first: every column, in the first screen's order.
        refined: the refined screened effects of ``columns``, ``[n_interventions, len(columns)]`` or ``[len(columns)]``.
        columns: the refined columns.
    """
    columns = np.asarray(columns, dtype=int)
    head = columns[screen_order(refined)]
    rest = np.asarray([c for c in first if c not in set(columns.tolist())], dtype=int)
    return np.concatenate([head, rest])


def should_stop(values_in_order: list[Any], policy: VerifyPolicy) -> bool:
    """The stopping rule, for every intervention: none of the last ``chunk`` verified is important or in its top 10."""
    chunk = policy.chunk
    if len(values_in_order) < max(chunk, TOP):
        return False
    pairs = [_pairs(v) for v in values_in_order]
    for i in range(len(pairs[0])):
        values = [p[i] for p in pairs]
        magnitudes = np.abs(np.asarray([v[0] for v in values], dtype=float))
        tenth = np.sort(np.nan_to_num(magnitudes, nan=0.0))[::-1][TOP - 1]
        last = values[-chunk:]
        if any(is_important(e, z, policy) for e, z in last) or not bool((magnitudes[-chunk:] < tenth).all()):
            return False
    return True


def adaptive_verify(order: np.ndarray, measure: Callable[[list[int]], dict[int, Any]],
                    policy: VerifyPolicy, seed: int = 0) -> Verification:
    """Verify columns in ``order`` until :func:`should_stop` (within the budget), then audit the rest.

    Args:
        order: every column, best screened first (:func:`screen_order`).
        measure: exact ``(effect_normalized, z)`` of the given columns, or a tuple of them (one per
            intervention verified jointly); one call per chunk, the audit sample in one call.
        policy: budget and rule.
        seed: seeds the audit sample.
    """
    order = [int(c) for c in order]
    effects: dict[int, Any] = {}
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
    if rest and policy.measure_all_if_none and not any(_important_at(effects[c], policy, None) for c in verified):
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
    low, high = clopper_pearson(important, audited)
    return {"audited": audited, "important": important, "rate": important / audited, "ci_low": low, "ci_high": high}


def unit_record(result: Verification, n_columns: int, policy: VerifyPolicy, index: int | None = None) -> dict[str, Any]:
    """The manifest entry of one unit (intervention ``index`` of a joint verification): counts, stopping reason, audit."""
    unverified = n_columns - len(result.verified)
    audit = miss_rate(result.audited_important(policy, index), len(result.audited))
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
