"""Slow tests of the task battery on the bundled models' tokenizers (SmolLM2, Gemma-3) and on SmolLM2 itself:
every task builds 64 pairs with no copy shortcut, cues that both cue_positions paths find alike, every variant used."""

from __future__ import annotations

import pytest

from cortexmap.tasks import MIN_PAIRS, build_task, builtin_task_names, check_tasks, condition_sets, run_probes
from cortexmap.tasks.alignment import align
from cortexmap.tasks.core import answer_ids, cue_positions, prompt_ids, single_token
from cortexmap.tasks.probes import ordinal_sequences, repeated_random_tokens
from cortexmap.tasks.templates import builtin_specs
from tests.tasks.battery_checks import NoOffsets, copy_shortcut, cue_problem, matches_variant

pytestmark = pytest.mark.slow


def test_every_builtin_task_fits_the_bundled_tokenizer(bundled_tokenizer):
    tok = bundled_tokenizer
    for name in builtin_task_names():
        task = build_task(name, tok, n=64, seed=0)
        assert len(task.pairs) == 64, (name, task.dropped)
        assert build_task(name, tok, n=64, seed=0).pairs == task.pairs
        assert build_task(name, tok, n=64, seed=1).pairs != task.pairs
        variants = builtin_specs()[name].variants
        assert {pair.variant for pair in task.pairs} == set(range(len(variants))), name
        for pair in task.pairs:
            assert all(answer_ids(tok, a) for a in pair.targets + pair.foils)
            assert not set(pair.targets) & set(pair.foils)
            assert align(prompt_ids(tok, pair.prompt), prompt_ids(tok, pair.corrupt)).ok, (name, pair)
            assert copy_shortcut(pair) is None, (name, pair)
            assert matches_variant(pair, variants[pair.variant]), (name, pair)
            assert pair.cue, (name, pair)
            for cue in pair.cue:
                assert cue_problem(tok, pair, cue) is None, (name, pair, cue, cue_problem(tok, pair, cue))
                assert cue_positions(NoOffsets(tok), pair.prompt, cue) == cue_positions(tok, pair.prompt, cue)


def test_the_knowledge_tasks_keep_their_multi_token_cities(bundled_tokenizer):
    """Landmarks and capitals draw no pair they used to drop ("New York", "San Francisco", names of other lengths)."""
    tok = bundled_tokenizer
    for name in ("landmarks", "capitals"):
        task = build_task(name, tok, n=64, seed=0)
        assert len(task.pairs) == 64 and task.dropped == {}, (name, task.dropped)
    cities = {a for p in build_task("landmarks", tok, n=200, seed=0, min_pairs=0).pairs for a in p.targets + p.foils}
    assert {" New York", " San Francisco"} <= cities
    assert any(single_token(tok, a) is None for a in cities)


def test_probe_inputs_and_conditions_fit_the_bundled_tokenizer(bundled_tokenizer):
    assert repeated_random_tokens(bundled_tokenizer, n=4).input_ids.shape[0] == 4
    assert ordinal_sequences(bundled_tokenizer, n=4).members.shape == (4, 6)
    sets = condition_sets(bundled_tokenizer, n=32)
    assert all(len(a) == len(b) == 32 for a, b in sets.values())


def test_smollm2_does_most_builtin_tasks(smollm2):
    table = check_tasks(smollm2, "all", n=32, seed=0)
    assert len(table) == len(builtin_task_names())
    assert (table["usable"] >= MIN_PAIRS).all() and (table["error"] == "").all()
    # A smoke check of the battery's design, not a golden number: most tasks are learnable.
    assert table["above_chance"].mean() >= 0.5


def test_smollm2_has_induction_heads(smollm2):
    before = smollm2.model.config._attn_implementation
    table = run_probes(smollm2, probes=["induction"], n=8, seed=0)
    assert smollm2.model.config._attn_implementation == before
    assert table["score"].max() > 0.5
