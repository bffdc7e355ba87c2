"""Head identifiers: one name per head, ``L{layer}H{head}``, zero-based.

The same string appears in DataFrames (beside integer ``layer`` and ``head`` columns), CLI
arguments and reports. Inside the library heads travel as :class:`HeadId` objects. This module
imports no torch, so analysis code can use it on a laptop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Union

from cortexmap.errors import UnknownHeadError

_PATTERN = re.compile(r"^\s*L(\d+)\s*H(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class HeadId:
    """A query head: ``layer`` and ``head`` are zero-based."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    @classmethod
    def parse(cls, text: str) -> "HeadId":
        """Parse ``"L3H5"`` (case-insensitive) into ``HeadId(3, 5)``.

        Raises:
            UnknownHeadError: the text is not of the form ``L<layer>H<head>``.
        """
        match = _PATTERN.match(text)
        if match is None:
            raise UnknownHeadError(f"{text!r} is not a head name: write heads as L<layer>H<head>, e.g. L3H5")
        return cls(int(match.group(1)), int(match.group(2)))


HeadLike = Union[HeadId, str, "tuple[int, int]"]


def as_head(value: HeadLike) -> HeadId:
    """Coerce a ``HeadId``, ``"L3H5"`` string or ``(layer, head)`` tuple into a ``HeadId``."""
    if isinstance(value, HeadId):
        return value
    if isinstance(value, str):
        return HeadId.parse(value)
    try:
        layer, head = value
        return HeadId(int(layer), int(head))
    except (TypeError, ValueError):
        raise UnknownHeadError(f"{value!r} is not a head: use HeadId, 'L3H5' or (layer, head)") from None


def as_heads(values: Iterable[HeadLike] | HeadLike | None) -> list[HeadId]:
    """Coerce one head or an iterable of heads (or a comma-separated string) into a sorted list."""
    if values is None:
        return []
    if isinstance(values, str):
        return sorted({as_head(v) for v in values.split(",") if v.strip()})
    if isinstance(values, HeadId) or (isinstance(values, tuple) and len(values) == 2 and all(isinstance(v, int) for v in values)):
        return [as_head(values)]  # type: ignore[arg-type]
    return sorted({as_head(v) for v in values})


def check_head(head: HeadId, n_layers: int, n_heads: int, model_name: str = "this model") -> HeadId:
    """Raise :class:`UnknownHeadError` unless ``head`` lies inside the ``n_layers x n_heads`` grid."""
    if not (0 <= head.layer < n_layers and 0 <= head.head < n_heads):
        raise UnknownHeadError(
            f"{head} does not exist: {model_name} has {n_layers} layers x {n_heads} heads (zero-based)"
        )
    return head
