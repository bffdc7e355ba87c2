"""Interventions as data: small frozen dataclasses written to manifests and edit plans.

``kind`` is one of ``zero``, ``mean``, ``resample``, ``patch``, ``amplify``. Amplification scales
a head's output by ``1 + alpha`` (``alpha = -1`` is zero ablation, ``alpha = 0`` changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cortexmap.errors import InterventionError
from cortexmap.heads import HeadId, HeadLike, as_heads

KINDS = ("zero", "mean", "resample", "patch", "amplify")


@dataclass(frozen=True)
class HeadIntervention:
    """One intervention on a set of heads.

    Attributes:
        kind: ``zero``, ``mean``, ``resample``, ``patch`` or ``amplify``.
        heads: the query heads it applies to.
        alpha: amplification (output scaled by ``1 + alpha``); ignored by other kinds.
        per_position: mean ablation uses the per-position mean instead of the mean over positions.
    """

    kind: str
    heads: tuple[HeadId, ...]
    alpha: float = 0.0
    per_position: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InterventionError(f"unknown intervention {self.kind!r}: use one of {', '.join(KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "heads": [str(h) for h in self.heads], "alpha": self.alpha,
                "per_position": self.per_position}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadIntervention":
        return cls(data["kind"], tuple(as_heads(data["heads"])), float(data.get("alpha", 0.0)),
                   bool(data.get("per_position", False)))


def ablation(heads: HeadLike | list[HeadLike], mode: str = "zero", per_position: bool = False) -> HeadIntervention:
    """Ablate ``heads`` by ``mode`` (``zero``, ``mean`` or ``resample``)."""
    return HeadIntervention(mode, tuple(as_heads(heads)), per_position=per_position)


def amplification(heads: HeadLike | list[HeadLike], alpha: float) -> HeadIntervention:
    """Scale ``heads``' outputs by ``1 + alpha``."""
    return HeadIntervention("amplify", tuple(as_heads(heads)), alpha=float(alpha))


@dataclass(frozen=True)
class InterventionSpec:
    """A parsed sweep intervention (``zero``, ``mean``, ``resample``, ``patch`` or ``amplify:ALPHA``)."""

    kind: str
    alpha: float = field(default=float("nan"))

    @property
    def label(self) -> str:
        return f"amplify:{self.alpha:g}" if self.kind == "amplify" else self.kind

    @classmethod
    def parse(cls, text: str) -> "InterventionSpec":
        name, _, arg = text.strip().partition(":")
        if name not in KINDS:
            raise InterventionError(f"unknown intervention {text!r}: use zero, mean, resample, patch or amplify:ALPHA")
        if name == "amplify":
            try:
                return cls("amplify", float(arg or "1"))
            except ValueError:
                raise InterventionError(f"bad amplification {text!r}: write amplify:ALPHA, e.g. amplify:0.5") from None
        return cls(name)


def parse_interventions(text: str) -> list[InterventionSpec]:
    """Parse ``"zero,mean,amplify:0.5"`` into specs."""
    specs = [InterventionSpec.parse(part) for part in text.split(",") if part.strip()]
    if not specs:
        raise InterventionError("no intervention given: use e.g. --interventions zero,mean,patch")
    return specs
