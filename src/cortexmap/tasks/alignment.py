"""Which position of a corrupt prompt stands for which position of its clean prompt.

Activation patching replaces a head's output at a clean position by its output at the *aligned*
position of the corrupt run. With ``A`` the longest common token prefix of the two prompts and
``B`` their longest common token suffix (not overlapping ``A``), the prompts read
``A + X + B`` (clean, ``P`` tokens) and ``A + Y + B`` (corrupt, ``C`` tokens), and clean position
``i`` aligns with:

* ``i`` for ``i < len(A)`` (the shared prefix; patching there changes nothing, the two runs agree);
* ``i - P + C`` for ``i >= P - len(B)`` (the shared suffix, counted from the end), and so for every
  continuation token appended after the prompt (an answer teacher-forced after both prompts);
* ``i`` inside ``X`` when ``X`` and ``Y`` have the same number of tokens (in particular whenever
  ``P == C``: every position aligns with itself, the usual minimal pair);
* nothing inside ``X`` when ``len(X) != len(Y)``: there is no one-to-one map between spans of
  different lengths, so the head keeps its clean output on ``X``. What is patched is its output on
  the positions after the difference, where what a head moves out of the differing words arrives.

A pair of different lengths whose last prompt token lies inside ``X`` (the prompts do not end
with the same token) cannot be aligned at the position the metric is read: it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Alignment:
    """How a corrupt prompt lines up with its clean prompt (see the module docstring).

    Attributes:
        clean: clean prompt tokens ``P``.
        corrupt: corrupt prompt tokens ``C``.
        prefix: tokens of the common prefix ``A``.
        suffix: tokens of the common suffix ``B``.
    """

    clean: int
    corrupt: int
    prefix: int
    suffix: int

    @property
    def ok(self) -> bool:
        """Whether the last clean prompt position is aligned (equal lengths, or a shared last token)."""
        return self.clean == self.corrupt or self.suffix > 0

    @property
    def identity(self) -> bool:
        """Whether every position aligns with itself (equal lengths)."""
        return self.clean == self.corrupt

    def source(self, position: int) -> int:
        """The corrupt position aligned with clean ``position`` (appended continuation tokens included), -1 if none."""
        if self.identity or position < self.prefix:
            return position
        if position >= self.clean - self.suffix:
            return position - self.clean + self.corrupt
        return -1

    def describe(self) -> str:
        """One line on why a pair cannot be aligned (for error messages)."""
        return (f"the corrupt prompt is {self.corrupt} tokens and the prompt {self.clean}, and they do not end "
                "with the same token, so no corrupt position stands for the last prompt position")


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def align(clean: list[int], corrupt: list[int]) -> Alignment:
    """Align a corrupt prompt's tokens with its clean prompt's tokens.

    Args:
        clean: the clean prompt's token ids.
        corrupt: the corrupt prompt's token ids.

    Returns:
        The :class:`Alignment`; check ``ok`` before patching with it.
    """
    prefix = common_prefix(clean, corrupt)
    room = min(len(clean), len(corrupt)) - prefix
    suffix = min(common_prefix(clean[::-1], corrupt[::-1]), room)
    return Alignment(len(clean), len(corrupt), prefix, suffix)
