"""Tests of cortexmap/tasks/conditions.py: matched easy / demanding prompt sets."""

from __future__ import annotations

import pytest

from cortexmap.errors import TaskError
from cortexmap.tasks import condition_names, condition_sets
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


def test_ambiguity_pairs_have_equal_length_and_length_pairs_differ(bpe):
    sets = condition_sets(bpe, n=16, seed=0)
    for a, b in zip(*sets["ambiguity"]):
        assert len(prompt_ids(bpe, a)) == len(prompt_ids(bpe, b))
    for a, b in zip(*sets["length"]):
        assert len(prompt_ids(bpe, b)) > 3 * len(prompt_ids(bpe, a)) // 2
        assert a.split(".")[0] == b.split(".")[0]  # same fact
        assert a.split("?")[-1] == b.split("?")[-1]  # same question tail
    for a, b in zip(*sets["reasoning"]):
        assert len(prompt_ids(bpe, b)) > len(prompt_ids(bpe, a))


def test_bad_n(bpe_digits):
    with pytest.raises(TaskError):
        condition_sets(bpe_digits, n=0)
