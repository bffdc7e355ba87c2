"""The held-out corpus: stdlib prose, a deterministic disjoint split, fixed-length chunks."""

from __future__ import annotations

import pytest
import torch

import cortexmap
from cortexmap.apply import corpus_info, corpus_text, token_chunks
from cortexmap.apply.corpus import topics
from tests.apply.chars import CharTokenizer


def test_splits_are_disjoint_prose_and_deterministic():
    train, heldout = topics("train"), topics("heldout")
    assert len(heldout) > 10 and len(train) > 3 * len(heldout) - 5
    assert not set(train) & set(heldout)
    assert corpus_text("heldout") == corpus_text("heldout")
    text = corpus_text("train")
    assert "statement" in text and not any(line.startswith(" ") for line in text.splitlines())
    info = corpus_info()
    assert info["heldout"]["sha256"] != info["train"]["sha256"] and info["heldout"]["chars"] > 20_000


def test_chunks_have_fixed_length_and_a_stable_prefix():
    tokenizer = CharTokenizer()
    few = token_chunks(tokenizer, "heldout", seq_len=64, n_chunks=3)
    many = token_chunks(tokenizer, "heldout", seq_len=64, n_chunks=10)
    assert few.ids.shape == (3, 64) and few.ids.dtype == torch.long and few.n_tokens == 192
    assert torch.equal(many.ids[:3], few.ids)
    stream = sum(len(text) for text in topics("heldout"))  # one id per character, topics concatenated
    assert few.n_available == stream // 64
    with pytest.raises(cortexmap.CortexmapError, match="holds"):
        token_chunks(tokenizer, "heldout", seq_len=64, n_chunks=few.n_available + 1)
    with pytest.raises(cortexmap.CortexmapError, match="unknown corpus split"):
        token_chunks(tokenizer, "test")
