"""When a head's effect counts: the two named rules the screen and the atlas share (numpy only).

An effect is ``effect_normalized`` (``(intervened - clean) / |clean|``, harm negative) with its
standard error ``se`` (from the prompts; the sweep's 95% interval divided by ``2 * 1.96``).

* :data:`ACTIVE`: ``|effect| >= 5%`` of the clean metric and ``|z| >= 3``, either sign. The screen
  (:mod:`cortexmap.sweep.verify`) verifies heads until none of the last chunk is active, audits
  the rest against it, and a head is *active* in the atlas when some task makes it so.
* :data:`IMPORTANT`: the same bar on the harmful side only (``effect <= -5%`` and ``z <= -3``).
  A head is *important* (critical) for a task when this holds under every counterfactual
  intervention the claim rests on (:mod:`cortexmap.analysis.view`).

``z = 3`` (two-sided p = 0.0027) rather than 1.96: every head of every task is checked, and 1.96
would admit 2.5% of all heads per task as noise. The 5% bar keeps effects too small to matter out
of depth statistics, and is the bar the screen's audit measures its misses against. Cells without a
standard error (never measured, or one prompt) never count; the screen alone treats a missing ``z``
as certain while it decides what to verify next (:meth:`ImportanceRule.holds`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BAR = 0.05
Z = 3.0


@dataclass(frozen=True)
class ImportanceRule:
    """A named rule: ``|effect| >= bar`` and ``|z| >= z``, on the harmful side only when ``harmful_only``."""

    name: str
    bar: float = BAR
    z: float = Z
    harmful_only: bool = True

    def mask(self, effect: np.ndarray, se: np.ndarray) -> np.ndarray:
        """Boolean mask over any shape (``se`` broadcasts); NaN effect or se, or se <= 0, is False."""
        effect = np.asarray(effect, dtype=float)
        se = np.asarray(se, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            signed = -effect if self.harmful_only else np.abs(effect)
            ok = (signed >= self.bar) & (signed >= self.z * se) & (se > 0)
        return ok & np.isfinite(effect) & np.isfinite(se)

    def holds(self, effect: float, z: float) -> bool:
        """The rule for one measured ``(effect, z)``; a NaN ``z`` (one prompt) counts as certain."""
        signed = -effect if self.harmful_only else abs(effect)
        z_side = -z if self.harmful_only else abs(z)
        return bool(signed >= self.bar and not z_side < self.z)

    def describe(self) -> str:
        """One line for notes and docs."""
        side = "harmful (effect <= -{bar:.0%} of clean, z <= -{z:g})" if self.harmful_only else \
            "|effect| >= {bar:.0%} of clean with |z| >= {z:g}"
        return f"{self.name}: " + side.format(bar=self.bar, z=self.z)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ACTIVE = ImportanceRule("active", harmful_only=False)
IMPORTANT = ImportanceRule("important", harmful_only=True)
