"""Tests of cortexmap/tasks/alignment.py: which corrupt position stands for which clean position."""

from __future__ import annotations

from cortexmap.tasks.alignment import align


def test_equal_lengths_align_position_by_position():
    a = align([1, 2, 3, 4], [1, 9, 9, 4])
    assert a.ok and a.identity and [a.source(i) for i in range(6)] == list(range(6))


def test_different_lengths_align_the_shared_prefix_and_suffix_and_skip_the_differing_span():
    clean, corrupt = [0, 5, 6, 7, 8, 9], [0, 4, 8, 9]  # BOS, "X X X" vs "Y", " is here"
    a = align(clean, corrupt)
    assert (a.prefix, a.suffix, a.ok, a.identity) == (1, 2, True, False)
    assert [a.source(i) for i in range(6)] == [0, -1, -1, -1, 2, 3]
    assert [a.source(i) for i in (6, 7)] == [4, 5]  # teacher-forced answer tokens after both prompts


def test_the_suffix_never_overlaps_the_prefix():
    a = align([1, 2, 2, 3], [1, 2, 3])  # "1 2 | 2 3" vs "1 2 | 3": the shared ends overlap in the shorter one
    assert a.prefix + a.suffix <= 3 and a.ok
    assert [a.source(i) for i in range(4)] == [0, 1, -1, 2]


def test_prompts_of_different_lengths_that_end_differently_cannot_be_aligned():
    a = align([1, 2, 3], [1, 2, 4, 5])
    assert not a.ok and "do not end with the same token" in a.describe()
