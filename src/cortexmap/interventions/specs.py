"""Interventions as data: small frozen dataclasses written to manifests and edit plans.

``kind`` is one of ``zero``, ``mean``, ``resample``, ``patch``, ``amplify``.

* **Amplification** multiplies a head's output ``z`` (its slice of the out-projection input) by
  ``1 + alpha``: ``alpha = 0`` changes nothing, ``alpha = -1`` is zero ablation, ``alpha = 1``
  doubles the head. :func:`amplification` also takes the multiplier itself (``factor=2.0`` is
  ``alpha=1.0``); the spec stores ``alpha``.
* **Inputs travel with the intervention.** ``patch`` takes head outputs from its own ``source``
  prompt(s); ``mean`` / ``resample`` average or draw over their own ``reference`` prompt(s). So
  two patches from different sources compose in one ``intervene`` call. Prompts and token ids
  are written by ``to_dict``; precomputed mean activations are not (they are tensors per layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

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
        source: ``patch`` only: prompt(s) or token ids whose head outputs replace the run's
            (same token length as the run; one row, or one per batch row).
        reference: ``mean`` / ``resample``: prompt(s) or token ids (``mean`` also takes the
            ``{layer: mean z}`` of :func:`~cortexmap.interventions.mean_head_outputs`).
        seed: ``resample`` only: seed of the derangement (``None``: the ``intervene`` seed).
    """

    kind: str
    heads: tuple[HeadId, ...]
    alpha: float = 0.0
    per_position: bool = False
    source: Any = field(default=None, compare=False, repr=False)
    reference: Any = field(default=None, compare=False, repr=False)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InterventionError(f"unknown intervention {self.kind!r}: use one of {', '.join(KINDS)}")

    @property
    def factor(self) -> float:
        """The multiplier of an amplification's head outputs: ``1 + alpha``."""
        return 1.0 + self.alpha

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "heads": [str(h) for h in self.heads], "alpha": self.alpha,
                                "per_position": self.per_position}
        for name in ("source", "reference"):
            value = _inputs_to_json(getattr(self, name))
            if value is not None:
                data[name] = value
        if self.seed is not None:
            data["seed"] = self.seed
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadIntervention":
        return cls(data["kind"], tuple(as_heads(data["heads"])), float(data.get("alpha", 0.0)),
                   bool(data.get("per_position", False)), _inputs_from_json(data.get("source")),
                   _inputs_from_json(data.get("reference")), data.get("seed"))


def _inputs_to_json(value: Any) -> Any:
    """Prompts as text, token ids as ``{"input_ids": [[...]]}``; anything else (precomputed means) is not written."""
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value)):
        return value if isinstance(value, str) else list(value)
    if isinstance(value, torch.Tensor) and not value.is_floating_point():
        return {"input_ids": value.tolist()}
    return None


def _inputs_from_json(value: Any) -> Any:
    if isinstance(value, dict) and "input_ids" in value:
        return torch.tensor(value["input_ids"])
    return value


def ablation(heads: HeadLike | list[HeadLike], mode: str = "zero", per_position: bool = False, *,
             reference: Any = None, seed: int | None = None) -> HeadIntervention:
    """Ablate ``heads`` by ``mode`` (``zero``, ``mean`` or ``resample``; the last two over ``reference``)."""
    if mode not in ("zero", "mean", "resample"):
        raise InterventionError(f"unknown ablation {mode!r}: use zero, mean or resample")
    return HeadIntervention(mode, tuple(as_heads(heads)), per_position=per_position, reference=reference, seed=seed)


def amplification(heads: HeadLike | list[HeadLike], alpha: float | None = None, *,
                  factor: float | None = None) -> HeadIntervention:
    """Scale ``heads``' outputs by ``1 + alpha``, or by ``factor`` (give exactly one).

    ``amplification(h, factor=2.0)`` equals ``amplification(h, alpha=1.0)``; ``factor=0`` is
    zero ablation and ``factor=1`` the unchanged model.
    """
    if (alpha is None) == (factor is None):
        raise InterventionError("give amplification either alpha (output x (1 + alpha)) or factor (output x factor)")
    return HeadIntervention("amplify", tuple(as_heads(heads)), alpha=float(alpha) if alpha is not None else float(factor) - 1.0)


def patching(heads: HeadLike | list[HeadLike], source: Any) -> HeadIntervention:
    """Replace ``heads``' outputs by their outputs on ``source`` (prompt(s) or token ids of the run's length)."""
    if source is None:
        raise InterventionError("activation patching needs a source prompt to take head outputs from")
    return HeadIntervention("patch", tuple(as_heads(heads)), source=source)


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
