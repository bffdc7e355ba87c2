"""Mechanistic probes: score every head from its attention pattern alone (no logit metric).

A probe score is the attention mass a head puts on the probe's *target keys*, averaged over
the probe's *query positions*, so it lies in [0, 1]. Attention tensors are
``[batch, n_heads, q, k]`` (rows sum to 1). Position 0 is the attention sink (BOS where the
tokenizer adds one, else the first token): only ``sink`` targets it, every other probe
leaves it out of its targets and drops queries whose target set is then empty.

=================  ============================================  ==========================================
probe              queries                                       target keys
=================  ============================================  ==========================================
previous_token     every position q >= 2                         q - 1
induction          q whose token occurred before at j, j+1 < q   j + 1 (after the latest earlier occurrence)
duplicate_token    q whose token occurred before                 every earlier position with the same token
sink               every position q >= 1                         0
local_window       every position q >= w + 1 (w = 3)            q - w .. q - 1 (not q itself)
successor          members 2.. of an ordinal list                the preceding member (not the separator)
=================  ============================================  ==========================================

Inputs: the first five probes share one batch of random token sequences repeated twice
(``[prefix] R R``, R without repeats, drawn from word-like vocabulary entries). ``successor``
reads ordinal lists such as ``" Monday, Tuesday, Wednesday"`` from ``data/sequences.yaml``:
querying a member and targeting the previous member two tokens back separates "look at the
previous item of a sequence" from plain previous-token attention (which would hit the comma).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from cortexmap.errors import TaskError
from cortexmap.heads import HeadId
from cortexmap.models.hooks import eager_attention
from cortexmap.tasks.core import single_token
from cortexmap.stats import bootstrap_cis
from cortexmap.tasks.templates import load_sequences

LOCAL_WINDOW = 3
PATTERN_COLUMNS = ["model", "probe", "layer", "head", "head_id", "score", "ci_low", "ci_high", "n_prompts"]


def mask_score(attn: torch.Tensor, target: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention mass on target keys over query positions.

    Args:
        attn: ``[batch, n_heads, q, k]`` attention weights.
        target: ``[batch, q, k]`` bool, the target keys of each query.
        query: ``[batch, q]`` bool, the query positions (default: all); queries without any
            target are dropped.

    Returns:
        ``[batch, n_heads]`` scores; 0 for a prompt without any query.
    """
    query = target.any(-1) if query is None else query & target.any(-1)
    mass = (attn * target[:, None].to(attn.dtype)).sum(-1)  # [b, h, q]
    weight = query[:, None].to(attn.dtype)
    return (mass * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)


def _lower(batch: int, seq: int, device: torch.device) -> torch.Tensor:
    """``[batch, q, k]`` mask of strictly earlier keys, never position 0."""
    q = torch.arange(seq, device=device)
    mask = (q[None, :] < q[:, None]) & (q[None, :] >= 1)
    return mask.expand(batch, seq, seq)


def previous_token_score(attn: torch.Tensor) -> torch.Tensor:
    """Score of attention to the previous token, ``[batch, n_heads]``."""
    b, _, seq, _ = attn.shape
    target = torch.diag_embed(torch.ones(seq - 1, dtype=torch.bool, device=attn.device), offset=-1)
    target[:, 0] = False  # position 0 belongs to the sink probe
    return mask_score(attn, target.expand(b, seq, seq))


def sink_score(attn: torch.Tensor) -> torch.Tensor:
    """Score of attention to position 0 from every later position, ``[batch, n_heads]``."""
    b, _, seq, _ = attn.shape
    target = torch.zeros(b, seq, seq, dtype=torch.bool, device=attn.device)
    target[:, 1:, 0] = True
    return mask_score(attn, target)


def local_window_score(attn: torch.Tensor, window: int = LOCAL_WINDOW) -> torch.Tensor:
    """Score of attention to the ``window`` tokens before the query (itself excluded), ``[batch, n_heads]``."""
    if window < 1:
        raise TaskError(f"the local window must be at least 1 token, got {window}")
    b, _, seq, _ = attn.shape
    q = torch.arange(seq, device=attn.device)
    offset = q[:, None] - q[None, :]
    target = (offset >= 1) & (offset <= window) & (q[:, None] >= window + 1)
    return mask_score(attn, target.expand(b, seq, seq))


def duplicate_token_score(attn: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Score of attention to earlier copies of the query's token, ``[batch, n_heads]``.

    Args:
        attn: ``[batch, n_heads, q, k]``.
        input_ids: ``[batch, seq]`` tokens the pattern was computed on.
    """
    ids = input_ids.to(attn.device)
    same = ids[:, :, None] == ids[:, None, :]
    return mask_score(attn, same & _lower(*ids.shape, attn.device))


def induction_score(attn: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Score of attention to the token after the latest earlier copy of the query's token.

    Args:
        attn: ``[batch, n_heads, q, k]``.
        input_ids: ``[batch, seq]`` tokens the pattern was computed on.

    Returns:
        ``[batch, n_heads]`` scores.
    """
    ids = input_ids.to(attn.device)
    b, seq = ids.shape
    pos = torch.arange(seq, device=attn.device)
    earlier = (ids[:, :, None] == ids[:, None, :]) & (pos[None, :] < pos[:, None])[None]
    last = torch.where(earlier, pos, torch.full_like(pos, -1)).amax(-1)  # [b, q]
    follow = last + 1
    valid = (last >= 0) & (follow < pos[None, :])
    target = (pos[None, None, :] == follow[:, :, None]) & valid[:, :, None]
    return mask_score(attn, target)


def successor_score(attn: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Score of attention from each member of an ordinal list to the member before it.

    Args:
        attn: ``[batch, n_heads, q, k]``.
        members: ``[batch, m]`` positions of the list members, increasing.

    Returns:
        ``[batch, n_heads]`` scores.
    """
    b, _, seq, _ = attn.shape
    members = members.to(attn.device)
    target = torch.zeros(b, seq, seq, dtype=torch.bool, device=attn.device)
    rows = torch.arange(b, device=attn.device)[:, None]
    target[rows, members[:, 1:], members[:, :-1]] = True
    target[:, :, 0] = False
    return mask_score(attn, target)


@dataclass(frozen=True)
class ProbeBatch:
    """Probe inputs: token ids and, for ``successor``, member positions."""

    input_ids: torch.Tensor  # [n, seq]
    members: torch.Tensor | None = None  # [n, m]


def _prefix(tokenizer: Any) -> list[int]:
    """Special tokens the tokenizer puts before a text (e.g. BOS), found by encoding ``"a"``."""
    with_special = list(tokenizer("a")["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    return with_special[: len(with_special) - len(plain)] if with_special[-len(plain):] == plain else []


def word_token_ids(tokenizer: Any) -> list[int]:
    """Ids of ordinary word-like tokens (ASCII letters, at least two), no special or added tokens."""
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    keep = []
    for index, token in enumerate(tokens):
        word = (token or "").lstrip("Ġ▁ ")
        if index not in special and len(word) >= 2 and word.isascii() and word.isalpha():
            keep.append(index)
    return keep


def repeated_random_tokens(tokenizer: Any, n: int, length: int = 20, seed: int = 0) -> ProbeBatch:
    """``n`` prompts ``[prefix] R R``: R is ``length`` distinct random word-like tokens.

    Raises:
        TaskError: the vocabulary has fewer than ``length`` word-like tokens.
    """
    pool = np.array(word_token_ids(tokenizer))
    if len(pool) < length:
        raise TaskError(f"the tokenizer has only {len(pool)} word-like tokens; use length <= {len(pool)}")
    rng = np.random.default_rng(seed)
    prefix = _prefix(tokenizer)
    rows = []
    for _ in range(n):
        body = rng.choice(pool, size=length, replace=False).tolist()
        rows.append(prefix + body + body)
    return ProbeBatch(torch.tensor(rows, dtype=torch.long))


def ordinal_sequences(tokenizer: Any, n: int, members: int = 6, seed: int = 0) -> ProbeBatch:
    """``n`` comma-separated runs of ``members`` consecutive items of an ordinal sequence.

    Only runs whose items are each one token (with their leading space) are used.

    Raises:
        TaskError: no run of that many single-token items exists for this tokenizer.
    """
    sequences = load_sequences()
    comma = single_token(tokenizer, ",")
    windows: list[list[int]] = []
    for items in sequences.values():
        ids = [single_token(tokenizer, f" {item}") for item in items]
        for start in range(len(ids) - members + 1):
            run = ids[start : start + members]
            if all(i is not None for i in run):
                windows.append(run)  # type: ignore[arg-type]
    if comma is None or not windows:
        raise TaskError(f"no ordinal run of {members} single-token items fits this tokenizer; try fewer members")
    rng = np.random.default_rng(seed)
    prefix = _prefix(tokenizer)
    rows, positions = [], []
    for choice in rng.integers(0, len(windows), size=n):
        ids = list(prefix)
        where = []
        for i, item in enumerate(windows[choice]):
            if i:
                ids.append(comma)
            where.append(len(ids))
            ids.append(item)
        rows.append(ids)
        positions.append(where)
    return ProbeBatch(torch.tensor(rows, dtype=torch.long), torch.tensor(positions, dtype=torch.long))


@dataclass(frozen=True)
class Probe:
    """A probe: its input generator, its scoring function and one line on what it measures."""

    name: str
    inputs: str  # key of INPUTS
    score: Callable[[torch.Tensor, ProbeBatch], torch.Tensor]
    description: str


INPUTS: dict[str, Callable[[Any, int, int], ProbeBatch]] = {
    "repeat": lambda tok, n, seed: repeated_random_tokens(tok, n, seed=seed),
    "sequence": lambda tok, n, seed: ordinal_sequences(tok, n, seed=seed),
}

PROBES: dict[str, Probe] = {
    p.name: p
    for p in (
        Probe("previous_token", "repeat", lambda a, b: previous_token_score(a),
              "Attention from each token to the one just before it."),
        Probe("induction", "repeat", lambda a, b: induction_score(a, b.input_ids),
              "Attention from a repeated token to the token after its earlier occurrence (copying a seen sequence)."),
        Probe("duplicate_token", "repeat", lambda a, b: duplicate_token_score(a, b.input_ids),
              "Attention from a token to earlier copies of the same token."),
        Probe("sink", "repeat", lambda a, b: sink_score(a),
              "Attention parked on the first position (BOS or first token: the attention sink)."),
        Probe("local_window", "repeat", lambda a, b: local_window_score(a),
              f"Attention to the {LOCAL_WINDOW} tokens before the query (a local window)."),
        Probe("successor", "sequence", lambda a, b: successor_score(a, b.members),  # type: ignore[arg-type]
              'Attention from an item of an ordinal list to the item before it (" Tuesday" -> " Monday").'),
    )
}


def probe_names() -> list[str]:
    """Names of the mechanistic probes."""
    return list(PROBES)


def _attentions(model: Any, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-layer ``[b, n_heads, q, k]`` attention weights of one eager forward pass."""
    out = model(input_ids=input_ids, output_attentions=True, use_cache=False)
    if not out.attentions:
        raise TaskError("the model returned no attention weights; it must support eager attention")
    return out.attentions


def run_probes(
    handle: Any, probes: Sequence[str] | None = None, n: int = 32, seed: int = 0, batch_size: int = 8
) -> pd.DataFrame:
    """Score every head of a model on the mechanistic probes.

    Attention weights need eager attention: it is switched on for this call only and the
    previous ``config._attn_implementation`` is restored afterwards, on error too.

    Args:
        handle: model handle with ``.model``, ``.tokenizer``, ``.device`` and ``.spec``.
        probes: probe names (default: all of :func:`probe_names`).
        n: prompts per probe.
        seed: seed of the prompts and of the bootstrap.
        batch_size: prompts per forward pass.

    Returns:
        One row per (probe, layer, head) with the columns of ``patterns.parquet``:
        ``model, probe, layer, head, head_id, score, ci_low, ci_high, n_prompts``.

    Raises:
        TaskError: an unknown probe name, ``n < 1``, or inputs that do not fit the tokenizer.
    """
    names = list(probes) if probes is not None else probe_names()
    unknown = [p for p in names if p not in PROBES]
    if unknown:
        raise TaskError(f"unknown probe {unknown[0]!r}; valid probes: {', '.join(PROBES)}")
    if n < 1:
        raise TaskError(f"n must be at least 1, got {n}")
    model = handle.model
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with eager_attention(model):
        with torch.no_grad():
            for group in dict.fromkeys(PROBES[name].inputs for name in names):
                batch = INPUTS[group](handle.tokenizer, n, seed)
                members = [name for name in names if PROBES[name].inputs == group]
                for start in range(0, n, batch_size):
                    part = ProbeBatch(
                        batch.input_ids[start : start + batch_size],
                        None if batch.members is None else batch.members[start : start + batch_size],
                    )
                    layers = [a.float().cpu() for a in _attentions(model, part.input_ids.to(handle.device))]
                    for name in members:
                        per_layer = [PROBES[name].score(a, part) for a in layers]
                        scores[name].append(torch.stack(per_layer, dim=1))  # [b, n_layers, n_heads]
    rows = []
    for name in names:
        values = torch.cat(scores[name]).numpy()  # [n, n_layers, n_heads]
        _, n_layers, n_heads = values.shape
        low, high = bootstrap_cis(values.reshape(n, -1), seed=seed)
        mean = values.mean(axis=0).reshape(-1)
        for flat in range(n_layers * n_heads):
            layer, head = divmod(flat, n_heads)
            rows.append({
                "model": str(handle.spec), "probe": name, "layer": layer, "head": head,
                "head_id": str(HeadId(layer, head)), "score": float(mean[flat]), "ci_low": float(low[flat]),
                "ci_high": float(high[flat]), "n_prompts": n,
            })
    return pd.DataFrame(rows, columns=PATTERN_COLUMNS)
