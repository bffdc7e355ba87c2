"""Matched prompt sets for condition contrasts, used by the regulator-head analysis.

:func:`condition_sets` returns, per contrast, two lists of prompts of equal size whose i-th
entries are matched (same names, numbers and facts). Side ``a`` is the easy condition and
side ``b`` the **demanding** one. Convention fixed here: **the two prompts of every pair have the
same token length** for the tokenizer the sets are drawn for, so a contrast between the sides
never measures length (influence grows with the number of positions a head can write to):

* ``reasoning``: one-step (``3 + 4 =``, one comparison, one rule) vs multi-step problems over
  the same items (``3 + 4 + 2 - 1 =``, a chain of comparisons, two chained rules). The easy
  prompt is preceded by neutral sentences (the ``pads`` list, e.g. ``"It was late."``), as many
  as bring it to the demanding prompt's token length, so the question sits at the same position.
* ``ambiguity``: clear vs ambiguous or contradictory input (a repeated name vs a pronoun that
  fits two people; a repeated statement vs a contradicting one); only the critical word differs.
* ``length``: the same fact, question and four unrelated filler sentences, with the fillers
  before the fact (fact right before its question) vs between the fact and the question: the
  *distance* from fact to question varies at fixed total length.

A template marks the padded side with ``{pad}``; a drawn pair whose sides cannot be brought to
one length (no combination of at most three pads fits) is redrawn. Prompts come from
``data/conditions.yaml`` (same template format as the tasks); they carry no answers, since the
contrasts compare how heads behave, not what the model outputs.
"""

from __future__ import annotations

import itertools
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
    "reasoning": ('One-step vs multi-step problems over the same items ("3 + 4 =" vs "3 + 4 + 2 - 1 ="), '
                  "the one-step prompt led by neutral sentences to the same token length."),
    "ambiguity": "Clear vs ambiguous or contradictory input (a repeated name vs a pronoun that fits two people).",
    "length": "A fact right before its question vs four unrelated sentences in between, at the same total length.",
}


def condition_descriptions() -> dict[str, str]:
    """Each condition contrast's one-line description (empty for a contrast without one)."""
    return {name: DESCRIPTIONS.get(name, "") for name in condition_names()}


PAD = "{pad}"
MAX_PADS = 3


def _length(tokenizer: Any, text: str) -> int:
    return len(prompt_ids(tokenizer, text))


def _fill_pad(text: str, target: int, pads: tuple[Any, ...], tokenizer: Any, rng: random.Random) -> str | None:
    """``text`` with ``{pad}`` replaced by at most :data:`MAX_PADS` pads so it has ``target`` tokens (None: none fits)."""
    def filled(chosen: tuple[str, ...]) -> str:
        return text.replace(PAD, "".join(f"{p} " for p in chosen))

    if _length(tokenizer, filled(())) == target:
        return filled(())
    order = [str(p) for p in pads]
    rng.shuffle(order)
    bare = _length(tokenizer, filled(()))
    gain = {p: _length(tokenizer, filled((p,))) - bare for p in order}
    for size in range(1, MAX_PADS + 1):
        for chosen in itertools.combinations(order, size):
            # token counts of joined sentences are nearly additive; the exact length is checked
            if bare + sum(gain[p] for p in chosen) in (target - 1, target, target + 1):
                candidate = filled(chosen)
                if _length(tokenizer, candidate) == target:
                    return candidate
    return None


def _draw_pair(
    template: dict[str, Any], lists: dict[str, tuple[Any, ...]], rng: random.Random, name: str, tokenizer: Any
) -> tuple[str, str] | None:
    """One matched pair of equal token length (None when it cannot be matched)."""
    vars_ = tuple((str(k), str(v)) for k, v in template.get("vars", {}).items())
    values = {**draw(vars_, lists, rng, name), "pad": PAD}
    a, b = template["a"].format(**values), template["b"].format(**values)
    if PAD in a:
        a = _fill_pad(a, _length(tokenizer, b), lists["pads"], tokenizer, rng)
    elif PAD in b:
        b = _fill_pad(b, _length(tokenizer, a), lists["pads"], tokenizer, rng)
    if a is None or b is None or _length(tokenizer, a) != _length(tokenizer, b):
        return None
    return a, b


def condition_sets(tokenizer: Any, n: int = 32, seed: int = 0) -> dict[str, tuple[list[str], list[str]]]:
    """Matched easy / demanding prompt sets.

    Args:
        tokenizer: the tokenizer of the model the prompts are for; the two prompts of every
            pair have equal token length for it.
        n: prompts per side of each contrast.
        seed: sampling seed; the same seed gives the same prompts.

    Returns:
        Contrast name -> ``(condition_a, condition_b)``; ``condition_b`` is the demanding side
        and ``condition_a[i]`` is matched to ``condition_b[i]``, of the same token length.

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
            pair = _draw_pair(template, lists, rng, name, tokenizer)
            if pair is None or pair in seen or pair[0] == pair[1]:
                continue
            seen.add(pair)
            pairs.append(pair)
        if len(pairs) < n:
            raise TaskError(
                f"condition set {name!r} has only {len(pairs)} matched pairs for this tokenizer; "
                f"ask for n <= {len(pairs)}"
            )
        out[name] = ([a for a, _ in pairs], [b for _, b in pairs])
    return out
