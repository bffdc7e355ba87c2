"""Token-level batches of a task: rows, right padding, corrupt sources aligned, and the metric's reads.

A pair is encoded as one or more *rows*, each the prompt followed by a teacher-forced
continuation: with every answer one token, one row (the prompt); otherwise one row per distinct
answer prefix ``c[:-1]`` that no longer answer already contains (``" New York"`` and
``" New Delhi"`` need ``prompt + " New"`` once). An answer is read at positions ``P - 1 ..`` of a
row holding its tokens, so a pair's rows share its prompt and a one-token answer is read from
its first row.

Padding. Rows of different lengths share a batch right-padded (pad tokens after the last real
token) and run *without* an attention mask. Attention is causal, so a real position never sees a
later one: its keys, values, position id (``0 .. len - 1``, as unpadded), rotary angle and sliding
window are those of the row run alone, and nothing is ever read at a pad position. Padding
therefore changes no number that is read (tested against the rows one by one on every
architecture, Gemma-3's sliding windows included); left padding would need position ids and a
mask to get there.

Batches. Pairs whose only row is their prompt, whose corrupt prompt (if any) has its length, go
into unpadded batches of one prompt length, as they always did (``pad=False``, the default: the
sweep's fast path, same numbers). The others (several rows, or a corrupt prompt of another
length) go into right-padded batches sorted by length; ``pad=True`` sends every pair there, so
prompts of any length share batches.

Corrupt sources. Each row's source row is the corrupt prompt followed by the same continuation;
``source_map`` gives, per clean position, the aligned source position or -1
(:mod:`cortexmap.tasks.alignment`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cortexmap.tasks.alignment import Alignment, align
from cortexmap.tasks.metrics import Readout, pair_readout


@dataclass(frozen=True)
class PairIds:
    """One pair as token ids: the prompt, each candidate answer, the corrupt prompt."""

    index: int
    prompt: list[int]
    targets: list[list[int]]
    foils: list[list[int]]
    corrupt: list[int] | None = None

    @property
    def candidates(self) -> list[list[int]]:
        return self.targets + self.foils

    def continuations(self) -> list[list[int]]:
        """The continuations its rows hold (``[[]]``: the prompt alone), each answer's ``c[:-1]`` within one of them."""
        rows: list[list[int]] = []
        for cand in sorted(self.candidates, key=len, reverse=True):
            need = cand[:-1]
            if need and not any(row[:len(need)] == need for row in rows):
                rows.append(need)
        return rows or [[]]

    @property
    def simple(self) -> bool:
        """One row (every answer one token) and no corrupt prompt of another length."""
        one_row = all(len(c) == 1 for c in self.candidates)
        return one_row and (self.corrupt is None or len(self.corrupt) == len(self.prompt))

    def alignment(self) -> Alignment | None:
        return None if self.corrupt is None else align(self.prompt, self.corrupt)


@dataclass
class EncodedBatch:
    """A batch of pairs as token ids, ready for a forward pass.

    The first five fields are those of a batch of one-token pairs of one prompt length; the
    others default to that layout (row ``i`` is prompt ``i``, unpadded, read at its last position).

    Attributes:
        input_ids: ``[rows, seq]`` clean rows (prompt + continuation), right-padded.
        corrupt_ids: ``[rows, seq_src]`` source rows (corrupt prompt + the same continuation), or None.
        target_ids: ``[batch]`` target token ids when every pair is a one-token pair, else None.
        foil_ids: ``[batch]`` foil token ids, likewise.
        indices: each prompt's position in ``task.pairs``.
        readout: where the metric is read and how (None: ``target_ids - foil_ids`` at the last position).
        lengths: ``[rows]`` real tokens per row (None: unpadded).
        source_lengths: ``[rows]`` real tokens per source row (None: unpadded).
        source_map: ``[rows, seq]`` aligned source position of each clean position, -1 where none
            (None: every position aligns with itself).
        row_prompt: ``[rows]`` the prompt (index into ``indices``) of each row (None: row ``i`` is prompt ``i``).
        prompt_lengths: ``[batch]`` prompt tokens of each prompt (None: all ``seq``).
    """

    input_ids: torch.Tensor
    corrupt_ids: torch.Tensor | None
    target_ids: torch.Tensor | None
    foil_ids: torch.Tensor | None
    indices: list[int]
    readout: Readout | None = None
    lengths: torch.Tensor | None = None
    source_lengths: torch.Tensor | None = None
    source_map: torch.Tensor | None = None
    row_prompt: torch.Tensor | None = None
    prompt_lengths: torch.Tensor | None = field(default=None)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def n_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def read(self) -> Readout:
        """The batch's readout (built from ``target_ids`` / ``foil_ids`` for a plain one-token batch)."""
        if self.readout is not None:
            return self.readout
        return pair_readout(len(self.indices), self.target_ids, self.foil_ids, self.input_ids.shape[1] - 1)

    def reads(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(rows, positions)`` of the metric's reads, or None when they are the last position of each row in order."""
        readout = self.read()
        n = self.n_rows
        if (self.lengths is None and readout.n_reads == n and bool((readout.rows == torch.arange(n)).all())
                and bool((readout.positions == self.input_ids.shape[1] - 1).all())):
            return None
        return readout.rows, readout.positions

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """The metric per prompt, ``[k * batch]``, from ``[k * n_reads, vocab]`` logits of ``k`` copies of the batch."""
        readout = self.read()
        k = logits.shape[0] // readout.n_reads
        return readout.metric_of(logits.view(k, readout.n_reads, -1)).reshape(-1)

    def prompt_rows(self) -> torch.Tensor:
        """``[rows]`` the prompt of each row."""
        return torch.arange(self.n_rows) if self.row_prompt is None else self.row_prompt


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    width = max(len(r) for r in rows)
    if all(len(r) == width for r in rows):
        return torch.tensor(rows, dtype=torch.long), None
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows])


def _batch(items: list[PairIds], metric: str, pad_id: int) -> EncodedBatch:
    """Encode pairs into one batch: rows, padding, sources, alignment, readout."""
    rows: list[list[int]] = []
    sources: list[list[int]] = []
    maps: list[list[int]] = []
    row_prompt: list[int] = []
    reads: dict[tuple[int, int], int] = {}
    token_read: list[int] = []
    token_id: list[int] = []
    token_cand: list[int] = []
    targets: list[list[int]] = []
    foils: list[list[int]] = []
    n_cands = 0
    identity = True
    for b, item in enumerate(items):
        first = len(rows)
        conts = item.continuations()
        aligned = item.alignment()
        for cont in conts:
            rows.append(item.prompt + cont)
            row_prompt.append(b)
            if item.corrupt is not None:
                sources.append(item.corrupt + cont)
                identity &= aligned.identity
                maps.append([aligned.source(i) for i in range(len(item.prompt) + len(cont))])
        sides: tuple[list[int], list[int]] = ([], [])
        for side, cands in ((0, item.targets), (1, item.foils)):
            for cand in cands:
                row = first + next(j for j, cont in enumerate(conts) if cont[:len(cand) - 1] == cand[:-1])
                for j, token in enumerate(cand):
                    key = (row, len(item.prompt) - 1 + j)
                    token_read.append(reads.setdefault(key, len(reads)))
                    token_id.append(token)
                    token_cand.append(n_cands)
                sides[side].append(n_cands)
                n_cands += 1
        targets.append(sides[0])
        foils.append(sides[1])
    input_ids, lengths = _pad(rows, pad_id)
    corrupt_ids, source_lengths, source_map = None, None, None
    if sources:
        corrupt_ids, source_lengths = _pad(sources, pad_id)
        if not identity:
            source_map = torch.full(input_ids.shape, -1, dtype=torch.long)
            for i, m in enumerate(maps):
                source_map[i, :len(m)] = torch.tensor(m, dtype=torch.long)
    read_keys = sorted(reads, key=reads.get)

    def table(sides: list[list[int]]) -> torch.Tensor:
        out = torch.full((len(sides), max(len(s) for s in sides)), -1, dtype=torch.long)
        for i, s in enumerate(sides):
            out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        return out

    readout = Readout(
        metric=metric, rows=torch.tensor([r for r, _ in read_keys]), positions=torch.tensor([p for _, p in read_keys]),
        token_read=torch.tensor(token_read), token_id=torch.tensor(token_id), token_cand=torch.tensor(token_cand),
        targets=table(targets), foils=table(foils), n_cands=n_cands,
    )
    one_token = metric == "logit_diff" and len(rows) == len(items)
    prompt_lengths = torch.tensor([len(item.prompt) for item in items])
    simple = lengths is None and len(rows) == len(items)
    return EncodedBatch(
        input_ids=input_ids, corrupt_ids=corrupt_ids,
        target_ids=torch.tensor([it.targets[0][0] for it in items]) if one_token else None,
        foil_ids=torch.tensor([it.foils[0][0] for it in items]) if one_token else None,
        indices=[item.index for item in items], readout=readout, lengths=lengths, source_lengths=source_lengths,
        source_map=source_map, row_prompt=None if simple else torch.tensor(row_prompt),
        prompt_lengths=None if simple and bool((prompt_lengths == input_ids.shape[1]).all()) else prompt_lengths,
    )


def pack(items: list[PairIds], metric: str, pad_id: int, max_batch: int | None = None,
         pad: bool = False) -> list[EncodedBatch]:
    """Group encoded pairs into batches (module docstring).

    Args:
        items: the pairs, in task order.
        metric: the task's metric (:data:`~cortexmap.tasks.metrics.METRICS`).
        pad_id: the token id written into pad positions (never read).
        max_batch: most pairs per batch (None: no limit).
        pad: send every pair to right-padded batches, whatever its length.

    Returns:
        The unpadded batches by prompt length, then the padded ones by length; each keeps its
        pairs in task order, and together they cover every pair once.
    """
    groups: dict[tuple, list[PairIds]] = {}
    for item in items:
        has_corrupt = item.corrupt is not None
        if item.simple and not pad:
            key: tuple = (0, len(item.prompt), has_corrupt)
        else:
            key = (1, has_corrupt)
        groups.setdefault(key, []).append(item)
    batches: list[EncodedBatch] = []
    for key in sorted(groups):
        group = groups[key]
        if key[0] == 1:  # padded: neighbours in length share a batch, so little is padded
            group = sorted(group, key=lambda it: (max(len(it.prompt) + len(c) for c in it.continuations()), it.index))
        step = max_batch or len(group)
        for start in range(0, len(group), step):
            chunk = group[start:start + step]
            if key[0] == 1:
                chunk = sorted(chunk, key=lambda it: it.index)
            batches.append(_batch(chunk, metric, pad_id))
    return batches
