"""The task format: minimal pairs, their tokenizer checks, and equal-length batches.

Conventions fixed here and used by every other module of :mod:`cortexmap.tasks`:

* A :class:`Pair` is one minimal pair. ``target`` and ``foil`` are *continuations* of
  ``prompt``; in templates they carry their leading space (``" Paris"``).
* The metric is the logit difference ``logit[target] - logit[foil]`` at the last prompt
  position (:func:`logit_diff`); a pair is ``correct`` when it is positive.
* ``corrupt`` is a prompt of the same token length whose right answer is the foil, so
  activation patching from the corrupt run flips the answer.
* ``variant`` is the index of the template variant a built-in pair was rendered from (0 for a
  task with one template); ``cue`` holds the words of the prompt the answer depends on (the
  subject noun of an agreement task, the country of a capital), each occurring in ``prompt``.
  :func:`cue_positions` turns a cue into token positions: those of ``prompt_ids(tokenizer,
  prompt)`` (special tokens included, so BOS is position 0) whose characters overlap the
  *last* occurrence of the cue in the prompt.
* A pair is *usable* for a tokenizer when ``target`` and ``foil`` each encode to exactly one
  id (``add_special_tokens=False``), differ, and the corrupt prompt (if any) has as many tokens
  as the clean one. Prompts are encoded with the tokenizer's default special tokens (BOS
  where the tokenizer adds one).
* Space folding: tokenizers that split digits (SmolLM2, Gemma) encode ``" 7"`` as a space
  token then ``"7"``. When both answers are of that form, the space moves to the end of the
  prompt (and corrupt prompt) and the answers lose it, so the scored token is the one that
  tells them apart.
* Batches are never padded: :func:`encode_task` groups pairs by prompt token length.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from cortexmap.errors import TaskError

LEVELS: tuple[str, ...] = ("lexical", "syntactic", "semantic", "pragmatic", "knowledge", "reasoning", "custom")
LEVEL_DESCRIPTIONS: dict[str, str] = {
    "lexical": "word forms: the form a word takes in its context",
    "syntactic": "agreement and argument structure across the words of a sentence",
    "semantic": "word meaning: opposites, categories, senses, what a verb can take",
    "pragmatic": "discourse: who is who and what follows from what happened",
    "knowledge": "fact recall: a stored fact about an entity named in the prompt",
    "reasoning": "comparison, arithmetic, deduction and composition of facts",
    "custom": "a user task from a JSONL file",
}
MIN_PAIRS = 8

DROP_TARGET = "target_not_single_token"
DROP_FOIL = "foil_not_single_token"
DROP_SAME = "target_equals_foil"
DROP_LENGTH = "corrupt_length_mismatch"


@dataclass(frozen=True)
class Pair:
    """One minimal pair.

    Attributes:
        prompt: the clean prompt.
        target: the right continuation (with its leading space, e.g. ``" Paris"``).
        foil: a plausible wrong continuation of the same kind.
        corrupt: a prompt of the same token length whose right answer is ``foil``, or None.
        variant: index of the template variant of the task the pair was rendered from.
        cue: the words of ``prompt`` the answer depends on, each occurring in it (may be empty).
    """

    prompt: str
    target: str
    foil: str
    corrupt: str | None = None
    variant: int = 0
    cue: tuple[str, ...] = ()


@dataclass
class Task:
    """A named set of minimal pairs scored by the target - foil logit difference.

    Attributes:
        name: task name (built-in name, or the JSONL file's stem).
        level: one of :data:`LEVELS`.
        description: one line saying what the task tests.
        pairs: the usable pairs, in generation order.
        dropped: reason -> number of candidate pairs dropped for that reason.
        version: bumped whenever the templates change, recorded in run manifests.
    """

    name: str
    level: str
    description: str
    pairs: list[Pair]
    dropped: dict[str, int] = field(default_factory=dict)
    version: str = "1"

    @property
    def has_corrupt(self) -> bool:
        """Whether every pair has a corrupt prompt (activation patching is possible)."""
        return bool(self.pairs) and all(p.corrupt is not None for p in self.pairs)


@dataclass
class EncodedBatch:
    """Pairs whose prompts share one token length, ready for a forward pass.

    Attributes:
        input_ids: clean prompts, ``[batch, seq]``.
        corrupt_ids: corrupt prompts, ``[batch, seq]``, or None when the pairs have none.
        target_ids: ``[batch]``.
        foil_ids: ``[batch]``.
        indices: position of each row's pair in ``task.pairs``.
    """

    input_ids: torch.Tensor
    corrupt_ids: torch.Tensor | None
    target_ids: torch.Tensor
    foil_ids: torch.Tensor
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)


def single_token(tokenizer: Any, text: str) -> int | None:
    """Return the id ``text`` encodes to without special tokens, or None if it is not one token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 else None


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Encode a prompt with the tokenizer's default special tokens."""
    return list(tokenizer(text)["input_ids"])


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _offsets(tokenizer: Any, prompt: str, ids: list[int]) -> list[tuple[int, int]] | None:
    """Character span of each token of ``ids`` from a fast tokenizer, or None when it has none."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    try:
        enc = tokenizer(prompt, return_offsets_mapping=True)
        offsets = [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        return None
    return offsets if list(enc["input_ids"]) == ids else None


def _prefix_positions(tokenizer: Any, prompt: str, start: int, end: int, ids: list[int]) -> list[int]:
    """Positions overlapping ``prompt[start:end]`` found by tokenizing the prompt's prefixes.

    The tokens before the span are the common prefix of ``ids`` and the encoding of
    ``prompt[:start]``; the tokens up to its end, that of ``prompt[:end]``. Where a prefix ends
    inside a token the two encodings part at that token, which then overlaps the span.
    """
    special = set(getattr(tokenizer, "all_special_ids", None) or [])

    def content(encoded: list[int]) -> list[int]:
        """``encoded`` without the special tokens a tokenizer appends (EOS); leading ones (BOS) stay."""
        lead = 0
        while lead < len(encoded) and encoded[lead] in special:
            lead += 1
        n = len(encoded)
        while n > lead and encoded[n - 1] in special:
            n -= 1
        return encoded[:n]

    text_ids = content(ids)
    head = content(prompt_ids(tokenizer, prompt[:start]))
    first = _common_prefix(head, text_ids)
    head = content(prompt_ids(tokenizer, prompt[:end]))
    upto = _common_prefix(head, text_ids)
    last = upto - 1 if upto == len(head) else upto  # the encodings part at a token the span's end cuts
    return list(range(first, min(last, len(text_ids) - 1) + 1))


def cue_positions(tokenizer: Any, prompt: str, cue: str) -> list[int]:
    """Token positions of the last occurrence of ``cue`` in ``prompt``.

    Positions index ``prompt_ids(tokenizer, prompt)``, the tokenizer's special tokens included
    (BOS, where the tokenizer adds one, is position 0). A token is returned when its character
    span overlaps the cue's, so a cue that starts or ends inside a token includes that token.
    Spans come from the fast tokenizer's offset mapping; other tokenizers are handled by
    tokenizing prefixes of the prompt.

    Args:
        tokenizer: a Hugging Face tokenizer.
        prompt: the prompt, as given to :func:`prompt_ids`.
        cue: a non-empty string.

    Returns:
        Increasing positions; ``[]`` when ``cue`` does not occur in ``prompt``.

    Raises:
        TaskError: ``cue`` is empty.
    """
    if not cue:
        raise TaskError("the cue is empty; pass the words of the prompt the answer depends on")
    start = prompt.rfind(cue)
    if start < 0:
        return []
    end = start + len(cue)
    ids = prompt_ids(tokenizer, prompt)
    offsets = _offsets(tokenizer, prompt, ids)
    if offsets is None:
        return _prefix_positions(tokenizer, prompt, start, end, ids)
    return [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]


def _fold_space(pair: Pair, tokenizer: Any) -> Pair:
    """Move a shared leading space of the answers into the prompts when it is a token of its own."""
    if not (pair.target.startswith(" ") and pair.foil.startswith(" ")):
        return pair
    space = tokenizer(" ", add_special_tokens=False)["input_ids"]
    if len(space) != 1:
        return pair
    for answer in (pair.target, pair.foil):
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(ids) != 2 or ids[0] != space[0]:
            return pair
    for prompt in (pair.prompt, pair.corrupt):
        if prompt is not None and prompt_ids(tokenizer, prompt + " ") != prompt_ids(tokenizer, prompt) + space:
            return pair
    corrupt = None if pair.corrupt is None else pair.corrupt + " "
    return replace(pair, prompt=pair.prompt + " ", target=pair.target[1:], foil=pair.foil[1:], corrupt=corrupt)


def check_pair(pair: Pair, tokenizer: Any) -> tuple[Pair | None, str | None]:
    """Check one pair against a tokenizer.

    Args:
        pair: the candidate pair.
        tokenizer: a Hugging Face tokenizer.

    Returns:
        ``(pair, None)`` with the (possibly space-folded) usable pair, or ``(None, reason)``
        where reason is one of the ``DROP_*`` keys.
    """
    if pair.target == pair.foil:
        return None, DROP_SAME
    pair = _fold_space(pair, tokenizer)
    target, foil = single_token(tokenizer, pair.target), single_token(tokenizer, pair.foil)
    if target is None:
        return None, DROP_TARGET
    if foil is None:
        return None, DROP_FOIL
    if target == foil:
        return None, DROP_SAME
    if pair.corrupt is not None:
        if len(prompt_ids(tokenizer, pair.corrupt)) != len(prompt_ids(tokenizer, pair.prompt)):
            return None, DROP_LENGTH
    return pair, None


def require_pairs(name: str, pairs: list[Pair], dropped: dict[str, int], minimum: int = MIN_PAIRS) -> None:
    """Raise :class:`TaskError` when a task has fewer than ``minimum`` usable pairs."""
    if len(pairs) < minimum:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())) or "none"
        raise TaskError(
            f"task {name!r} has {len(pairs)} usable pairs, fewer than the {minimum} needed "
            f"(dropped: {counts}); use a tokenizer that keeps its answers as single tokens or add more pairs"
        )


def encode_task(task: Task, tokenizer: Any, max_batch: int | None = None) -> list[EncodedBatch]:
    """Encode a task into unpadded batches of equal prompt length.

    Pairs are grouped by prompt token length (and by whether they have a corrupt prompt);
    batches come out sorted by length, each keeping its pairs in task order.

    Args:
        task: the task, built for ``tokenizer``.
        tokenizer: the tokenizer of the model the batches are for.
        max_batch: split groups into batches of at most this many rows (None: no limit).

    Returns:
        The batches; together their ``indices`` cover every pair once.

    Raises:
        TaskError: an answer is not one token or a corrupt prompt has another length, i.e. the
            task was built for a different tokenizer.
    """
    if max_batch is not None and max_batch < 1:
        raise TaskError(f"max_batch must be at least 1, got {max_batch}; pass None for no limit")
    groups: dict[tuple[int, bool], list[tuple[int, list[int], list[int] | None, int, int]]] = defaultdict(list)
    for index, pair in enumerate(task.pairs):
        target, foil = single_token(tokenizer, pair.target), single_token(tokenizer, pair.foil)
        ids = prompt_ids(tokenizer, pair.prompt)
        corrupt = None if pair.corrupt is None else prompt_ids(tokenizer, pair.corrupt)
        if target is None or foil is None or (corrupt is not None and len(corrupt) != len(ids)):
            raise TaskError(
                f"pair {index} of task {task.name!r} does not fit this tokenizer; "
                "rebuild the task with the tokenizer of the model you run"
            )
        groups[(len(ids), corrupt is not None)].append((index, ids, corrupt, target, foil))
    batches: list[EncodedBatch] = []
    for key in sorted(groups):
        rows = groups[key]
        step = max_batch or len(rows)
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            batches.append(
                EncodedBatch(
                    input_ids=torch.tensor([r[1] for r in chunk], dtype=torch.long),  # [b, seq]
                    corrupt_ids=torch.tensor([r[2] for r in chunk], dtype=torch.long) if key[1] else None,
                    target_ids=torch.tensor([r[3] for r in chunk], dtype=torch.long),
                    foil_ids=torch.tensor([r[4] for r in chunk], dtype=torch.long),
                    indices=[r[0] for r in chunk],
                )
            )
    return batches


def logit_diff(logits_last: torch.Tensor, target_ids: torch.Tensor, foil_ids: torch.Tensor) -> torch.Tensor:
    """Logit of the target minus logit of the foil.

    Args:
        logits_last: logits at the last prompt position, ``[batch, vocab]``.
        target_ids: ``[batch]``.
        foil_ids: ``[batch]``.

    Returns:
        ``[batch]`` logit differences.
    """
    target_ids = target_ids.to(logits_last.device)
    foil_ids = foil_ids.to(logits_last.device)
    rows = torch.arange(logits_last.shape[0], device=logits_last.device)
    return logits_last[rows, target_ids] - logits_last[rows, foil_ids]
