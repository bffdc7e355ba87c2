"""Tests of cortexmap/tasks/custom.py: user tasks from JSONL files."""

from __future__ import annotations

import json

import pytest

from cortexmap.errors import TaskError
from cortexmap.tasks import load_task_file
from cortexmap.tasks.core import Pair

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
            ("Russia", "Moscow"), ("Japan", "Tokyo"), ("China", "Beijing"), ("Greece", "Athens"),
            ("Egypt", "Cairo"), ("Poland", "Warsaw")]


def _lines(level: str | None = "reasoning") -> list[str]:
    out = []
    for (country, city), (other, foil) in zip(CAPITALS, CAPITALS[1:] + CAPITALS[:1]):
        obj = {"prompt": f"The capital of {country} is", "target": f" {city}", "foil": f" {foil}",
               "corrupt": f"The capital of {other} is"}
        if level:
            obj["level"] = level
        out.append(json.dumps(obj))
    return out


def _write(tmp_path, lines, name="capitals.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_loads_a_valid_file(tmp_path, bpe_digits):
    path = _write(tmp_path, _lines()[:5] + ["", "   "] + _lines()[5:])
    task = load_task_file(path, bpe_digits)
    assert task.name == "capitals" and task.level == "reasoning" and task.has_corrupt
    assert task.pairs[0] == Pair("The capital of France is", " Paris", " Rome", "The capital of Italy is")
    assert len(task.pairs) == 10 and task.dropped == {}
    assert len(task.version) == 12
    assert load_task_file(path, bpe_digits, name="mine").name == "mine"


def test_cue_and_variant_are_read_with_their_defaults(tmp_path, bpe_digits):
    lines = [json.loads(line) for line in _lines()]
    for i, obj in enumerate(lines):
        country = obj["prompt"].split()[-2]
        if i % 3 == 0:
            obj.update(cue=country, variant=1)
        elif i % 3 == 1:
            obj.update(cue=["capital", country], variant=None)
    task = load_task_file(_write(tmp_path, [json.dumps(obj) for obj in lines]), bpe_digits)
    assert [p.variant for p in task.pairs] == [1 if i % 3 == 0 else 0 for i in range(10)]
    assert task.pairs[0].cue == ("France",) and task.pairs[1].cue == ("capital", "Italy") and task.pairs[2].cue == ()
    assert task.pairs[0] == Pair("The capital of France is", " Paris", " Rome", "The capital of Italy is", 1, ("France",))


def test_level_defaults_to_custom_and_corrupt_is_optional(tmp_path, bpe_digits):
    lines = [json.dumps({k: v for k, v in json.loads(line).items() if k != "corrupt"}) for line in _lines(None)]
    task = load_task_file(_write(tmp_path, lines), bpe_digits)
    assert task.level == "custom" and not task.has_corrupt


def test_multi_token_answers_and_aligned_corrupt_prompts_of_another_length_are_kept(tmp_path, bpe_digits):
    longer = {"prompt": "The capital of Peru is", "target": " Limaqqq", "foil": " Paris",
              "corrupt": "The capital of old France is"}
    task = load_task_file(_write(tmp_path, _lines() + [json.dumps(longer)]), bpe_digits)
    assert len(task.pairs) == 11 and task.dropped == {} and task.metric == "logprob_diff"
    assert task.pairs[-1] == Pair(longer["prompt"], longer["target"], longer["foil"], longer["corrupt"])


def test_a_corrupt_prompt_that_cannot_be_aligned_names_its_line(tmp_path, bpe_digits):
    unaligned = {"prompt": "The capital of Peru is", "target": " Lima", "foil": " Paris",
                 "corrupt": "In France the old capital city"}
    path = _write(tmp_path, _lines()[:4] + [json.dumps(unaligned)] + _lines()[4:])
    with pytest.raises(TaskError) as err:
        load_task_file(path, bpe_digits)
    assert str(err.value).startswith(f"{path}:5: the corrupt prompt is ") and "do not end with the same token" in str(err.value)


def test_answer_sets_and_their_metric(tmp_path, bpe_gpt2):
    lines = []
    for yy in range(30, 40):
        lines.append(json.dumps({"prompt": f"The war lasted from the year 17{yy} to the year 17",
                                 "targets": [f"{y}" for y in range(yy + 1, 100)],
                                 "foils": [f"{y:02d}" for y in range(0, yy + 1)], "metric": "log_mass_diff"}))
    task = load_task_file(_write(tmp_path, lines), bpe_gpt2)
    assert task.metric == "log_mass_diff" and task.pairs[0].is_set
    assert task.pairs[0].targets[0] == "31" and len(task.pairs[0].foils) == 31
    default = [json.dumps({k: v for k, v in json.loads(line).items() if k != "metric"}) for line in lines]
    assert load_task_file(_write(tmp_path, default, "sets.jsonl"), bpe_gpt2).metric == "prob_diff"


def test_too_few_usable_pairs(tmp_path, bpe_digits):
    with pytest.raises(TaskError, match="'capitals' has 3 usable pairs"):
        load_task_file(_write(tmp_path, _lines()[:3]), bpe_digits)


BAD = {
    "not json": ('{"prompt": "x", ', "not valid JSON"),
    "array": ('["prompt", "target"]', "expected a JSON object, got list"),
    "missing": ('{"prompt": "The capital of Peru is", "target": " Lima"}', "missing required key 'foil'"),
    "empty": ('{"prompt": "The capital of Peru is", "target": " ", "foil": " Paris"}', "'target' is empty"),
    "not string": ('{"prompt": "The capital of Peru is", "target": 3, "foil": " Paris"}', "'target' must be a string"),
    "unknown key": ('{"prompt": "a", "target": " b", "foil": " c", "answer": "b"}', "unknown key 'answer'"),
    "unknown level": ('{"prompt": "a", "target": " b", "foil": " c", "level": "poetry"}', "unknown level 'poetry'"),
    "same answer": ('{"prompt": "a", "target": " b", "foil": " b"}', "target and foil are both"),
    "same corrupt": ('{"prompt": "a", "target": " b", "foil": " c", "corrupt": "a"}', "corrupt is the same"),
    "mixed level": ('{"prompt": "a", "target": " b", "foil": " c", "level": "lexical"}', "differs from 'reasoning'"),
    "cue not text": ('{"prompt": "a b", "target": " b", "foil": " c", "cue": 3}', "'cue' must be a string or a list"),
    "cue list": ('{"prompt": "a b", "target": " b", "foil": " c", "cue": ["a", 1]}', "'cue' must be a string or a list"),
    "cue dict": ('{"prompt": "a b", "target": " b", "foil": " c", "cue": {"a": 1}}', "'cue' must be a string or a list"),
    "cue empty": ('{"prompt": "a b", "target": " b", "foil": " c", "cue": ["a", " "]}', "'cue' holds an empty string"),
    "cue absent": ('{"prompt": "a b", "target": " b", "foil": " c", "cue": "Peru"}', "cue 'Peru' does not occur"),
    "variant text": ('{"prompt": "a", "target": " b", "foil": " c", "variant": "1"}', "'variant' must be an integer"),
    "variant float": ('{"prompt": "a", "target": " b", "foil": " c", "variant": 1.5}', "'variant' must be an integer"),
    "variant bool": ('{"prompt": "a", "target": " b", "foil": " c", "variant": true}', "'variant' must be an integer"),
    "variant negative": ('{"prompt": "a", "target": " b", "foil": " c", "variant": -1}', "'variant' is -1"),
    "pair and set": ('{"prompt": "a", "target": " b", "foil": " c", "targets": [" b"]}', "not both"),
    "set without foils": ('{"prompt": "a", "targets": [" b"]}', "missing required key 'foils'"),
    "set not a list": ('{"prompt": "a", "targets": " b", "foils": [" c"]}', "'targets' must be a non-empty list"),
    "set empty list": ('{"prompt": "a", "targets": [], "foils": [" c"]}', "'targets' must be a non-empty list"),
    "set empty answer": ('{"prompt": "a", "targets": [" b", " "], "foils": [" c"]}', "'targets' holds an empty"),
    "set repeats": ('{"prompt": "a", "targets": [" b", " b"], "foils": [" c"]}', "'targets' repeats an answer"),
    "set overlap": ('{"prompt": "a", "targets": [" b"], "foils": [" c", " b"]}', "' b' is both a target and a foil"),
    "metric for a pair": ('{"prompt": "a", "target": " b", "foil": " c", "metric": "prob_diff"}', "'metric' is for answer sets"),
    "unknown metric": ('{"prompt": "a", "targets": [" b"], "foils": [" c"], "metric": "f1"}', "unknown metric 'f1'"),
}


def test_a_file_holds_pairs_or_sets_and_one_metric(tmp_path, bpe_digits):
    one = '{"prompt": "a", "targets": [" b"], "foils": [" c"], "metric": "prob_diff"}'
    other = '{"prompt": "a", "targets": [" b"], "foils": [" c"], "metric": "log_mass_diff"}'
    pair = '{"prompt": "a", "target": " b", "foil": " c"}'
    with pytest.raises(TaskError, match=r"sets.jsonl:2: metric 'log_mass_diff' differs from 'prob_diff' on line 1"):
        load_task_file(_write(tmp_path, [one, other], "sets.jsonl"), bpe_digits)
    with pytest.raises(TaskError, match=r"mixed.jsonl:3: answers 'pairs' differs from 'answer sets' on line 1;"):
        load_task_file(_write(tmp_path, [one, one, pair], "mixed.jsonl"), bpe_digits)


@pytest.mark.parametrize("kind", list(BAD))
def test_malformed_line_names_path_and_line(tmp_path, bpe_digits, kind):
    line, reason = BAD[kind]
    lines = _lines()
    lines.insert(7, line)  # good lines before and after: nothing is returned on bad data
    path = _write(tmp_path, [""] + lines)  # a leading blank line still counts in the numbering
    with pytest.raises(TaskError) as err:
        load_task_file(path, bpe_digits)
    message = str(err.value)
    assert message.startswith(f"{path}:9: ") and reason in message


def test_missing_or_empty_file(tmp_path, bpe_digits):
    with pytest.raises(TaskError, match="does not exist"):
        load_task_file(tmp_path / "nope.jsonl", bpe_digits)
    with pytest.raises(TaskError, match="has no pairs"):
        load_task_file(_write(tmp_path, ["", " "]), bpe_digits)


def test_every_task_line_the_readme_shows_loads(tmp_path, bpe_gpt2):
    """The README's ```json examples are lines of valid task files."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    lines = [line for block in re.findall(r"^```json\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
             for line in block.splitlines() if line.strip()]
    assert len(lines) >= 4 and any('"targets"' in line for line in lines)
    for i, line in enumerate(lines):
        task = load_task_file(_write(tmp_path, [line], f"readme{i}.jsonl"), bpe_gpt2, min_pairs=1)
        assert len(task.pairs) == 1
