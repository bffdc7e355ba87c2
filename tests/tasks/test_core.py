"""Tests of cortexmap/tasks/core.py: pair checks, space folding, cue positions, equal-length batches, the metric."""

from __future__ import annotations

import pytest
import torch

from cortexmap.errors import TaskError
from cortexmap.report.theme import LEVEL_ORDER
from cortexmap.tasks.core import (
    DROP_FOIL, DROP_LENGTH, DROP_SAME, DROP_TARGET, DROP_UNALIGNED, LEVEL_DESCRIPTIONS, LEVELS, Pair, Task, check_pair,
    cue_positions, encode_task, logit_diff, prompt_ids, require_pairs,
)
from cortexmap.tasks.registry import build_task, builtin_task_names
from tests.tasks.battery_checks import NoOffsets


def test_check_pair_accepts_single_token_answers(bpe):
    pair = Pair("The capital of France is", " Paris", " Rome", "The capital of Italy is")
    checked, reason = check_pair(pair, bpe)
    assert reason is None and checked == pair


def test_check_pair_folds_a_separate_space_token(bpe_digits, bpe_gpt2):
    pair = Pair("3 + 4 =", " 7", " 8", "3 + 5 =", variant=2, cue=("3", "4"))
    folded, reason = check_pair(pair, bpe_digits)
    assert reason is None
    assert folded == Pair("3 + 4 = ", "7", "8", "3 + 5 = ", variant=2, cue=("3", "4"))  # variant and cue kept
    # GPT-2 style tokenizers have a " 7" token: nothing to fold.
    same, reason = check_pair(pair, bpe_gpt2)
    assert reason is None and same == pair


@pytest.mark.parametrize(
    ("pair", "reason"),
    [
        (Pair("The capital of France is", " Paris", " Paris"), DROP_SAME),
        (Pair("The capital of France is", (" Paris", " Lyon"), (" Rome", " Lyon")), DROP_SAME),
        (Pair("The capital of France is", " Paris", " Rome", "In Italy the old capital city"), DROP_UNALIGNED),
    ],
)
def test_check_pair_drop_reasons(bpe, pair, reason):
    assert check_pair(pair, bpe) == (None, reason)


@pytest.mark.parametrize(
    ("pair", "reason"),
    [
        (Pair("The capital of France is", " Parisxyzzy", " Rome"), DROP_TARGET),
        (Pair("The capital of France is", " Paris", " Romexyzzy"), DROP_FOIL),
        (Pair("The capital of France is", " Paris", " Rome", "The capital of the old Italy is"), DROP_LENGTH),
    ],
)
def test_what_one_token_checks_drop_is_kept_otherwise(bpe, pair, reason):
    """Multi-token answers and aligned corrupt prompts of another length are usable; circuits still refuse them."""
    assert check_pair(pair, bpe, one_token=True) == (None, reason)
    assert check_pair(pair, bpe) == (pair, None)


def test_check_pair_folds_the_space_of_an_answer_set(bpe_digits):
    pair = Pair("3 + 4 =", (" 7",), (" 6", " 8"), "3 + 5 =")
    assert check_pair(pair, bpe_digits) == (Pair("3 + 4 = ", ("7",), ("6", "8"), "3 + 5 = "), None)


def test_require_pairs_names_task_and_counts():
    with pytest.raises(TaskError, match=r"'demo' has 2 usable pairs.*corrupt_length_mismatch=5"):
        require_pairs("demo", [Pair("a", " b", " c")] * 2, {"corrupt_length_mismatch": 5})


def _task(pairs):
    return Task("demo", "custom", "", pairs, {})


def test_encode_task_groups_by_length_without_padding(bpe_digits):
    pairs = [
        Pair("The capital of France is", " Paris", " Rome", "The capital of Italy is"),
        Pair("Paris is", " big", " small", "Rome is"),
        Pair("The capital of Spain is", " Madrid", " Paris", "The capital of France is"),
        Pair("Rome is", " old", " new", None),
    ]
    batches = encode_task(_task(pairs), bpe_digits)
    assert sorted(i for b in batches for i in b.indices) == [0, 1, 2, 3]
    for batch in batches:
        for row, index in enumerate(batch.indices):
            pair = pairs[index]
            assert batch.input_ids[row].tolist() == bpe_digits(pair.prompt)["input_ids"]  # BOS included
            assert batch.input_ids[row, 0].item() == bpe_digits.bos_token_id
            assert batch.target_ids[row].item() == bpe_digits(pair.target, add_special_tokens=False)["input_ids"][0]
            assert batch.foil_ids[row].item() == bpe_digits(pair.foil, add_special_tokens=False)["input_ids"][0]
            if pair.corrupt is None:
                assert batch.corrupt_ids is None
            else:
                assert batch.corrupt_ids[row].tolist() == bpe_digits(pair.corrupt)["input_ids"]
        assert batch.input_ids.dtype == torch.long and batch.input_ids.ndim == 2
    by_index = {i: b for b in batches for i in b.indices}
    assert by_index[0] is by_index[2]  # same length, both with corrupt prompts
    assert by_index[1] is not by_index[3]  # same length, but only one has a corrupt prompt


def test_encode_task_max_batch_splits(bpe_digits):
    pairs = [Pair(f"The capital of {c} is", " Paris", " Rome") for c in ["France", "Spain", "Italy"]]
    batches = encode_task(_task(pairs), bpe_digits, max_batch=2)
    assert [len(b) for b in batches] == [2, 1]
    with pytest.raises(TaskError):
        encode_task(_task(pairs), bpe_digits, max_batch=0)


def test_encode_task_refuses_a_task_for_another_tokenizer(bpe_digits, bpe_gpt2):
    task = _task([Pair("3 + 4 =", " 7", " 8")])  # fits GPT-2 style merges only
    encode_task(task, bpe_gpt2)
    with pytest.raises(TaskError, match="rebuild the task"):
        encode_task(task, bpe_digits)


def test_logit_diff_picks_target_minus_foil():
    logits = torch.tensor([[0.0, 1.0, 5.0], [2.0, -1.0, 0.5]])
    out = logit_diff(logits, torch.tensor([2, 0]), torch.tensor([1, 1]))
    assert torch.allclose(out, torch.tensor([4.0, 3.0]))


def test_task_has_corrupt():
    assert _task([Pair("a", " b", " c", "d")]).has_corrupt
    assert not _task([Pair("a", " b", " c", "d"), Pair("a", " b", " c")]).has_corrupt
    assert not _task([]).has_corrupt


def test_pair_defaults_and_levels():
    pair = Pair("a", " b", " c")
    assert pair.variant == 0 and pair.cue == () and pair.corrupt is None
    assert LEVELS.index("pragmatic") < LEVELS.index("knowledge") < LEVELS.index("reasoning")
    assert list(LEVEL_DESCRIPTIONS) == list(LEVELS) and all(LEVEL_DESCRIPTIONS.values())
    assert LEVEL_ORDER == LEVELS  # the report's torch-free copy: every level keeps a colour


@pytest.fixture(scope="module")
def bos_eos(bpe_digits):  # noqa: ANN001, ANN201
    """The digit-splitting test tokenizer, adding BOS and EOS around every text."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(bpe_digits.backend_tokenizer.to_str())
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def _expected(tokenizer, prompt: str, pieces: list[str]) -> list[int]:  # noqa: ANN001
    """Positions found by reading the token strings: the run of tokens that decodes to ``pieces``."""
    ids = prompt_ids(tokenizer, prompt)
    text = [tokenizer.decode([i]) for i in ids]
    for start in range(len(ids)):
        if text[start : start + len(pieces)] == pieces:
            last = start
    return list(range(last, last + len(pieces)))


@pytest.mark.parametrize("wrap", [False, True], ids=["offsets", "prefixes"])
@pytest.mark.parametrize("name", ["bpe_digits", "bpe_gpt2", "bos_eos"])
def test_cue_positions_on_known_prompts(request, name, wrap):  # noqa: ANN001
    tok = request.getfixturevalue(name)
    use = NoOffsets(tok) if wrap else tok
    bos = 1 if name != "bpe_gpt2" else 0
    prompt = "The capital of France is"
    assert cue_positions(use, prompt, "France") == _expected(tok, prompt, [" France"]) == [bos + 3]
    assert cue_positions(use, prompt, "The") == [bos]  # the first word: right after BOS
    assert cue_positions(use, prompt, "is") == [bos + 4]  # the last word; EOS is never a cue token
    prompt = "The dogs near the dog are"
    assert cue_positions(use, prompt, "dog") == _expected(tok, prompt, [" dog"])  # the last occurrence
    assert cue_positions(use, "The dogs", "dog") == _expected(tok, "The dogs", [" dogs"])  # a cut token counts
    prompt = "Every day we walk. Last week we"
    assert cue_positions(use, prompt, "Last week") == _expected(tok, prompt, [" Last", " week"])
    assert cue_positions(use, prompt, "Monday") == []
    with pytest.raises(TaskError, match="cue is empty"):
        cue_positions(use, prompt, "")


def test_cue_positions_splits_digits_like_the_tokenizer(bpe_digits, bpe_gpt2):
    prompt = "The war started in the year 1745 and ended in the year 17"
    start = len(prompt_ids(bpe_digits, "The war started in the year 17"))
    assert cue_positions(bpe_digits, prompt, "45") == [start, start + 1] == cue_positions(NoOffsets(bpe_digits), prompt, "45")
    whole = cue_positions(bpe_gpt2, prompt, "1745")
    assert bpe_gpt2.decode(prompt_ids(bpe_gpt2, prompt)[whole[0] : whole[-1] + 1]).strip() == "1745"


@pytest.mark.parametrize("name", ["bpe_digits", "bpe_gpt2", "bos_eos"])
def test_cue_positions_fallback_agrees_with_offsets_on_the_battery(request, name):  # noqa: ANN001
    tok = request.getfixturevalue(name)
    slow = NoOffsets(tok)
    checked = 0
    for task in builtin_task_names():
        for pair in build_task(task, tok, n=16, seed=0, min_pairs=0).pairs:  # EOS stops space folding
            for cue in pair.cue:
                assert cue_positions(tok, pair.prompt, cue) == cue_positions(slow, pair.prompt, cue), (task, pair, cue)
                checked += 1
    assert checked > 8 * len(builtin_task_names())
