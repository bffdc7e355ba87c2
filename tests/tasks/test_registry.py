"""Tests of the built-in battery (registry.py + templates.py + data/*.yaml) on BPE test tokenizers."""

from __future__ import annotations

from collections import Counter
from importlib import resources

import pytest
import yaml

from cortexmap.errors import TaskError
from cortexmap.tasks import LEVELS, build_task, builtin_task_names, list_tasks, task_level, tasks_for
from cortexmap.tasks.alignment import align
from cortexmap.tasks.core import answer_ids, prompt_ids, single_token
from tests.tasks.conftest import make_bpe_tokenizer
from cortexmap.tasks.registry import list_battery

NAMES = builtin_task_names()
# The battery as the README documents it: level -> tasks, in battery order.
DOCUMENTED = {
    "lexical": ["article_agreement", "plural_morphology", "past_tense", "number_format", "comparative"],
    "syntactic": ["subject_verb_agreement", "sva_across_pp", "sva_across_relative_clause", "verb_preposition",
                  "reflexive_agreement"],
    "semantic": ["antonyms", "hypernyms", "selectional_restriction", "word_sense"],
    "pragmatic": ["ioi", "pronoun_gender", "entity_tracking", "emotion_inference"],
    "knowledge": ["capitals", "landmarks"],
    "reasoning": ["greater_than", "arithmetic", "sequence_continuation", "syllogism", "two_hop"],
}
DOCUMENTED_PROBES = ["previous_token", "induction", "duplicate_token", "sink", "local_window", "successor"]


def _raw_yaml(name: str) -> dict:
    """A task data file as plain YAML, read without the template engine."""
    return yaml.safe_load((resources.files("cortexmap.tasks") / "data" / name).read_text(encoding="utf-8"))


def test_every_level_has_at_least_two_tasks():
    counts = Counter(task_level(name) for name in NAMES)
    for level in LEVELS:
        if level != "custom":
            assert counts[level] >= 2, level
    assert counts["custom"] == 0


@pytest.mark.parametrize("name", NAMES)
def test_builtin_task_is_deterministic_and_fits(bpe, name):
    task = build_task(name, bpe, n=16, seed=0)
    assert task.name == name and task.level == task_level(name) and task.description
    assert len(task.pairs) == 16 and len(set(task.pairs)) == 16
    assert build_task(name, bpe, n=16, seed=0).pairs == task.pairs
    assert build_task(name, bpe, n=16, seed=1).pairs != task.pairs
    assert task.has_corrupt
    for pair in task.pairs:
        assert not set(pair.targets) & set(pair.foils)
        assert all(answer_ids(bpe, a) for a in pair.targets + pair.foils)
        assert pair.corrupt != pair.prompt
        assert align(prompt_ids(bpe, pair.prompt), prompt_ids(bpe, pair.corrupt)).ok


def test_larger_n_extends_the_same_stream(bpe_digits):
    small = build_task("capitals", bpe_digits, n=8, seed=3)
    large = build_task("capitals", bpe_digits, n=24, seed=3)
    assert large.pairs[:8] == small.pairs


def test_swap_draws_targets_from_both_lists(bpe_digits):
    task = build_task("article_agreement", bpe_digits, n=48, seed=0)
    endings = Counter(p.prompt.split()[-1] for p in task.pairs)
    assert endings["a"] > 5 and endings["an"] > 5


def test_differ_keeps_verbs_apart(bpe_digits):
    for pair in build_task("selectional_restriction", bpe_digits, n=32).pairs:
        assert pair.prompt.split()[-2] != pair.corrupt.split()[-2]


def test_greater_than_answers_are_the_later_and_the_earlier_years(bpe):
    task = build_task("greater_than", bpe, n=32)
    assert task.metric == "prob_diff"
    for pair in task.pairs:
        start = next(w for w in pair.prompt.split() if len(w) == 4 and w.isdigit())
        century, yy = start[:2], int(start[2:])
        later, earlier = [int(t) for t in pair.targets], [int(f) for f in pair.foils]
        if len(pair.targets[0]) == 1:  # one digit per token: the tens digit of the end year
            assert later == list(range(yy // 10 + 1, 10)) and earlier == list(range(0, yy // 10))
        else:  # Hanna et al.'s sets: every later year, every year up to the start (the century left out)
            assert later == list(range(yy + 1, 100))
            assert earlier == [y for y in range(0, yy + 1) if y != int(century)]
        assert " started " in pair.prompt or " began " in pair.prompt


def test_arithmetic_targets_the_sum_against_every_other_digit_and_corrupt_sums_to_another(bpe):
    task = build_task("arithmetic", bpe, n=32)
    assert task.metric == "prob_diff"
    for pair in task.pairs:
        def total(text: str) -> int:
            words = text.replace("?", " ").split()
            i = max(j for j, w in enumerate(words) if w in ("+", "plus"))  # the last sum, after any example
            return int(words[i - 1]) + int(words[i + 1])

        assert [int(t) for t in pair.targets] == [total(pair.prompt)]
        assert sorted(int(f) for f in pair.foils) == [d for d in range(10) if d != total(pair.prompt)]
        assert abs(total(pair.corrupt) - total(pair.prompt)) == 1


def test_ioi_corrupt_repeats_the_other_name(bpe_digits):
    for pair in build_task("ioi", bpe_digits, n=16).pairs:
        a, b = pair.target.strip(), pair.foil.strip()
        assert pair.prompt.count(b) == 2 and pair.prompt.count(a) == 1
        assert pair.corrupt.count(a) == 2 and pair.corrupt.count(b) == 1


def test_multi_token_answers_are_kept_and_scored_by_log_probability():
    """A byte-level vocabulary spells every city in several tokens: the pairs stay, under logprob_diff."""
    tiny_vocab = _char_level()
    task = build_task("capitals", tiny_vocab, n=16)
    assert len(task.pairs) == 16 and task.dropped == {} and task.metric == "logprob_diff"
    assert all(single_token(tiny_vocab, p.target) is None for p in task.pairs)
    assert build_task("capitals", make_bpe_tokenizer(True, True), n=16).metric == "logit_diff"


def _char_level():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=260, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(["abc"], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_build_task_rejects_bad_arguments(bpe_digits):
    with pytest.raises(TaskError, match="unknown task 'nope'; valid tasks: article_agreement"):
        build_task("nope", bpe_digits)
    with pytest.raises(TaskError, match="n must be at least 1"):
        build_task("capitals", bpe_digits, n=0)
    assert len(build_task("capitals", bpe_digits, n=3).pairs) == 3  # below the minimum when asked for


def test_tasks_for_expands_names_levels_and_all():
    assert tasks_for("capitals") == ["capitals"]
    assert tasks_for("all") == NAMES
    syntactic = tasks_for("syntactic")
    assert syntactic and all(task_level(n) == "syntactic" for n in syntactic)
    combo = tasks_for("ioi, lexical,capitals,ioi")
    assert combo == [n for n in NAMES if n in set(tasks_for("lexical")) | {"ioi", "capitals"}]
    assert tasks_for(["capitals", "ioi"]) == ["ioi", "capitals"]  # battery order


@pytest.mark.parametrize("spec", ["nope", "capitals,nope", ""])
def test_tasks_for_rejects_unknown(spec):
    with pytest.raises(TaskError, match="task"):
        tasks_for(spec)


def test_unknown_name_lists_levels_and_tasks():
    with pytest.raises(TaskError) as err:
        tasks_for("lexicall")
    assert "lexical" in str(err.value) and "capitals" in str(err.value)
    with pytest.raises(TaskError):
        task_level("lexical")


def test_list_tasks_table():
    table = list_tasks()
    assert list(table.columns) == ["name", "level", "description", "has_corrupt", "version", "answers"]
    assert list(zip(table["name"], table["level"])) == [(t, level) for level, ts in DOCUMENTED.items() for t in ts]
    for level, names in DOCUMENTED.items():  # each row says what its YAML entry says
        raw = _raw_yaml(f"{level}.yaml")["tasks"]
        assert list(raw) == names
        for name in names:
            row = table[table["name"] == name].iloc[0]
            variants = raw[name].get("variants") or [{}]
            assert row["description"] == raw[name]["description"].strip() != ""
            assert row["version"] == str(raw[name].get("version", "1"))
            assert row["has_corrupt"] == all("corrupt" in raw[name] or "corrupt" in v for v in variants)
            assert row["answers"] == ("set" if "targets" in raw[name] else "pair")
    assert table["has_corrupt"].all()  # every built-in task can be patched
    assert set(table.loc[table["answers"] == "set", "name"]) == {"greater_than", "arithmetic"}


def test_list_battery_has_every_task_probe_and_condition_set_with_a_description():
    table = list_battery()
    assert list(table.columns) == ["kind", "name", "level", "description"]
    tasks = table[table["kind"] == "task"]
    assert list(zip(tasks["name"], tasks["level"])) == [(t, level) for level, ts in DOCUMENTED.items() for t in ts]
    assert table[table["kind"] == "probe"]["name"].tolist() == DOCUMENTED_PROBES
    assert table[table["kind"] == "condition"]["name"].tolist() == list(_raw_yaml("conditions.yaml")["sets"])
    assert len(table) == len(NAMES) + len(DOCUMENTED_PROBES) + 3
    for row in table.itertuples():
        assert row.description.strip() and "\n" not in row.description, row.name
    assert (table[table["kind"] != "task"]["level"] == "").all()
