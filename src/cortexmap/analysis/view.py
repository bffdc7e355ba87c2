"""One view of a run: what every analysis reads, built once.

:func:`build_view` selects the rows a claim rests on, lays them out as head x task arrays, draws the
prompt bootstrap, and fixes which cells are *important*. Every analysis of the atlas is a function
of this frozen :class:`RunView`, so none re-selects rows or redraws its own bootstrap.

Conventions fixed here:

* **The claim's interventions.** A head-level claim (important, critical, a role, a band cell)
  rests on the *counterfactual* interventions of the run: activation patching from the corrupt
  prompt (``patch``) and mean / resample ablation, every one of them that the run measured with
  the selected method (:data:`COUNTERFACTUAL` order). Zero ablation takes a head off its
  distribution, so it is the claim's intervention only in a run that has nothing else, and then
  every finding says so (``counterfactual`` is False).
* **Important** = :data:`~cortexmap.rules.IMPORTANT` under *every* claim intervention (a cell
  measured under one intervention only, e.g. a task without corrupt prompts, uses that one).
  Where the interventions disagree, :attr:`RunView.important_by` shows it.
* **Weights** of important cells (depth distributions) are the mean harm ``max(0, -effect)`` over
  the claim interventions; other cells weigh 0.
* **Bootstrap draws** resample each task's prompts with replacement, the *same* resampled prompts
  for every intervention and head (so paired differences keep their pairing); cells without
  per-prompt rows fall back to the normal approximation of their reported interval. The set of
  important cells is held at its observed value (re-thresholding noisy replicates would let
  noise heads in).
* **Units of inference.** A claim about a head resamples prompts (:attr:`RunView.draws`); a claim
  about levels resamples tasks within levels (:meth:`RunView.task_resample`) and permutes level
  labels across tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

import numpy as np
import pandas as pd

from cortexmap.analysis.resampling import bootstrap_effects
from cortexmap.analysis.selection import EffectArrays, effect_arrays, importance_of, require_columns, select_effects
from cortexmap.errors import ResultsError
from cortexmap.results.layout import CIRCUIT_PROMPTS, EVIDENCE, FLIPS, INFLUENCE, PAIRS, REGULATION
from cortexmap.rules import ACTIVE, IMPORTANT, ImportanceRule
from cortexmap.stats import resample_within

COUNTERFACTUAL = ("patch", "mean", "resample")
OFF_DISTRIBUTION = ("zero",)


@dataclass(frozen=True, eq=False)
class RunView:
    """The frozen common part of every analysis of one model's run (module docstring).

    Attributes:
        model: the model spec.
        n_layers: layers.
        n_heads: query heads per layer.
        grid: :func:`~cortexmap.analysis.selection.head_grid` (index ``head_id``).
        tasks: task names (the columns of every array), sorted.
        levels: each task's level.
        interventions: the claim's interventions, in :data:`COUNTERFACTUAL` order.
        method: the rows' method (``exact`` when present).
        counterfactual: whether the claim rests on counterfactual interventions.
        arrays: per intervention, the effect / se / clean arrays ``[heads, tasks]``.
        selected: per intervention, the selected rows (:func:`~cortexmap.analysis.selection.select_effects`).
        rule: the importance rule (:data:`~cortexmap.rules.IMPORTANT`).
        important_by: per intervention, the rule's mask ``[heads, tasks]``.
        important: the claim's mask: important under every intervention that measured the cell.
        measured: ``[heads, tasks]`` cells with an effect under every claim intervention
            (a screened-out head counts as measured with effect 0).
        weight: mean harm over the claim interventions on important cells, 0 elsewhere.
        active: ``[heads]`` :data:`~cortexmap.rules.ACTIVE` on some task under some claim intervention.
        n_boot: bootstrap replicates.
        seed: the seed every analysis derives its own from.
        tables: the run's other tables by name (``patterns``, ``prompt_effects``, ``evidence``,
            ``influence``, ``pairs``, ``flips``, ``circuit_prompts``, ``regulation``); None when absent.
        audit: the screen's pooled audit (manifest ``audit``), or None.
    """

    model: str
    n_layers: int
    n_heads: int
    grid: pd.DataFrame
    tasks: tuple[str, ...]
    levels: tuple[str, ...]
    interventions: tuple[str, ...]
    method: str
    counterfactual: bool
    arrays: Mapping[str, EffectArrays]
    selected: Mapping[str, pd.DataFrame]
    rule: ImportanceRule
    important_by: Mapping[str, np.ndarray]
    important: np.ndarray
    measured: np.ndarray
    weight: np.ndarray
    active: np.ndarray
    n_boot: int
    seed: int
    tables: Mapping[str, pd.DataFrame | None] = field(default_factory=dict)
    audit: dict | None = None

    @property
    def primary(self) -> str:
        """The first claim intervention (what single-number summaries of a head report first)."""
        return self.interventions[0]

    @property
    def layers(self) -> np.ndarray:
        """``[heads]`` layer of every grid head."""
        return self.grid["layer"].to_numpy()

    @property
    def rel_depth(self) -> np.ndarray:
        """``[n_layers]`` relative depth of each layer, ``layer / (n_layers - 1)``."""
        return self.grid.groupby("layer")["rel_depth"].first().to_numpy()

    def table(self, name: str) -> pd.DataFrame | None:
        """One of the run's other tables (None when the run has none)."""
        value = self.tables.get(name)
        return value if value is not None and len(value) else None

    @cached_property
    def draws(self) -> dict[str, np.ndarray]:
        """Per intervention, ``[n_boot, heads, tasks]`` prompt-bootstrap replicates of ``effect_normalized``.

        The resampled prompts of a task are the same for every intervention and head.
        """
        prompts = self.table("prompt_effects")
        out = {}
        for iv in self.interventions:
            out[iv] = bootstrap_effects(self.arrays[iv], prompt_effects=prompts, intervention=iv, n_boot=self.n_boot,
                                        seed=self.seed)
        return out

    @cached_property
    def weight_draws(self) -> np.ndarray:
        """``[n_boot, heads, tasks]``: the weights recomputed on every replicate, the important set held fixed."""
        harm = np.mean([importance_of(self.draws[iv]) for iv in self.interventions], axis=0)
        return harm * self.important[None]

    def task_resample(self, n_boot: int | None = None, seed: int | None = None) -> np.ndarray:
        """``[n_boot, tasks]`` task indices resampled with replacement within each level."""
        rng = np.random.default_rng(self.seed + 101 if seed is None else seed)
        return resample_within(np.asarray(self.levels), self.n_boot if n_boot is None else n_boot, rng)

    def describe(self) -> str:
        """One line: what the claims of this view rest on."""
        ivs = " and ".join(self.interventions)
        if self.counterfactual:
            return (f"claims rest on {ivs} ({self.method}); important = {self.rule.describe().split(': ', 1)[1]} "
                    f"under {'each' if len(self.interventions) > 1 else 'it'}")
        return (f"claims rest on {ivs} ablation only ({self.method}): it takes a head off its input distribution, "
                "so effects may be artefacts of the ablation; map with patch and mean for counterfactual evidence")


def claim_interventions(effects: pd.DataFrame, method: str | None = None,
                        interventions: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], bool]:
    """The interventions a claim rests on, and whether they are counterfactual (module docstring)."""
    present = [str(i) for i in effects["intervention"].unique()]
    if interventions:
        missing = [i for i in interventions if i not in present]
        if missing:
            raise ResultsError(f"interventions {missing} are not in this run (present: {sorted(present)}): pick from those")
        chosen = tuple(interventions)
    else:
        chosen = tuple(i for i in COUNTERFACTUAL if i in present)
        if not chosen:
            chosen = (next(i for i in ("zero", "amplify") + tuple(sorted(present)) if i in present),)
    return chosen, all(i in COUNTERFACTUAL for i in chosen)


def build_view(
    effects: pd.DataFrame,
    shape: tuple[int, int],
    *,
    interventions: tuple[str, ...] | None = None,
    method: str | None = None,
    rule: ImportanceRule = IMPORTANT,
    n_boot: int = 500,
    seed: int = 0,
    tables: Mapping[str, pd.DataFrame | None] | None = None,
    audit: dict | None = None,
) -> RunView:
    """Build the :class:`RunView` of one model's effects.

    Args:
        effects: effects table of one model (docs/schema.md).
        shape: ``(n_layers, n_heads)``.
        interventions: the claim's interventions; None picks the run's counterfactual ones.
        method: rows' method; None prefers exact.
        rule: the importance rule.
        n_boot: bootstrap replicates.
        seed: seed of every analysis.
        tables: the run's other tables by name (``prompt_effects`` feeds the bootstrap).
        audit: the screen's pooled audit.

    Raises:
        ResultsError: malformed effects, or interventions the run lacks.
    """
    require_columns(effects, ("intervention", "task", "level"), "effects")
    n_layers, n_heads = shape
    chosen, counterfactual = claim_interventions(effects, method, interventions)
    selected, arrays = {}, {}
    for iv in chosen:
        rows = select_effects(effects, intervention=iv, method=method)
        selected[iv], arrays[iv] = rows, effect_arrays(rows, n_layers, n_heads)
    first = arrays[chosen[0]]
    tasks = sorted(set().union(*(a.tasks for a in arrays.values())))
    levels_of: dict[str, str] = {}
    for a in arrays.values():
        levels_of.update(zip(a.tasks, a.levels))
    arrays = {iv: _align(a, tasks, levels_of) for iv, a in arrays.items()}
    important_by = {iv: rule.mask(a.effect, a.se) for iv, a in arrays.items()}
    has = {iv: np.isfinite(a.effect) for iv, a in arrays.items()}
    measured = np.all([has[iv] for iv in chosen], axis=0)
    # a cell counts as important when every intervention that measured it says so
    votes = np.stack([important_by[iv] | ~has[iv] for iv in chosen])
    important = votes.all(axis=0) & np.any([has[iv] for iv in chosen], axis=0)
    harm = np.nanmean(np.stack([np.where(has[iv], importance_of(arrays[iv].effect), np.nan) for iv in chosen]), axis=0)
    weight = np.where(important, np.nan_to_num(harm), 0.0)
    active = np.any([ACTIVE.mask(a.effect, a.se).any(axis=1) for a in arrays.values()], axis=0)
    method_used = selected[chosen[0]].attrs["selection"]["method"]
    return RunView(model=str(selected[chosen[0]].attrs["selection"]["model"]), n_layers=int(n_layers),
                   n_heads=int(n_heads), grid=first.grid, tasks=tuple(tasks), levels=tuple(levels_of[t] for t in tasks),
                   interventions=chosen, method=str(method_used), counterfactual=counterfactual, arrays=arrays,
                   selected=selected, rule=rule, important_by=important_by, important=important, measured=measured,
                   weight=weight, active=active, n_boot=int(n_boot), seed=int(seed), tables=dict(tables or {}),
                   audit=audit)


def view_of_run(run: Any, *, n_boot: int = 500, seed: int = 0, interventions: tuple[str, ...] | None = None,
                method: str | None = None) -> RunView:
    """:func:`build_view` of a loaded run (:func:`~cortexmap.results.load_results`), with all its tables."""
    patterns = run.patterns if len(run.patterns) else None
    tables = {"patterns": patterns, "prompt_effects": run.prompt_effects(), "evidence": run.table(EVIDENCE),
              "influence": run.table(INFLUENCE), "pairs": run.table(PAIRS), "flips": run.table(FLIPS),
              "circuit_prompts": run.table(CIRCUIT_PROMPTS),
              "regulation": run.table(REGULATION)}
    return build_view(run.effects, run.shape, interventions=interventions, method=method, n_boot=n_boot, seed=seed,
                      tables=tables, audit=run.manifest.get("audit"))


def _align(arrays: EffectArrays, tasks: list[str], levels_of: dict[str, str]) -> EffectArrays:
    """``arrays`` with columns for exactly ``tasks`` (NaN where this intervention lacks a task)."""
    if list(arrays.tasks) == tasks:
        return arrays
    index = [arrays.tasks.index(t) if t in arrays.tasks else -1 for t in tasks]

    def take(values: np.ndarray) -> np.ndarray:
        out = np.full((values.shape[0], len(tasks)), np.nan)
        for j, i in enumerate(index):
            if i >= 0:
                out[:, j] = values[:, i]
        return out

    return EffectArrays(grid=arrays.grid, tasks=list(tasks), levels=[levels_of[t] for t in tasks],
                        effect=take(arrays.effect), se=take(arrays.se), clean_abs=take(arrays.clean_abs))
