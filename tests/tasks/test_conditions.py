"""Tests of cortexmap/tasks/conditions.py: matched easy / demanding prompt sets of equal token length."""

from __future__ import annotations

import re

import pytest

from cortexmap.errors import TaskError
from cortexmap.tasks import condition_names, condition_sets
from cortexmap.tasks.conditions import _condition_data
from cortexmap.tasks.core import prompt_ids


def test_sets_are_matched_seeded_and_sized(bpe):
    sets = condition_sets(bpe, n=12, seed=0)
    assert set(sets) == set(condition_names()) == {"reasoning", "ambiguity", "length"}
    for easy, hard in sets.values():
        assert len(easy) == len(hard) == 12
        assert all(a != b for a, b in zip(easy, hard))
        assert len(set(zip(easy, hard))) == 12
    assert condition_sets(bpe, n=12, seed=0) == sets
    assert condition_sets(bpe, n=12, seed=1) != sets


def _assert_matched_lengths(tokenizer, n: int) -> None:  # noqa: ANN001
    sets = condition_sets(tokenizer, n=n, seed=0)
    for name, (easy, hard) in sets.items():
        for a, b in zip(easy, hard):
            assert len(prompt_ids(tokenizer, a)) == len(prompt_ids(tokenizer, b)), (name, a, b)


def test_every_pair_has_equal_token_length(bpe):
    _assert_matched_lengths(bpe, 32)


def test_reasoning_pads_the_easy_prompt_with_neutral_sentences_only(bpe):
    pads = [str(p) for p in _condition_data()[0]["pads"]]
    easy, hard = condition_sets(bpe, n=24, seed=0)["reasoning"]
    padded = 0
    for a, b in zip(easy, hard):
        lead = a
        while True:  # strip the leading pads; what remains is the one-step problem
            first = next((p for p in pads if lead.startswith(p + " ")), None)
            if first is None:
                break
            lead = lead[len(first) + 1:]
            padded += 1
        # the easy problem's words are the demanding problem's first words (same items, fewer steps)
        assert b.startswith(re.split(r"[.,=]", lead)[0].rstrip()), (lead, b)
    assert padded > 0


def test_length_moves_the_same_fillers_between_fact_and_question(bpe):
    easy, hard = condition_sets(bpe, n=16, seed=0)["length"]
    fillers = [str(f) for f in _condition_data()[0]["fillers"]]
    for a, b in zip(easy, hard):
        question = a[a.index("Wh"):]
        assert b.endswith(question)  # same question
        fact = b.split(". ")[0] + "."
        assert (fact + " " + question) in a  # short: the fact right before its question
        assert not b.startswith(fact + " " + question[:5])
        used_a = sorted(f for f in fillers if f in a)
        assert used_a == sorted(f for f in fillers if f in b) and len(used_a) >= 1
        between = b[len(fact):b.index(question)]
        assert len(prompt_ids(bpe, between)) >= 4 * 5  # long: four sentences between fact and question


def test_bad_n(bpe_digits):
    with pytest.raises(TaskError):
        condition_sets(bpe_digits, n=0)


@pytest.mark.slow
def test_every_pair_has_equal_token_length_for_smollm2():
    from cortexmap.models import load_tokenizer

    _assert_matched_lengths(load_tokenizer("smollm2-135m"), 32)
