"""Template engine for the built-in tasks: YAML word lists and prompt templates -> pairs.

Each ``tasks/data/<level>.yaml`` file holds ``lists`` and ``tasks``. A list is either plain
words (``names: [Mary, John]``) or rows with named fields::

    capitals:
      fields: [country, city]
      rows:
        - [France, Paris]

A task has a ``description``, optional ``version``, and one or more ``variants`` (keys given
at task level are defaults for every variant):

* ``vars``: variable -> list name. Variables drawn from the same list are distinct.
* ``prompt``, ``corrupt`` (optional), ``target``, ``foil``: :meth:`str.format` templates over
  the variables. An answer set gives ``targets`` and ``foils`` instead, each a list of templates;
  a template naming a list-valued computed variable renders once per item (``foils: [" {others}"]``
  with ``others`` = ``["1", "2"]`` gives ``[" 1", " 2"]``). A set task may name its ``metric``
  (``prob_diff``, the default, or ``log_mass_diff``; :mod:`cortexmap.tasks.metrics`). A plain
  word is ``{x}``, a row field ``{x.city}``; ``.cap`` capitalises (``{x.cap}``, ``{x.city.cap}``),
  ``.bare`` drops a leading "the " (``{x.name.bare}``: "Eiffel Tower"), ``.last`` keeps the last
  word (``{x.phrase.last}``: "interested").
* ``cue`` (optional): a template, or a list of templates, naming the words of the prompt the
  answer depends on (the subject noun, the country); each must render to text that occurs in
  the prompt, and the last occurrence is the one meant (see
  :func:`~cortexmap.tasks.core.cue_positions`). Tasks without such words leave it out.
* ``swap: [x, y]``: exchange the values of ``x`` and ``y`` with probability 1/2, so targets
  come from both lists.
* ``differ: [["{x.verb}", "{y.verb}"]]``: pairs of templates that must render differently
  (target != foil is always required).
* ``compute``: name of a function in :data:`COMPUTED` that adds derived variables
  (numbers, or lists of them for answer sets) and may use the tokenizer.

Sampling is driven by ``random.Random(f"{task}:{seed}")``, so a task is deterministic for a
seed and independent of the other tasks. Each pair records the index of the variant it was
rendered from (:attr:`~cortexmap.tasks.core.Pair.variant`) and its rendered cues.

Every built-in task must have a ``corrupt`` template whose right answer is the foil, so
activation patching can run on it, and no task may be solvable by copying a word from the
prompt: where the target occurs in the prompt, the foil occurs too (tests/tasks checks both).
"""

from __future__ import annotations

import random
import string
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from types import SimpleNamespace
from typing import Any, Callable

import yaml

from cortexmap.errors import TaskError
from cortexmap.tasks.core import LEVELS, Answer, Pair, check_pair, single_token
from cortexmap.tasks.metrics import SET_METRICS

_VARIANT_KEYS = {"vars", "prompt", "corrupt", "target", "foil", "targets", "foils", "swap", "differ", "compute", "cue"}
_TASK_KEYS = _VARIANT_KEYS | {"description", "version", "variants", "metric"}


class Word(str):
    """A string that also offers ``.cap``, ``.bare`` and ``.last`` to templates."""

    @property
    def cap(self) -> str:
        """The word with its first letter upper-cased."""
        return self[:1].upper() + self[1:]

    @property
    def bare(self) -> str:
        """The words without a leading article "the" ("the Eiffel Tower" -> "Eiffel Tower")."""
        head, _, rest = self.partition(" ")
        return rest if head.lower() == "the" and rest else str(self)

    @property
    def last(self) -> str:
        """The last word ("is interested" -> "interested")."""
        return self.rsplit(" ", 1)[-1]


@dataclass(frozen=True)
class Variant:
    """One prompt template of a task and the variables it draws."""

    prompt: str
    corrupt: str | None
    target: str | tuple[str, ...]  # a tuple of templates: an answer set
    foil: str | tuple[str, ...]
    vars: tuple[tuple[str, str], ...]
    swap: tuple[str, str] | None = None
    differ: tuple[tuple[str, str], ...] = ()
    compute: str | None = None
    cue: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """A built-in task as read from its YAML file."""

    name: str
    level: str
    description: str
    version: str
    variants: tuple[Variant, ...]
    lists: dict[str, tuple[Any, ...]]
    metric: str | None = None

    @property
    def has_corrupt(self) -> bool:
        """Whether every variant defines a corrupt prompt."""
        return all(v.corrupt is not None for v in self.variants)


def _greater_than(rng: random.Random, tokenizer: Any) -> dict[str, Any]:
    """Years for ``greater_than``: start year ``{century}{yy}``, the later and the earlier answers.

    When the tokenizer has two-digit tokens the answers are two digits: ``later`` every year after
    ``yy``, ``earlier`` every year up to it (``yy`` itself is not later: Hanna et al. 2023's
    sets) except the century, which ends the prompt (copying it would answer the corrupt prompt,
    whose right answers are the earlier years). When it splits digits they are the tens digit:
    ``later`` the digits above the start's tens digit, ``earlier`` those below it (its own tens
    digit could end either way and is in neither set). ``hi`` / ``lo`` are one of each.
    """
    tens = rng.randint(2, 7)
    yy = tens * 10 + rng.randint(0, 9)
    two_digit = single_token(tokenizer, "45") is not None
    if two_digit:
        later, earlier = [f"{y:02d}" for y in range(yy + 1, 100)], [f"{y:02d}" for y in range(0, yy + 1)]
        hi, lo = f"{rng.randint(yy + 1, 99):02d}", f"{rng.randint(0, yy - 1):02d}"
    else:
        later, earlier = [str(d) for d in range(tens + 1, 10)], [str(d) for d in range(0, tens)]
        hi, lo = str(rng.randint(tens + 1, 9)), str(rng.randint(0, tens - 1))
    century = str(rng.choice([13, 14, 15, 16, 17, 18]))
    while two_digit and lo == century:
        lo = f"{rng.randint(0, yy - 1):02d}"
    earlier = [y for y in earlier if y != century]
    return {"century": century, "yy": f"{yy:02d}", "hi": hi, "lo": lo, "later": later, "earlier": earlier}


def _arithmetic(rng: random.Random, tokenizer: Any) -> dict[str, Any]:
    """Single-digit sums ``a + b = s`` of two different numbers, and a worked example.

    The foil is ``f = s +- 1`` and ``b2`` makes ``a + b2 = f`` (the corrupt prompt); ``others`` are
    every other digit, the wrong answers of the answer set. The example ``e1 + e2 = e3`` uses none
    of ``s`` and ``f``, so neither can be copied from it.
    """
    del tokenizer
    while True:
        a, b = rng.randint(1, 8), rng.randint(1, 8)
        s = a + b
        f = s + rng.choice([-1, 1])
        if a != b and s <= 9 and 1 <= f <= 9 and 1 <= f - a <= 9:
            break
    while True:
        e1, e2 = rng.randint(1, 8), rng.randint(1, 8)
        if e1 + e2 <= 9 and not {e1, e2, e1 + e2} & {s, f}:
            break
    return {"a": str(a), "b": str(b), "b2": str(f - a), "s": str(s), "f": str(f),
            "e1": str(e1), "e2": str(e2), "e3": str(e1 + e2), "others": [str(d) for d in range(10) if d != s]}


@lru_cache(maxsize=1)
def load_sequences() -> dict[str, tuple[str, ...]]:
    """Ordinal sequences (weekdays, months, number words, ...) from ``data/sequences.yaml``."""
    text = (resources.files("cortexmap.tasks") / "data" / "sequences.yaml").read_text(encoding="utf-8")
    return {name: tuple(str(item) for item in items) for name, items in load_yaml(text, "sequences.yaml").items()}


def _sequence(rng: random.Random, tokenizer: Any) -> dict[str, str]:
    """Five consecutive members ``a .. e`` of a random ordinal sequence."""
    del tokenizer
    items = rng.choice(list(load_sequences().values()))
    start = rng.randrange(len(items) - 4)
    return dict(zip("abcde", items[start : start + 5]))


COMPUTED: dict[str, Callable[[random.Random, Any], dict[str, Any]]] = {
    "greater_than": _greater_than,
    "arithmetic": _arithmetic,
    "sequence": _sequence,
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        for key in keys:
            if keys.count(key) > 1:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML, refusing duplicate keys; errors become :class:`TaskError` naming ``source``."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise TaskError(f"{where} is not valid YAML ({problem}); fix the file") from None


def parse_list(name: str, raw: Any, source: str) -> tuple[Any, ...]:
    """Parse one word list (plain words, or ``fields`` + ``rows``) into Words / row namespaces."""
    if isinstance(raw, list):
        return tuple(Word(str(w)) for w in raw)
    if isinstance(raw, dict) and set(raw) == {"fields", "rows"}:
        fields = list(raw["fields"])
        rows = []
        for row in raw["rows"]:
            if len(row) != len(fields):
                raise TaskError(f"{source}: list {name!r} has a row {row!r} that does not match its fields {fields}")
            rows.append(SimpleNamespace(**{f: Word(str(v)) for f, v in zip(fields, row)}))
        return tuple(rows)
    raise TaskError(f"{source}: list {name!r} must be a list of words or a mapping with fields and rows")


def _answers(task: str, raw: dict[str, Any], source: str) -> tuple[str | tuple[str, ...], str | tuple[str, ...]]:
    """A variant's ``target`` / ``foil`` templates, or its ``targets`` / ``foils`` lists of templates."""
    if "targets" in raw or "foils" in raw:
        if "target" in raw or "foil" in raw:
            raise TaskError(f"{source}: task {task!r} gives both target/foil and targets/foils; give one pair of them")
        out = []
        for key in ("targets", "foils"):
            value = raw.get(key)
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise TaskError(f"{source}: task {task!r} has {key!r} that is not a non-empty list of templates")
            out.append(tuple(value))
        return out[0], out[1]
    for key in ("target", "foil"):
        if not isinstance(raw.get(key), str):
            raise TaskError(f"{source}: task {task!r} has a variant without a string {key!r}")
    return raw["target"], raw["foil"]


def _parse_variant(task: str, raw: dict[str, Any], lists: dict[str, tuple[Any, ...]], source: str) -> Variant:
    if not isinstance(raw.get("prompt"), str):
        raise TaskError(f"{source}: task {task!r} has a variant without a string 'prompt'")
    target, foil = _answers(task, raw, source)
    vars_ = tuple((str(k), str(v)) for k, v in (raw.get("vars") or {}).items())
    for var, list_name in vars_:
        if list_name not in lists:
            raise TaskError(f"{source}: task {task!r} draws {var!r} from unknown list {list_name!r}")
    if raw.get("compute") is not None and raw["compute"] not in COMPUTED:
        raise TaskError(f"{source}: task {task!r} names unknown compute {raw['compute']!r}")
    swap = tuple(raw["swap"]) if raw.get("swap") else None
    cue = raw.get("cue")
    cues = [cue] if isinstance(cue, str) else list(cue) if isinstance(cue, list) else None
    if cue is not None and (not cues or not all(isinstance(c, str) and c.strip() for c in cues)):
        raise TaskError(f"{source}: task {task!r} has a cue that is not a template or a list of templates")
    return Variant(
        prompt=raw["prompt"],
        corrupt=raw.get("corrupt"),
        target=target,
        foil=foil,
        vars=vars_,
        swap=swap,  # type: ignore[arg-type]
        differ=tuple(tuple(d) for d in raw.get("differ") or ()),  # type: ignore[misc]
        compute=raw.get("compute"),
        cue=tuple(cues or ()),
    )


def parse_specs(text: str, level: str, source: str) -> dict[str, TaskSpec]:
    """Parse one level's YAML text into task specs.

    Args:
        text: the YAML document.
        level: the level every task of the file belongs to.
        source: file name used in error messages.

    Returns:
        Task name -> spec, in file order.

    Raises:
        TaskError: the document does not follow the format in this module's docstring.
    """
    if level not in LEVELS:
        raise TaskError(f"{source}: unknown level {level!r}; use one of {', '.join(LEVELS)}")
    doc = load_yaml(text, source)
    lists = {name: parse_list(name, raw, source) for name, raw in (doc.get("lists") or {}).items()}
    specs: dict[str, TaskSpec] = {}
    for name, raw in (doc.get("tasks") or {}).items():
        unknown = set(raw) - _TASK_KEYS
        if unknown:
            raise TaskError(f"{source}: task {name!r} has unknown keys {sorted(unknown)}")
        defaults = {k: v for k, v in raw.items() if k in _VARIANT_KEYS}
        metric = raw.get("metric")
        if metric is not None and metric not in SET_METRICS:
            raise TaskError(f"{source}: task {name!r} names metric {metric!r}; answer sets take "
                            f"{', '.join(SET_METRICS)}")
        variants = tuple(
            _parse_variant(name, {**defaults, **v}, lists, source) for v in raw.get("variants") or [{}]
        )
        specs[name] = TaskSpec(
            name=name,
            level=level,
            description=str(raw.get("description", "")).strip(),
            version=str(raw.get("version", "1")),
            variants=variants,
            lists=lists,
            metric=metric,
        )
    return specs


@lru_cache(maxsize=1)
def builtin_specs() -> dict[str, TaskSpec]:
    """Read every built-in task from the package's ``tasks/data/<level>.yaml`` files."""
    specs: dict[str, TaskSpec] = {}
    data = resources.files("cortexmap.tasks") / "data"
    for level in LEVELS:
        path = data / f"{level}.yaml"
        if path.is_file():
            specs.update(parse_specs(path.read_text(encoding="utf-8"), level, f"{level}.yaml"))
    return specs


def draw(
    vars_: tuple[tuple[str, str], ...], lists: dict[str, tuple[Any, ...]], rng: random.Random, owner: str
) -> dict[str, Any]:
    """Draw a value for each ``(variable, list name)``; variables sharing a list get distinct items.

    Raises:
        TaskError: a list has fewer items than the variables drawn from it (``owner`` names the task).
    """
    by_list: dict[str, list[str]] = {}
    for var, list_name in vars_:
        by_list.setdefault(list_name, []).append(var)
    values: dict[str, Any] = {}
    for list_name, names in by_list.items():
        rows = lists[list_name]
        if len(rows) < len(names):
            raise TaskError(f"{owner!r} draws {len(names)} distinct items from list {list_name!r} of {len(rows)}")
        values.update(zip(names, rng.sample(rows, len(names))))
    return values


def _render_answer(template: Answer, values: dict[str, Any]) -> Answer:
    """An answer template rendered; a tuple of templates (a set) expands list-valued variables, one answer per item."""
    if isinstance(template, str):
        return template.format(**values)
    out: list[str] = []
    for item in template:
        roots = {field.split(".")[0].split("[")[0] for _, field, _, _ in string.Formatter().parse(item) if field}
        ranging = [root for root in roots if isinstance(values.get(root), list)]
        if len(ranging) > 1:
            raise TaskError(f"answer template {item!r} ranges over two lists {sorted(ranging)}; use one per template")
        if not ranging:
            out.append(item.format(**values))
            continue
        out += [item.format(**{**values, ranging[0]: value}) for value in values[ranging[0]]]
    return tuple(dict.fromkeys(out))


def _render(index: int, spec: TaskSpec, rng: random.Random, tokenizer: Any) -> Pair | None:
    """Draw the variables of variant ``index`` and render a candidate pair (None if a constraint fails).

    Raises:
        TaskError: a template names an unknown variable, or a cue does not occur in the prompt.
    """
    variant = spec.variants[index]
    values = draw(variant.vars, spec.lists, rng, spec.name)
    if variant.swap is not None and rng.random() < 0.5:
        a, b = variant.swap
        values[a], values[b] = values[b], values[a]
    if variant.compute is not None:
        computed = COMPUTED[variant.compute](rng, tokenizer).items()
        values.update({k: [Word(x) for x in v] if isinstance(v, list) else Word(v) for k, v in computed})
    try:
        if any(x.format(**values) == y.format(**values) for x, y in variant.differ):
            return None
        pair = Pair(
            prompt=variant.prompt.format(**values),
            target=_render_answer(variant.target, values),
            foil=_render_answer(variant.foil, values),
            corrupt=None if variant.corrupt is None else variant.corrupt.format(**values),
            variant=index,
            cue=tuple(c.format(**values) for c in variant.cue),
        )
    except (KeyError, AttributeError, IndexError) as err:
        raise TaskError(f"task {spec.name!r} has a template naming an unknown variable or field ({err})") from None
    for cue in pair.cue:
        if cue not in pair.prompt:
            raise TaskError(f"task {spec.name!r} variant {index}: cue {cue!r} does not occur in {pair.prompt!r}")
    return None if pair.target == pair.foil else pair


def generate_pairs(spec: TaskSpec, tokenizer: Any, n: int, seed: int) -> tuple[list[Pair], dict[str, int]]:
    """Sample up to ``n`` distinct usable pairs of a built-in task.

    Candidates are drawn until ``n`` pass :func:`~cortexmap.tasks.core.check_pair` or the
    attempt budget (``max(400, 50 n)``) runs out; each distinct rejected candidate is counted
    under its reason.

    Args:
        spec: the task spec.
        tokenizer: the tokenizer the pairs must fit.
        n: number of pairs wanted.
        seed: sampling seed.

    Returns:
        ``(pairs, dropped)``; ``pairs`` may be shorter than ``n``.
    """
    rng = random.Random(f"{spec.name}:{seed}")
    pairs: list[Pair] = []
    seen: set[tuple[str, str, str, str | None]] = set()
    dropped: Counter[str] = Counter()
    for _ in range(max(400, 50 * n)):
        if len(pairs) >= n:
            break
        candidate = _render(rng.randrange(len(spec.variants)), spec, rng, tokenizer)
        if candidate is None:
            continue
        key = (candidate.prompt, candidate.target, candidate.foil, candidate.corrupt)
        if key in seen:  # the same pair from another variant is not a new pair
            continue
        seen.add(key)
        pair, reason = check_pair(candidate, tokenizer)
        if pair is None:
            dropped[reason or "unknown"] += 1
        else:
            pairs.append(pair)
    return pairs, dict(sorted(dropped.items()))
