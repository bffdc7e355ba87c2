"""The task format: minimal pairs and answer sets, their tokenizer checks, and their batches.

Conventions fixed here and used by every other module of :mod:`cortexmap.tasks`:

* A :class:`Pair` is one minimal pair. ``target`` and ``foil`` are *continuations* of
  ``prompt``; in templates they carry their leading space (``" Paris"``). Either may be several
  tokens (``" New York"``). An *answer set* gives tuples instead: ``target`` holds every right
  continuation and ``foil`` every wrong one (``Pair.targets`` / ``Pair.foils`` always give tuples).
* The metric (:mod:`cortexmap.tasks.metrics`) is the task's :attr:`Task.metric`: for pairs the
  teacher-forced log-probability difference ``log P(target) - log P(foil)``, which is the logit
  difference ``logit[target] - logit[foil]`` at the last prompt position when both answers are one
  token (``logit_diff``, the default of such tasks, computed from the raw logits); for answer sets
  ``prob_diff`` (Hanna et al.'s probability mass difference, the default) or ``log_mass_diff``.
  A pair is ``correct`` when its most probable candidate is a target.
* An answer's tokens are ``tokenizer(answer, add_special_tokens=False)`` appended to the prompt's
  tokens: the continuation's probability given the prompt, not a re-tokenization of the joined text.
* ``corrupt`` is a prompt whose right answer is the foil, so activation patching from the
  corrupt run flips the answer. It may have another token length than the prompt: patching then
  acts on the aligned positions (:mod:`cortexmap.tasks.alignment`), and a pair that cannot be
  aligned at its last prompt position is refused.
* ``variant`` is the index of the template variant a built-in pair was rendered from (0 for a
  task with one template); ``cue`` holds the words of the prompt the answer depends on (the
  subject noun of an agreement task, the country of a capital), each occurring in ``prompt``.
  :func:`cue_positions` turns a cue into token positions: those of ``prompt_ids(tokenizer,
  prompt)`` (special tokens included, so BOS is position 0) whose characters overlap the
  *last* occurrence of the cue in the prompt.
* A pair is *usable* for a tokenizer when every answer encodes to at least one token, no
  answer is both a target and a foil (as tokens), and the corrupt prompt (if any) can be aligned.
  Prompts are encoded with the tokenizer's default special tokens (BOS where the tokenizer adds one).
* Space folding: tokenizers that split digits (SmolLM2, Gemma) encode ``" 7"`` as a space
  token then ``"7"``. When every answer is of that form, the space moves to the end of the
  prompt (and corrupt prompt) and the answers lose it, so the scored token is the one that
  tells them apart.
* Batches (:mod:`cortexmap.tasks.encoding`): one-token pairs of one prompt length share an
  unpadded batch, as they always did; other pairs share right-padded batches, which change no
  number that is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from cortexmap.errors import TaskError
from cortexmap.tasks.alignment import align, common_prefix
from cortexmap.tasks.encoding import EncodedBatch, PairIds, pack
from cortexmap.tasks.metrics import METRICS, SET_METRICS

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

DROP_TARGET = "target_not_single_token"  # only where one-token answers are required (circuits)
DROP_FOIL = "foil_not_single_token"
DROP_SAME = "target_equals_foil"
DROP_LENGTH = "corrupt_length_mismatch"  # only where equal lengths are required (circuits)
DROP_EMPTY = "answer_without_tokens"
DROP_UNALIGNED = "corrupt_unaligned"

Answer = str | tuple[str, ...]


@dataclass(frozen=True)
class Pair:
    """One minimal pair, or one prompt with answer sets.

    Attributes:
        prompt: the clean prompt.
        target: the right continuation (with its leading space, e.g. ``" Paris"``), or a tuple of
            every right continuation (an answer set).
        foil: a plausible wrong continuation of the same kind, or a tuple of wrong ones.
        corrupt: a prompt whose right answer is the foil, or None.
        variant: index of the template variant of the task the pair was rendered from.
        cue: the words of ``prompt`` the answer depends on, each occurring in it (may be empty).
    """

    prompt: str
    target: Answer
    foil: Answer
    corrupt: str | None = None
    variant: int = 0
    cue: tuple[str, ...] = ()

    @property
    def targets(self) -> tuple[str, ...]:
        """The right continuations, as a tuple."""
        return self.target if isinstance(self.target, tuple) else (self.target,)

    @property
    def foils(self) -> tuple[str, ...]:
        """The wrong continuations, as a tuple."""
        return self.foil if isinstance(self.foil, tuple) else (self.foil,)

    @property
    def is_set(self) -> bool:
        """Whether the pair gives answer sets (tuples) rather than one target and one foil."""
        return isinstance(self.target, tuple) or isinstance(self.foil, tuple)


def answer_text(answer: Answer) -> str:
    """An answer or answer set as one line of text (sets joined by ``" | "``)."""
    return " | ".join(answer) if isinstance(answer, tuple) else answer


@dataclass
class Task:
    """A named set of minimal pairs (or answer sets) scored by one metric.

    Attributes:
        name: task name (built-in name, or the JSONL file's stem).
        level: one of :data:`LEVELS`.
        description: one line saying what the task tests.
        pairs: the usable pairs, in generation order.
        dropped: reason -> number of candidate pairs dropped for that reason.
        version: bumped whenever the templates change, recorded in run manifests.
        metric: one of :data:`~cortexmap.tasks.metrics.METRICS` (:func:`task_metric` picks it).
    """

    name: str
    level: str
    description: str
    pairs: list[Pair]
    dropped: dict[str, int] = field(default_factory=dict)
    version: str = "1"
    metric: str = "logit_diff"

    @property
    def has_corrupt(self) -> bool:
        """Whether every pair has a corrupt prompt (activation patching is possible)."""
        return bool(self.pairs) and all(p.corrupt is not None for p in self.pairs)


def answer_ids(tokenizer: Any, text: str) -> list[int]:
    """The token ids of an answer continuation (no special tokens)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token(tokenizer: Any, text: str) -> int | None:
    """Return the id ``text`` encodes to without special tokens, or None if it is not one token."""
    ids = answer_ids(tokenizer, text)
    return int(ids[0]) if len(ids) == 1 else None


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Encode a prompt with the tokenizer's default special tokens."""
    return list(tokenizer(text)["input_ids"])


def task_metric(pairs: list[Pair], tokenizer: Any, requested: str | None = None) -> str:
    """The metric of a task's pairs for a tokenizer.

    Args:
        pairs: the usable pairs (all answer sets, or all pairs).
        tokenizer: the tokenizer they were checked with.
        requested: a set metric asked for by the task (None: ``prob_diff`` for sets).

    Returns:
        ``logit_diff`` for pairs whose answers are all one token, ``logprob_diff`` for other pairs,
        ``requested`` (or ``prob_diff``) for answer sets.

    Raises:
        TaskError: an unknown metric, a set metric for pairs, or pairs mixed with sets.
    """
    if requested is not None and requested not in METRICS:
        raise TaskError(f"unknown metric {requested!r}; use one of {', '.join(SET_METRICS)} for answer sets")
    kinds = {p.is_set for p in pairs}
    if len(kinds) > 1:
        raise TaskError("a task holds either pairs (target, foil) or answer sets (targets, foils), not both")
    if kinds == {True}:
        if requested is not None and requested not in SET_METRICS:
            raise TaskError(f"answer sets take metric {' or '.join(SET_METRICS)}, not {requested!r}")
        return requested or "prob_diff"
    if requested is not None:
        raise TaskError(f"metric {requested!r} is for answer sets (targets, foils); pairs are scored by "
                        "log-probability (the logit difference when both answers are one token)")
    one = all(len(answer_ids(tokenizer, a)) == 1 for p in pairs for a in p.targets + p.foils)
    return "logit_diff" if one else "logprob_diff"


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
    first = common_prefix(head, text_ids)
    head = content(prompt_ids(tokenizer, prompt[:end]))
    upto = common_prefix(head, text_ids)
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
    answers = pair.targets + pair.foils
    if not all(a.startswith(" ") for a in answers):
        return pair
    space = answer_ids(tokenizer, " ")
    if len(space) != 1:
        return pair
    for answer in answers:
        ids = answer_ids(tokenizer, answer)
        if len(ids) != 2 or ids[0] != space[0]:
            return pair
    for prompt in (pair.prompt, pair.corrupt):
        if prompt is not None and prompt_ids(tokenizer, prompt + " ") != prompt_ids(tokenizer, prompt) + space:
            return pair

    def strip(answer: Answer) -> Answer:
        return tuple(a[1:] for a in answer) if isinstance(answer, tuple) else answer[1:]

    corrupt = None if pair.corrupt is None else pair.corrupt + " "
    return replace(pair, prompt=pair.prompt + " ", target=strip(pair.target), foil=strip(pair.foil), corrupt=corrupt)


def check_pair(pair: Pair, tokenizer: Any, *, one_token: bool = False) -> tuple[Pair | None, str | None]:
    """Check one pair against a tokenizer.

    Args:
        pair: the candidate pair.
        tokenizer: a Hugging Face tokenizer.
        one_token: also require one-token answers and a corrupt prompt of the prompt's length
            (what edge-level circuits need).

    Returns:
        ``(pair, None)`` with the (possibly space-folded) usable pair, or ``(None, reason)``
        where reason is one of the ``DROP_*`` keys.
    """
    if set(pair.targets) & set(pair.foils):
        return None, DROP_SAME
    pair = _fold_space(pair, tokenizer)
    targets = [tuple(answer_ids(tokenizer, a)) for a in pair.targets]
    foils = [tuple(answer_ids(tokenizer, a)) for a in pair.foils]
    if not all(targets + foils):
        return None, DROP_EMPTY
    if one_token and any(len(t) != 1 for t in targets):
        return None, DROP_TARGET
    if one_token and any(len(f) != 1 for f in foils):
        return None, DROP_FOIL
    if set(targets) & set(foils):
        return None, DROP_SAME
    if pair.corrupt is not None:
        clean, corrupt = prompt_ids(tokenizer, pair.prompt), prompt_ids(tokenizer, pair.corrupt)
        if one_token and len(clean) != len(corrupt):
            return None, DROP_LENGTH
        if not align(clean, corrupt).ok:
            return None, DROP_UNALIGNED
    return pair, None


def require_pairs(name: str, pairs: list[Pair], dropped: dict[str, int], minimum: int = MIN_PAIRS) -> None:
    """Raise :class:`TaskError` when a task has fewer than ``minimum`` usable pairs."""
    if len(pairs) < minimum:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())) or "none"
        raise TaskError(
            f"task {name!r} has {len(pairs)} usable pairs, fewer than the {minimum} needed "
            f"(dropped: {counts}); add more pairs, or check that their corrupt prompts end like the prompts"
        )


def pad_id(tokenizer: Any) -> int:
    """The id written into pad positions: the pad token, else EOS, else 0 (never read either way)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def encode_task(task: Task, tokenizer: Any, max_batch: int | None = None, pad: bool = False) -> list[EncodedBatch]:
    """Encode a task into batches (:mod:`cortexmap.tasks.encoding`).

    One-token pairs whose corrupt prompt (if any) has the prompt's length go into unpadded
    batches of one prompt length (sorted by length, each keeping its pairs in task order); other
    pairs (multi-token answers, corrupt prompts of another length) into right-padded batches.

    Args:
        task: the task, built for ``tokenizer``.
        tokenizer: the tokenizer of the model the batches are for.
        max_batch: split groups into batches of at most this many pairs (None: no limit).
        pad: put every pair into right-padded batches, prompts of any length together.

    Returns:
        The batches; together their ``indices`` cover every pair once.

    Raises:
        TaskError: an answer without tokens, a corrupt prompt that cannot be aligned, or an
            answer of several tokens in a ``logit_diff`` task, i.e. the task was built for a
            different tokenizer; or answer sets under a pair metric.
    """
    if max_batch is not None and max_batch < 1:
        raise TaskError(f"max_batch must be at least 1, got {max_batch}; pass None for no limit")
    if task.metric not in METRICS:
        raise TaskError(f"task {task.name!r} has unknown metric {task.metric!r}; use one of {', '.join(METRICS)}")
    if task.metric not in SET_METRICS and any(p.is_set for p in task.pairs):
        raise TaskError(f"task {task.name!r} holds answer sets scored by {task.metric!r}; give it a set metric "
                        f"({' or '.join(SET_METRICS)})")
    items = []
    for index, pair in enumerate(task.pairs):
        targets = [answer_ids(tokenizer, a) for a in pair.targets]
        foils = [answer_ids(tokenizer, a) for a in pair.foils]
        ids = prompt_ids(tokenizer, pair.prompt)
        corrupt = None if pair.corrupt is None else prompt_ids(tokenizer, pair.corrupt)
        lengths = [len(a) for a in targets + foils]
        if (min(lengths) == 0 or (task.metric == "logit_diff" and max(lengths) > 1)
                or (corrupt is not None and not align(ids, corrupt).ok)):
            raise TaskError(
                f"pair {index} of task {task.name!r} does not fit this tokenizer; "
                "rebuild the task with the tokenizer of the model you run"
            )
        items.append(PairIds(index, ids, targets, foils, corrupt))
    return pack(items, task.metric, pad_id(tokenizer), max_batch, pad)


def encode_one_position(task: Task, tokenizer: Any, max_batch: int | None = None) -> tuple[list[EncodedBatch], int]:
    """The batches of a task's pairs whose metric is read at one position, for edge-level circuits.

    Those are the pairs with one-token answers (one target and one foil, or sets of them) and a
    corrupt prompt (if any) of the prompt's length: unpadded batches of one prompt length, read at
    the last position. Their ``indices`` stay the pairs' positions in ``task.pairs``.

    Args:
        task: the task, built for ``tokenizer``.
        tokenizer: the tokenizer of the model.
        max_batch: most pairs per batch (None: no limit).

    Returns:
        ``(batches, left_out)``: the batches and the number of pairs left out.

    Raises:
        TaskError: no pair of the task qualifies.
    """
    keep = [i for i, pair in enumerate(task.pairs) if check_pair(pair, tokenizer, one_token=True)[1] is None]
    if not keep:
        raise TaskError(
            f"task {task.name!r} has no pair with one-token answers and a corrupt prompt of the prompt's length "
            "for this tokenizer; circuits need them: measure the task head by head with cortexmap map instead"
        )
    metric = "logit_diff" if task.metric in ("logit_diff", "logprob_diff") else task.metric
    subset = replace(task, pairs=[task.pairs[i] for i in keep], metric=metric)
    batches = encode_task(subset, tokenizer, max_batch=max_batch)
    for batch in batches:
        batch.indices = [keep[i] for i in batch.indices]
    return batches, len(task.pairs) - len(keep)


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
