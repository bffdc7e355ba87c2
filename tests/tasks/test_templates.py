"""Tests of cortexmap/tasks/templates.py: the YAML task format and its errors."""

from __future__ import annotations

import pytest

from cortexmap.errors import TaskError
from cortexmap.tasks.templates import Word, builtin_specs, generate_pairs, parse_specs

GOOD = """
lists:
  cities:
    fields: [country, city]
    rows: [[France, Paris], [Italy, Rome], [Spain, Madrid], [Germany, Berlin], [Russia, Moscow],
           [Japan, Tokyo], [China, Beijing], [Greece, Athens], [Egypt, Cairo], [Poland, Warsaw]]
tasks:
  demo:
    description: Capitals.
    vars: {x: cities, y: cities}
    prompt: "The capital of {x.country} is"
    corrupt: "The capital of {y.country} is"
    target: " {x.city}"
    foil: " {y.city}"
    cue: "{x.country}"
"""


def test_parse_and_generate(bpe_digits):
    spec = parse_specs(GOOD, "reasoning", "demo.yaml")["demo"]
    assert spec.level == "reasoning" and spec.has_corrupt and spec.version == "1"
    pairs, dropped = generate_pairs(spec, bpe_digits, 20, seed=0)
    assert len(pairs) == 20 and dropped == {}
    for pair in pairs:
        assert pair.prompt.startswith("The capital of ") and pair.target != pair.foil
        assert pair.cue == (pair.prompt.split()[-2],) and pair.variant == 0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("tasks: [", "not valid YAML"),
        ("tasks:\n  a: {prompt: x, target: y, foil: z}\n  a: {prompt: x, target: y, foil: z}\n", "duplicate key 'a'"),
        ("tasks:\n  a: {prompt: x, target: y, foil: z, colour: red}\n", "unknown keys"),
        ("tasks:\n  a: {prompt: x, target: y}\n", "without a string 'foil'"),
        ("tasks:\n  a: {vars: {x: nope}, prompt: x, target: y, foil: z}\n", "unknown list 'nope'"),
        ("tasks:\n  a: {compute: magic, prompt: x, target: y, foil: z}\n", "unknown compute 'magic'"),
        ("lists:\n  l: {fields: [a, b], rows: [[1]]}\n", "does not match its fields"),
        ("lists:\n  l: 3\n", "must be a list of words"),
        ("tasks:\n  a: {prompt: x, target: y, foil: z, cue: 3}\n", "cue that is not a template"),
        ("tasks:\n  a: {prompt: x, target: y, foil: z, cue: [x, 3]}\n", "cue that is not a template"),
        ("tasks:\n  a: {prompt: x, target: y, foil: z, cue: []}\n", "cue that is not a template"),
        ("tasks:\n  a: {prompt: x, target: y, foil: z, cue: ' '}\n", "cue that is not a template"),
    ],
)
def test_parse_errors(text, match):
    with pytest.raises(TaskError, match=match):
        parse_specs(text, "lexical", "bad.yaml")


def test_unknown_level_and_template_variable(bpe_digits):
    with pytest.raises(TaskError, match="unknown level"):
        parse_specs(GOOD, "poetry", "demo.yaml")
    spec = parse_specs(GOOD.replace("{x.city}", "{z.city}"), "lexical", "demo.yaml")["demo"]
    with pytest.raises(TaskError, match="unknown variable"):
        generate_pairs(spec, bpe_digits, 4, seed=0)


def test_word_cap_bare_last():
    assert Word("the Eiffel Tower").cap == "The Eiffel Tower"
    assert "{x.cap}".format(x=Word("paris")) == "Paris"
    assert Word("the Eiffel Tower").bare == "Eiffel Tower" and Word("The Louvre").bare == "Louvre"
    assert Word("Big Ben").bare == "Big Ben" and Word("theatre").bare == "theatre" and Word("the").bare == "the"
    assert Word("is interested").last == "interested" and Word("depends").last == "depends"


VARIANTS = """
lists:
  cities:
    fields: [country, city]
    rows: [[France, Paris], [Italy, Rome], [Spain, Madrid], [Germany, Berlin], [Russia, Moscow]]
tasks:
  demo:
    description: Capitals.
    vars: {x: cities, y: cities}
    target: " {x.city}"
    foil: " {y.city}"
    variants:
      - {prompt: "The capital of {x.country} is", corrupt: "The capital of {y.country} is", cue: "{x.country}"}
      - {prompt: "{x.country}'s capital is", corrupt: "{y.country}'s capital is", cue: ["{x.country}", capital]}
      - {prompt: "Its capital is", corrupt: "The capital is"}
"""


def test_pairs_record_their_variant_and_rendered_cues(bpe_digits):
    spec = parse_specs(VARIANTS, "knowledge", "demo.yaml")["demo"]
    pairs, _ = generate_pairs(spec, bpe_digits, 30, seed=0)
    assert {p.variant for p in pairs} == {0, 1, 2}
    for pair in pairs:
        country = {0: pair.prompt.split()[-2], 1: pair.prompt.split("'")[0]}.get(pair.variant)
        expected = {0: (country,), 1: (country, "capital"), 2: ()}[pair.variant]
        assert pair.cue == expected
        assert pair.prompt == {0: f"The capital of {country} is", 1: f"{country}'s capital is",
                               2: "Its capital is"}[pair.variant]


def test_a_cue_missing_from_its_prompt_is_an_error(bpe_digits):
    spec = parse_specs(GOOD.replace('cue: "{x.country}"', 'cue: "{y.country}"'), "knowledge", "demo.yaml")["demo"]
    with pytest.raises(TaskError, match=r"task 'demo' variant 0: cue '\w+' does not occur"):
        generate_pairs(spec, bpe_digits, 4, seed=0)


def test_builtin_specs_parse_and_cover_the_levels():
    specs = builtin_specs()
    assert len(specs) >= 20
    for spec in specs.values():
        assert spec.description and spec.variants
