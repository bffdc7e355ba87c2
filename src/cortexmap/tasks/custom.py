"""User tasks from JSONL files: one minimal pair per line.

Each non-blank line is a JSON object::

    {"prompt": "The capital of France is", "target": " Paris", "foil": " Rome",
     "corrupt": "The capital of Italy is", "level": "knowledge", "cue": "France", "variant": 0}

``prompt``, ``target`` and ``foil`` are required non-empty strings. Optional keys:

* ``corrupt``: a prompt of the same token length whose right answer is the foil (needed for
  activation patching).
* ``level``: one of :data:`~cortexmap.tasks.core.LEVELS` (default ``custom``; one level per file).
* ``cue``: the words of the prompt the answer depends on, a string or a list of strings, each
  occurring in the prompt (positions are taken at its last occurrence; see
  :func:`~cortexmap.tasks.core.cue_positions`).
* ``variant``: a non-negative integer naming the template the line was written from (default
  0), so results can be compared template by template.

No other keys are allowed. Write answers as continuations, with their leading space. Every line
is validated before anything is returned, and the first bad line raises
:class:`~cortexmap.errors.TaskError` as ``path:line: reason``. Lines that are well formed but
do not fit the tokenizer (an answer of several tokens, a corrupt prompt of another length)
are dropped and counted, as for built-in tasks.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from cortexmap.errors import TaskError
from cortexmap.tasks.core import LEVELS, MIN_PAIRS, Pair, Task, check_pair, require_pairs

REQUIRED_KEYS = ("prompt", "target", "foil")
OPTIONAL_KEYS = ("corrupt", "level", "cue", "variant")


def _string(obj: dict[str, Any], key: str, where: str, required: bool) -> str | None:
    """Return ``obj[key]`` as a non-empty string, None when optional and absent (or null)."""
    if key not in obj or (obj[key] is None and not required):
        if required:
            raise TaskError(f"{where}: missing required key {key!r}; each line needs prompt, target and foil")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise TaskError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise TaskError(f"{where}: {key!r} is empty; give it some text")
    return value


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


def parse_line(text: str, where: str) -> tuple[Pair, str | None]:
    """Validate one JSONL line.

    Args:
        text: the line, not blank.
        where: ``path:line`` prefix for error messages.

    Returns:
        The pair and the line's level (None when not given).

    Raises:
        TaskError: the line is not a well-formed pair object.
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskError(f"{where}: not valid JSON ({err.msg}); write one JSON object per line") from None
    if not isinstance(obj, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        allowed = ", ".join(REQUIRED_KEYS + OPTIONAL_KEYS)
        raise TaskError(f"{where}: unknown key {unknown[0]!r}; allowed keys are {allowed}")
    prompt, target, foil = (_string(obj, key, where, required=True) for key in REQUIRED_KEYS)
    corrupt = _string(obj, "corrupt", where, required=False)
    level = _string(obj, "level", where, required=False)
    if level is not None and level not in LEVELS:
        raise TaskError(f"{where}: unknown level {level!r}; use one of {', '.join(LEVELS)}")
    if target == foil:
        raise TaskError(f"{where}: target and foil are both {target!r}; the foil must be a different answer")
    if corrupt is not None and corrupt == prompt:
        raise TaskError(f"{where}: corrupt is the same as prompt; change the word that flips the answer")
    pair = Pair(prompt=prompt, target=target, foil=foil, corrupt=corrupt,  # type: ignore[arg-type]
                variant=_variant(obj, where), cue=_cue(obj, prompt, where))  # type: ignore[arg-type]
    return pair, level


def read_pairs(path: str | Path) -> tuple[list[Pair], str]:
    """Read and validate every line of a JSONL task file, without any tokenizer.

    Args:
        path: the ``.jsonl`` file.

    Returns:
        The pairs in file order and the task level (``custom`` when no line names one).

    Raises:
        TaskError: the file is missing or empty, a line is malformed, or lines name
            different levels.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist; pass the path of a .jsonl file")
    pairs: list[Pair] = []
    level: str | None = None
    level_line = 0
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            pair, line_level = parse_line(text, where)
            if line_level is not None:
                if level is not None and line_level != level:
                    raise TaskError(
                        f"{where}: level {line_level!r} differs from {level!r} on line {level_line}; "
                        "put tasks of different levels in different files"
                    )
                level, level_line = line_level, number
            pairs.append(pair)
    if not pairs:
        raise TaskError(f"task file {path} has no pairs; write one JSON object per line")
    return pairs, level or "custom"


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
        TaskError: the file is missing, empty or malformed, or too few pairs fit the tokenizer.
    """
    path = Path(path)
    candidates, level = read_pairs(path)
    pairs: list[Pair] = []
    dropped: Counter[str] = Counter()
    for candidate in candidates:
        pair, reason = check_pair(candidate, tokenizer)
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
    )
