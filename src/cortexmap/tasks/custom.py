"""User tasks from JSONL files: one minimal pair (or one prompt with answer sets) per line.

Each non-blank line is a JSON object. A pair::

    {"prompt": "The Statue of Liberty is in the city of", "target": " New York", "foil": " Paris",
     "corrupt": "The Eiffel Tower is in the city of", "level": "knowledge", "cue": "Statue of Liberty"}

An answer set (every right and every wrong continuation)::

    {"prompt": "The war lasted from the year 1732 to the year 17", "targets": ["33", "34", "35"],
     "foils": ["30", "31", "32"], "metric": "prob_diff"}

``prompt`` is required, with either ``target`` and ``foil`` (strings) or ``targets`` and
``foils`` (non-empty lists of distinct strings, none in both). Answers may be several tokens
long: a pair is scored by ``log P(target) - log P(foil)`` (the logit difference when both are one
token), a set by ``metric`` (:mod:`cortexmap.tasks.metrics`). Optional keys:

* ``corrupt``: a prompt whose right answer is the foil (needed for activation patching). It may
  have another token length than the prompt when the two end with the same token (patching then
  acts on aligned positions, :mod:`cortexmap.tasks.alignment`); one that cannot be aligned is an error.
* ``level``: one of :data:`~cortexmap.tasks.core.LEVELS` (default ``custom``; one level per file).
* ``metric``: for answer sets, ``prob_diff`` (default: the probability mass of the targets minus
  that of the foils) or ``log_mass_diff`` (the log of the two masses); one metric per file.
* ``cue``: the words of the prompt the answer depends on, a string or a list of strings, each
  occurring in the prompt (positions are taken at its last occurrence; see
  :func:`~cortexmap.tasks.core.cue_positions`).
* ``variant``: a non-negative integer naming the template the line was written from (default
  0), so results can be compared template by template.

No other keys are allowed, and a file holds pairs or answer sets, not both. Write answers as
continuations, with their leading space. Every line is validated before anything is returned,
and the first bad line raises :class:`~cortexmap.errors.TaskError` as ``path:line: reason``
(a corrupt prompt that cannot be aligned for the tokenizer included). Lines whose target and foil
become the same tokens for the tokenizer are dropped and counted, as for built-in tasks.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from cortexmap.errors import TaskError
from cortexmap.tasks.core import (
    DROP_UNALIGNED, LEVELS, MIN_PAIRS, Pair, Task, check_pair, prompt_ids, require_pairs, task_metric,
)
from cortexmap.tasks.alignment import align
from cortexmap.tasks.metrics import SET_METRICS

REQUIRED_KEYS = ("prompt", "target", "foil")
SET_KEYS = ("targets", "foils")
OPTIONAL_KEYS = ("corrupt", "level", "metric", "cue", "variant")


def _string(obj: dict[str, Any], key: str, where: str, required: bool) -> str | None:
    """Return ``obj[key]`` as a non-empty string, None when optional and absent (or null)."""
    if key not in obj or (obj[key] is None and not required):
        if required:
            raise TaskError(f"{where}: missing required key {key!r}; each line needs prompt, target and foil "
                            "(or targets and foils)")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise TaskError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise TaskError(f"{where}: {key!r} is empty; give it some text")
    return value


def _answer_set(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    """``obj[key]`` as a tuple of distinct non-empty strings."""
    value = obj.get(key)
    if value is None:
        raise TaskError(f"{where}: missing required key {key!r}; an answer set needs targets and foils")
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise TaskError(f"{where}: {key!r} must be a non-empty list of strings, got {type(value).__name__}")
    if any(not v.strip() for v in value):
        raise TaskError(f"{where}: {key!r} holds an empty string; give every answer some text")
    if len(set(value)) != len(value):
        raise TaskError(f"{where}: {key!r} repeats an answer; list each once")
    return tuple(value)


def _answers(obj: dict[str, Any], where: str) -> tuple[str | tuple[str, ...], str | tuple[str, ...]]:
    """The line's ``target`` / ``foil`` strings, or its ``targets`` / ``foils`` tuples."""
    given = [k for k in REQUIRED_KEYS[1:] + SET_KEYS if k in obj]
    if any(k in obj for k in SET_KEYS):
        if any(k in obj for k in REQUIRED_KEYS[1:]):
            raise TaskError(f"{where}: gives {' and '.join(given)}; give target and foil (a pair) or targets and "
                            "foils (answer sets), not both")
        targets, foils = _answer_set(obj, "targets", where), _answer_set(obj, "foils", where)
        both = sorted(set(targets) & set(foils))
        if both:
            raise TaskError(f"{where}: {both[0]!r} is both a target and a foil; an answer is right or wrong, not both")
        return targets, foils
    target, foil = (_string(obj, key, where, required=True) for key in REQUIRED_KEYS[1:])
    if target == foil:
        raise TaskError(f"{where}: target and foil are both {target!r}; the foil must be a different answer")
    return target, foil  # type: ignore[return-value]


def _cue(obj: dict[str, Any], prompt: str, where: str) -> tuple[str, ...]:
    """The line's ``cue`` as a tuple of strings that occur in ``prompt`` (empty when absent or null)."""
    value = obj.get("cue")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise TaskError(f"{where}: 'cue' must be a string or a list of strings, got {type(value).__name__}")
    for item in items:
        if not item.strip():
            raise TaskError(f"{where}: 'cue' holds an empty string; give the words the answer depends on")
        if item not in prompt:
            raise TaskError(f"{where}: cue {item!r} does not occur in the prompt; copy it from the prompt")
    return tuple(items)


def _variant(obj: dict[str, Any], where: str) -> int:
    """The line's ``variant`` (0 when absent or null)."""
    value = obj.get("variant")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskError(f"{where}: 'variant' must be an integer, got {type(value).__name__}")
    if value < 0:
        raise TaskError(f"{where}: 'variant' is {value}; number templates from 0")
    return value


def parse_line(text: str, where: str) -> tuple[Pair, str | None, str | None]:
    """Validate one JSONL line.

    Args:
        text: the line, not blank.
        where: ``path:line`` prefix for error messages.

    Returns:
        The pair, the line's level and its metric (None when not given).

    Raises:
        TaskError: the line is not a well-formed pair object.
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskError(f"{where}: not valid JSON ({err.msg}); write one JSON object per line") from None
    if not isinstance(obj, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    allowed = REQUIRED_KEYS + SET_KEYS + OPTIONAL_KEYS
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise TaskError(f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(allowed)}")
    prompt = _string(obj, "prompt", where, required=True)
    target, foil = _answers(obj, where)
    corrupt = _string(obj, "corrupt", where, required=False)
    level = _string(obj, "level", where, required=False)
    if level is not None and level not in LEVELS:
        raise TaskError(f"{where}: unknown level {level!r}; use one of {', '.join(LEVELS)}")
    metric = _string(obj, "metric", where, required=False)
    if metric is not None and not isinstance(target, tuple):
        raise TaskError(f"{where}: 'metric' is for answer sets (targets, foils); a pair is scored by log-probability")
    if metric is not None and metric not in SET_METRICS:
        raise TaskError(f"{where}: unknown metric {metric!r}; use one of {', '.join(SET_METRICS)}")
    if corrupt is not None and corrupt == prompt:
        raise TaskError(f"{where}: corrupt is the same as prompt; change the word that flips the answer")
    pair = Pair(prompt=prompt, target=target, foil=foil, corrupt=corrupt,  # type: ignore[arg-type]
                variant=_variant(obj, where), cue=_cue(obj, prompt, where))  # type: ignore[arg-type]
    return pair, level, metric


def _same(where: str, key: str, value: str | None, seen: tuple[str | None, int]) -> tuple[str | None, int]:
    """Check a per-file setting (level, metric, kind) against the lines before; return the one in force."""
    if value is None:
        return seen
    have, line = seen
    if have is None:
        return value, int(where.rsplit(":", 1)[1])
    if value != have:
        raise TaskError(f"{where}: {key} {value!r} differs from {have!r} on line {line}; put them in different files")
    return seen


def read_pairs(path: str | Path) -> tuple[list[Pair], str, str | None]:
    """Read and validate every line of a JSONL task file, without any tokenizer.

    Args:
        path: the ``.jsonl`` file.

    Returns:
        The pairs in file order, the task level (``custom`` when no line names one) and the set
        metric (None when no line names one).

    Raises:
        TaskError: the file is missing or empty, a line is malformed, or lines name different
            levels or metrics, or mix pairs with answer sets.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist; pass the path of a .jsonl file")
    pairs: list[Pair] = []
    level: tuple[str | None, int] = (None, 0)
    metric: tuple[str | None, int] = (None, 0)
    kind: tuple[str | None, int] = (None, 0)
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            pair, line_level, line_metric = parse_line(text, where)
            level = _same(where, "level", line_level, level)
            metric = _same(where, "metric", line_metric, metric)
            kind = _same(where, "answers", "answer sets" if pair.is_set else "pairs", kind)
            pairs.append(pair)
    if not pairs:
        raise TaskError(f"task file {path} has no pairs; write one JSON object per line")
    return pairs, level[0] or "custom", metric[0]


def load_task_file(path: str | Path, tokenizer: Any, name: str | None = None, min_pairs: int = MIN_PAIRS) -> Task:
    """Load a user task from a JSONL file and fit it to a tokenizer.

    Args:
        path: the ``.jsonl`` file (format in this module's docstring).
        tokenizer: the tokenizer of the model the task is for.
        name: task name (default: the file name without its extension).
        min_pairs: raise when fewer usable pairs than this remain after filtering.

    Returns:
        The task; ``version`` is a short hash of the file's contents, ``dropped`` counts the
        lines that do not fit the tokenizer.

    Raises:
        TaskError: the file is missing, empty or malformed (``path:line: reason``; a corrupt prompt
            that cannot be aligned for this tokenizer included), or too few pairs fit the tokenizer.
    """
    path = Path(path)
    candidates, level, metric = read_pairs(path)
    lines = _line_numbers(path)
    pairs: list[Pair] = []
    dropped: Counter[str] = Counter()
    for line, candidate in zip(lines, candidates):
        pair, reason = check_pair(candidate, tokenizer)
        if reason == DROP_UNALIGNED:
            clean, corrupt = prompt_ids(tokenizer, candidate.prompt), prompt_ids(tokenizer, candidate.corrupt or "")
            why = align(clean, corrupt).describe()
            raise TaskError(f"{path}:{line}: {why}; end the corrupt prompt like the prompt (the words before the "
                            "answer) or give it the prompt's token length")
        if pair is None:
            dropped[reason or "unknown"] += 1
        else:
            pairs.append(pair)
    task_name = name or path.stem
    require_pairs(task_name, pairs, dict(dropped), min_pairs)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return Task(
        name=task_name,
        level=level,
        description=f"user task from {path.name}",
        pairs=pairs,
        dropped=dict(sorted(dropped.items())),
        version=digest,
        metric=task_metric(pairs, tokenizer, metric),
    )


def _line_numbers(path: Path) -> list[int]:
    """The numbers of the non-blank lines of a file (those :func:`read_pairs` returns pairs for)."""
    with path.open(encoding="utf-8") as handle:
        return [number for number, text in enumerate(handle, start=1) if text.strip()]
