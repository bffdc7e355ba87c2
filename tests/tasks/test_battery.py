"""What the built-in tasks claim (data/*.yaml through templates.py): no copy shortcut, corrupt prompts
whose answer is the foil, cues the answer depends on, variants, and the knowledge level."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from cortexmap.tasks import LEVELS, build_task, builtin_task_names, task_level, tasks_for
from cortexmap.tasks.alignment import align
from cortexmap.tasks.core import Pair, prompt_ids
from cortexmap.tasks.templates import builtin_specs
from tests.tasks.battery_checks import copy_shortcut, cue_problem, matches_variant, words

NAMES = builtin_task_names()
N = 64


@pytest.fixture(scope="module")
def built(bpe):  # noqa: ANN001, ANN201
    """Every built-in task, 64 pairs, for the current test tokenizer."""
    return {name: build_task(name, bpe, n=N, seed=0) for name in NAMES}


def test_the_copy_check_catches_a_copyable_pair():
    # The old "very" comparative: the right answer is the one adjective in context.
    assert copy_shortcut(Pair("This box is small, and that box is very", " small", " smaller",
                              "This box is small, and that box is even")) == "prompt"
    # The old syllogism's corrupt prompt: its answer (the foil) is the one colour in context.
    assert copy_shortcut(Pair("All ducks are pink. Rex is a duck. So Rex is", " pink", " blue",
                              "All ducks are blue. Rex is a duck. So Rex is")) == "prompt"
    assert copy_shortcut(Pair("Mary likes apples. So", " Mary", " John", "John likes apples. So")) == "prompt"
    assert copy_shortcut(Pair("Mary and John met. John thanked", " Mary", " John",
                              "Mary and John met. Mary thanked")) is None
    assert copy_shortcut(Pair("The dog", " is", " are", "The dogs")) is None
    assert copy_shortcut(Pair("The dog", " is", " are", "The cats are here and the dogs")) == "corrupt"
    assert copy_shortcut(Pair("The dog", " is", " are", "The cat is here, the cats are here and the dogs")) is None


def test_the_cue_and_variant_checks_catch_bad_annotations(bpe_digits):
    pair = Pair("All ducks are pink. Rex is a cow. So Rex is", " pink", " blue", cue=("duck",))
    assert cue_problem(bpe_digits, pair, "duck") == "its last occurrence is part of a longer word"
    assert cue_problem(bpe_digits, pair, "goose") == "does not occur in the prompt"
    assert cue_problem(bpe_digits, pair, "cow") is None
    spec = builtin_specs()["comparative"]
    task = build_task("comparative", bpe_digits, n=8, seed=0)
    for right in task.pairs:
        wrong = replace(right, variant=1 - right.variant if right.variant < 2 else 5 - right.variant)
        assert matches_variant(right, spec.variants[right.variant])
        assert not matches_variant(wrong, spec.variants[wrong.variant])


@pytest.mark.parametrize("name", NAMES)
def test_no_answer_can_be_copied_from_the_context(built, name):
    for pair in built[name].pairs:
        assert copy_shortcut(pair) is None, (name, pair)


@pytest.mark.parametrize("name", NAMES)
def test_every_task_patches_from_aligned_corrupt_prompts(bpe, built, name):
    """Every corrupt prompt lines up with its prompt (:mod:`cortexmap.tasks.alignment`)."""
    assert builtin_specs()[name].has_corrupt
    task = built[name]
    assert task.has_corrupt and len(task.pairs) == N
    for pair in task.pairs:
        assert pair.corrupt != pair.prompt
        clean, corrupt = prompt_ids(bpe, pair.prompt), prompt_ids(bpe, pair.corrupt)
        assert align(clean, corrupt).ok


@pytest.mark.parametrize("name", NAMES)
def test_cues_occur_in_the_prompt_and_cue_positions_finds_them(bpe, built, name):
    for pair in built[name].pairs:
        assert pair.cue, (name, pair)  # every built-in task names the words its answer depends on
        for cue in pair.cue:
            assert cue_problem(bpe, pair, cue) is None, (name, pair, cue, cue_problem(bpe, pair, cue))


@pytest.mark.parametrize("name", NAMES)
def test_variant_indexes_the_template_each_pair_came_from(built, name):
    variants = builtin_specs()[name].variants
    used = Counter(pair.variant for pair in built[name].pairs)
    assert set(used) == set(range(len(variants))), used  # 64 pairs use every template
    for pair in built[name].pairs:
        assert matches_variant(pair, variants[pair.variant]), (name, pair)


def test_syllogism_states_a_rule_for_the_foil_in_both_orders(built):
    plural = {row.sg: row.pl for row in builtin_specs()["syllogism"].lists["kinds"]}
    orders = Counter()
    for pair in built["syllogism"].pairs:
        target, foil, kind = pair.target.strip(), pair.foil.strip(), pair.cue[0]
        *rules, fact, _ = pair.prompt.split(". ")
        *corrupt_rules, corrupt_fact, _ = pair.corrupt.split(". ")
        mine = [r for r in rules if r.split()[1] == plural[kind]]
        assert len(rules) == 2 and len(mine) == 1 and fact.endswith(f" is a {kind}"), pair
        other = rules[1 - rules.index(mine[0])]
        assert mine[0].endswith(f" {target}") and other.endswith(f" {foil}"), pair  # the foil is in context
        other_kind = corrupt_fact.rsplit(" ", 1)[1]
        assert corrupt_rules == rules and plural[other_kind] == other.split()[1], pair  # corrupt: the other kind
        orders[rules.index(mine[0])] += 1
    assert orders[0] > 10 and orders[1] > 10  # the right rule comes first and last alike


def test_two_hop_never_names_the_bridge_country(built):
    spec = builtin_specs()["two_hop"]
    countries = {row.country for rows in spec.lists.values() for row in rows if hasattr(row, "country")}
    assert {"Spain", "Portugal", "America"} <= countries
    for pair in built["two_hop"].pairs:
        assert not words(pair.prompt) & {c.lower() for c in countries}, pair
        assert not words(pair.corrupt) & {c.lower() for c in countries}, pair
        cue = pair.cue[0]
        tail = pair.prompt.rsplit(cue, 1)[1]
        assert pair.corrupt.endswith(tail) and cue not in pair.corrupt  # the first-hop entity is swapped


def test_two_hop_landmarks_are_outside_their_capital():
    rows = builtin_specs()["two_hop"].lists["landmarks_abroad"]
    capitals = {row.capital for row in rows}
    for row in rows:
        assert not words(row.name) & {c.lower() for c in capitals | {row.country}}, row


def test_knowledge_is_a_level_of_its_own():
    assert LEVELS == ("lexical", "syntactic", "semantic", "pragmatic", "knowledge", "reasoning", "custom")
    assert tasks_for("knowledge") == ["capitals", "landmarks"]
    assert task_level("capitals") == task_level("landmarks") == "knowledge"
    assert task_level("two_hop") == "reasoning"  # it composes facts
    assert tasks_for("knowledge,reasoning")[:2] == ["capitals", "landmarks"]  # battery order follows LEVELS
