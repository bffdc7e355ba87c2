"""Held-out English text for pruning curves and healing, available offline on every Python.

Source: ``pydoc_data.topics`` from the CPython standard library, the Python Language Reference
sections that ``help("if")`` shows (Python Software Foundation, PSF License; written by the
CPython documentation authors, not by this project). It ships with every CPython install, so it
needs no download. We keep its prose: lines indented three or more spaces (code examples and
grammar rules) and underline rows are dropped, and hard-wrapped lines are joined into paragraphs.

Split: topics are sorted by name and every fourth one (index ``% 4 == 3``) is held out for
evaluation; the rest is the training text for healing. The text differs between Python versions,
so :func:`corpus_info` reports the Python version and a SHA-256 of each split for manifests.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from typing import Any

import torch

from cortexmap.errors import CortexmapError

SOURCE = "CPython pydoc_data.topics (Python Language Reference topics; PSF License)"
SPLITS = ("train", "heldout")
_UNDERLINE = re.compile(r"^[*=\-~^]+$")


def _prose(text: str) -> str:
    """Paragraphs of running text: no indented code or grammar blocks, hard wraps joined."""
    paragraphs, current = [], []
    for line in text.splitlines():
        if line.startswith("   ") or _UNDERLINE.match(line.strip()):
            continue
        if not line.strip():
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(line.strip())
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def topics(split: str = "heldout") -> list[str]:
    """The prose of each topic in ``split`` (``train`` or ``heldout``), in name order.

    Raises:
        CortexmapError: an unknown split, or a Python built without ``pydoc_data``.
    """
    if split not in SPLITS:
        raise CortexmapError(f"unknown corpus split {split!r}: use 'train' or 'heldout'")
    try:
        from pydoc_data.topics import topics as all_topics
    except ImportError:
        raise CortexmapError("this Python has no pydoc_data module; install a full CPython to get the corpus") from None
    names = sorted(all_topics)
    chosen = [n for i, n in enumerate(names) if (i % 4 == 3) == (split == "heldout")]
    return [_prose(all_topics[name]) for name in chosen]


def corpus_text(split: str = "heldout") -> str:
    """The whole ``split`` as one string, topics separated by blank lines."""
    return "\n\n".join(topics(split))


def corpus_info() -> dict[str, Any]:
    """Source, Python version and per-split size and SHA-256, for manifests."""
    info: dict[str, Any] = {"source": SOURCE, "python": sys.version.split()[0]}
    for split in SPLITS:
        text = corpus_text(split)
        info[split] = {"chars": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    return info


@dataclass(frozen=True)
class Chunks:
    """Fixed-length token chunks of one split.

    Attributes:
        ids: ``[n_chunks, seq_len]`` token ids.
        split: ``train`` or ``heldout``.
        n_available: how many chunks the split holds at this length (``ids`` may be fewer).
    """

    ids: torch.Tensor
    split: str
    n_available: int

    @property
    def n_tokens(self) -> int:
        return int(self.ids.numel())


def token_chunks(tokenizer: Any, split: str = "heldout", seq_len: int = 128, n_chunks: int | None = None) -> Chunks:
    """Tokenise ``split`` and cut the token stream into ``seq_len``-token chunks.

    Each topic is tokenised on its own (no special tokens) and the streams are concatenated; the
    tail shorter than ``seq_len`` is dropped. The first ``n_chunks`` chunks are returned, so a
    prefix of a longer request is the same text.

    Args:
        tokenizer: a Hugging Face tokenizer (callable on a string, returning ``input_ids``).
        split: ``train`` or ``heldout``.
        seq_len: tokens per chunk.
        n_chunks: how many chunks (default: all).

    Returns:
        :class:`Chunks`.

    Raises:
        CortexmapError: no tokenizer, or fewer than ``n_chunks`` chunks available.
    """
    if tokenizer is None:
        raise CortexmapError("token_chunks needs a tokenizer; load the model with cortexmap.load_model")
    stream: list[int] = []
    for text in topics(split):
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    available = len(stream) // seq_len
    wanted = available if n_chunks is None else int(n_chunks)
    if wanted > available or wanted < 1:
        raise CortexmapError(
            f"the {split} split holds {available} chunks of {seq_len} tokens, not {wanted}; ask for fewer or shorter chunks"
        )
    ids = torch.tensor(stream[: wanted * seq_len], dtype=torch.long).view(wanted, seq_len)
    return Chunks(ids, split, available)
