"""Checks of what a built-in task claims, shared by the fixture-tokenizer tests (tests/tasks) and the
bundled-tokenizer tests (tests/models/test_bundled_tasks.py).

* No copy shortcut: where the right answer occurs as a word of the prompt, the wrong one does too,
  for the clean prompt (answer: target) and the corrupt prompt (answer: foil).
* Cues: each cue occurs in the prompt, its last occurrence is not glued to a longer word, and
  :func:`cue_positions` returns the consecutive tokens that spell it, no more.
* :class:`NoOffsets` hides a fast tokenizer's offsets, so ``cue_positions`` takes its fallback path.
"""

from __future__ import annotations

import re
import string
from typing import Any

from cortexmap.tasks.core import Pair, cue_positions, prompt_ids

_WORD = re.compile(r"[^\W_]+")


class NoOffsets:
    """A tokenizer without offset mappings, as slow (Python) tokenizers are: the fallback path."""

    is_fast = False

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.all_special_ids = inner.all_special_ids

    def __call__(self, text: str, **kwargs: Any) -> Any:
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError("this tokenizer has no offsets")
        return self.inner(text, **kwargs)


def words(text: str) -> set[str]:
    """The words of ``text`` (runs of letters and digits), lower-cased."""
    return {w.lower() for w in _WORD.findall(text)}


def copy_shortcut(pair: Pair) -> str | None:
    """Why copying a word of the context could answer ``pair``, or None when it cannot.

    Returns:
        ``"prompt"`` when a target is a word of the prompt and no foil is,
        ``"corrupt"`` when the foil is a word of the corrupt prompt and the target is not (pairs
        only: an answer set's foils are the clean prompt's wrong answers, not the corrupt one's right ones).
    """
    targets = {t.strip().lower() for t in pair.targets}
    foils = {f.strip().lower() for f in pair.foils}
    context = words(pair.prompt)
    if targets & context and not foils & context:
        return "prompt"
    if pair.corrupt is not None and not pair.is_set:
        context = words(pair.corrupt)
        if foils & context and not targets & context:
            return "corrupt"
    return None


def cue_problem(tokenizer: Any, pair: Pair, cue: str) -> str | None:
    """What is wrong with one cue of a pair, or None.

    The tokens :func:`cue_positions` returns must be consecutive, skip the special tokens, decode
    to text holding the cue, and stop holding it when either end token is dropped.
    """
    start = pair.prompt.rfind(cue)
    if start < 0:
        return "does not occur in the prompt"
    end = start + len(cue)
    glued_before = cue[0].isalpha() and start > 0 and pair.prompt[start - 1].isalpha()
    glued_after = cue[-1].isalpha() and end < len(pair.prompt) and pair.prompt[end].isalpha()
    if glued_before or glued_after:
        return "its last occurrence is part of a longer word"
    positions = cue_positions(tokenizer, pair.prompt, cue)
    if not positions or positions != list(range(positions[0], positions[-1] + 1)):
        return f"positions {positions} are not a run of tokens"
    ids = prompt_ids(tokenizer, pair.prompt)
    special = set(tokenizer.all_special_ids)
    if any(ids[i] in special for i in positions):
        return f"positions {positions} include a special token"
    first, last = positions[0], positions[-1]
    if cue not in tokenizer.decode(ids[first : last + 1]):
        return f"tokens {positions} do not spell the cue"
    if cue in tokenizer.decode(ids[first + 1 : last + 1]) or cue in tokenizer.decode(ids[first:last]):
        return f"tokens {positions} hold more than the cue"
    return None


def template_regex(template: str) -> re.Pattern[str]:
    """A regex matching the renderings of a template; a field used twice must render the same."""
    groups: dict[str, str] = {}
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is None:
            continue
        if field in groups:
            parts.append(f"(?P={groups[field]})")
        else:
            groups[field] = f"g{len(groups)}"
            parts.append(f"(?P<{groups[field]}>.+?)")
    return re.compile("".join(parts))


def matches_variant(pair: Pair, variant: Any) -> bool:
    """Whether a pair's prompt, answers and corrupt prompt are renderings of one variant's templates."""
    prompt, corrupt = pair.prompt, pair.corrupt
    if pair.is_set:  # an answer set: its rendered answers are checked by the task's own tests
        if variant.target[0].startswith(" ") and not pair.targets[0].startswith(" "):  # the space was folded
            prompt, corrupt = prompt[:-1], None if corrupt is None else corrupt[:-1]
        checks = [(variant.prompt, prompt)] + ([(variant.corrupt, corrupt)] if variant.corrupt is not None else [])
        return all(text is not None and template_regex(t).fullmatch(text) for t, text in checks)
    target, foil = pair.target, pair.foil
    if variant.target.startswith(" ") and not target.startswith(" "):  # the space was folded into the prompts
        prompt, target, foil = prompt[:-1], " " + target, " " + foil
        corrupt = None if corrupt is None else corrupt[:-1]
    checks = [(variant.prompt, prompt), (variant.target, target), (variant.foil, foil)]
    if variant.corrupt is not None:
        checks.append((variant.corrupt, corrupt))
    return all(text is not None and template_regex(t).fullmatch(text) for t, text in checks)
