"""Matched prompt sets for condition contrasts, used by the regulator-head analysis.

:func:`condition_sets` returns, per contrast, two lists of prompts of equal size whose i-th
entries are matched (same names, numbers and facts). Side ``a`` is the easy condition and
side ``b`` the **demanding** one:

* ``reasoning``: one-step (``3 + 4 =``, one comparison, one rule) vs multi-step problems
  over the same items (``3 + 4 + 2 - 1 =``, a chain of comparisons, two chained rules).
* ``ambiguity``: clear vs ambiguous or contradictory input (a repeated name vs a pronoun
  that fits two people; a repeated statement vs a contradicting one). The two sides of a
  pair have the same token length, so only the critical word differs.
* ``length``: the same fact and question, right after each other vs separated by six
  unrelated filler sentences.

Prompts come from ``data/conditions.yaml`` (same template format as the tasks); they carry
no answers, since the contrasts compare how heads behave, not what the model outputs.
"""

from __future__ import annotations

import random
from functools import lru_cache
from importlib import resources
from typing import Any

from cortexmap.errors import TaskError
from cortexmap.tasks.core import prompt_ids
from cortexmap.tasks.templates import draw, load_yaml, parse_list


@lru_cache(maxsize=1)
def _condition_data() -> tuple[dict[str, tuple[Any, ...]], dict[str, list[dict[str, Any]]]]:
    source = "conditions.yaml"
    doc = load_yaml((resources.files("cortexmap.tasks") / "data" / source).read_text(encoding="utf-8"), source)
    lists = {name: parse_list(name, raw, source) for name, raw in doc["lists"].items()}
    return lists, doc["sets"]


def condition_names() -> list[str]:
    """Names of the condition contrasts."""
    return list(_condition_data()[1])


# What each contrast varies, easy side first (listed by ``cortexmap tasks list``).
DESCRIPTIONS = {
    "reasoning": 'One-step vs multi-step problems over the same items ("3 + 4 =" vs "3 + 4 + 2 - 1 =").',
    "ambiguity": "Clear vs ambiguous or contradictory input (a repeated name vs a pronoun that fits two people).",
    "length": "A fact right before its question vs six unrelated sentences in between.",
}


def condition_descriptions() -> dict[str, str]:
    """Each condition contrast's one-line description (empty for a contrast without one)."""
    return {name: DESCRIPTIONS.get(name, "") for name in condition_names()}


def _draw_pair(
    template: dict[str, Any], lists: dict[str, tuple[Any, ...]], rng: random.Random, name: str
) -> tuple[str, str]:
    vars_ = tuple((str(k), str(v)) for k, v in template.get("vars", {}).items())
    values = draw(vars_, lists, rng, name)
    return template["a"].format(**values), template["b"].format(**values)


def condition_sets(tokenizer: Any, n: int = 32, seed: int = 0) -> dict[str, tuple[list[str], list[str]]]:
    """Matched easy / demanding prompt sets.

    Args:
        tokenizer: the tokenizer of the model the prompts are for; it decides which
            ``ambiguity`` pairs have equal token length.
        n: prompts per side of each contrast.
        seed: sampling seed; the same seed gives the same prompts.

    Returns:
        Contrast name -> ``(condition_a, condition_b)``; ``condition_b`` is the demanding side
        and ``condition_a[i]`` is matched to ``condition_b[i]``.

    Raises:
        TaskError: ``n < 1``, or fewer than ``n`` distinct pairs fit the tokenizer.
    """
    if n < 1:
        raise TaskError(f"n must be at least 1, got {n}")
    lists, sets = _condition_data()
    out: dict[str, tuple[list[str], list[str]]] = {}
    for name, templates in sets.items():
        rng = random.Random(f"condition:{name}:{seed}")
        pairs: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        for _ in range(100 * n):
            if len(pairs) >= n:
                break
            template = rng.choice(templates)
            pair = _draw_pair(template, lists, rng, name)
            if pair in seen or pair[0] == pair[1]:
                continue
            seen.add(pair)
            if template.get("same_length") and len(prompt_ids(tokenizer, pair[0])) != len(
                prompt_ids(tokenizer, pair[1])
            ):
                continue
            pairs.append(pair)
        if len(pairs) < n:
            raise TaskError(
                f"condition set {name!r} has only {len(pairs)} matched pairs for this tokenizer; "
                f"ask for n <= {len(pairs)}"
            )
        out[name] = ([a for a, _ in pairs], [b for _, b in pairs])
    return out
