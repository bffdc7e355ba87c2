"""Sweep configuration: what to map, as Python values, validated before any model loads.

The CLI parses its strings (``--tasks ioi,capitals``, ``--interventions zero,amplify:0.5``,
``--method attribution+verify:5``) into these values; the library never parses mini-languages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cortexmap.errors import CortexmapError
from cortexmap.interventions.specs import InterventionSpec
from cortexmap.models.bundled import DEFAULT_MODEL
from cortexmap.results.layout import ATTRIBUTION, EXACT, SCREEN

AUTO = "auto"
METHODS = (AUTO, EXACT, SCREEN, ATTRIBUTION)


def _names(value: str | Sequence[str], what: str, example: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    if not items or any(not isinstance(v, str) or not v or "," in v for v in items):
        raise CortexmapError(f"{what} must be a list of names, e.g. {example}; got {value!r}")
    return items


def _spec(value: InterventionSpec | str) -> InterventionSpec:
    if isinstance(value, InterventionSpec):
        return value
    if not isinstance(value, str) or "," in value:
        raise CortexmapError(f"interventions must be a list of InterventionSpec or labels such as 'zero' or "
                             f"'amplify:0.5', e.g. ['zero', 'mean']; got {value!r}")
    return InterventionSpec.parse(value)


@dataclass
class SweepConfig:
    """Arguments of ``cortexmap map`` / :func:`run_sweep` (recorded in the manifest).

    Attributes:
        model: model spec (bundled name, .gguf path, HF directory or hub id).
        tasks: task names, level names or ``"all"`` (a list; one name may be given as a string).
        task_file: a JSONL file of user pairs (replaces ``tasks`` when given).
        interventions: :class:`~cortexmap.interventions.specs.InterventionSpec` values or their
            labels (``"zero"``, ``"mean"``, ``"resample"``, ``"patch"``, ``"amplify:0.5"``). The
            default is the two counterfactual ones: activation patching from each pair's corrupt
            prompt and mean ablation; a head-level claim of the atlas must hold under both. Zero
            ablation takes a head off its input distribution and is never the default.
        method: ``"auto"`` (``"exact"`` on a GPU, ``"screen"`` otherwise), ``"exact"`` (every
            head on every prompt), ``"screen"`` (every head exactly on ``screen_prompts``
            prompts, then adaptive verification and an audit: :mod:`cortexmap.sweep.verify`) or
            ``"attribution"`` (the first-order estimate, with ``verify`` heads measured exactly).
        verify: with ``method="attribution"``, the top heads per unit measured exactly (0: none).
        n_prompts: pairs generated per built-in task.
        batch_size: rows (prompts x heads) per forward pass, or None to size passes automatically.
        probes: also score the mechanistic attention probes (``patterns.parquet``).
        screen_prompts, refine_heads, refine_prompts, max_verify, audit: the ``screen`` method's
            subsample of every head, how many of the best screened heads it measures on how many
            more prompts, most heads verified per unit, and unverified heads audited per unit.
        measure_all_if_none: the ``screen`` method measures every head of a unit in which no
            verified head is important (see :mod:`cortexmap.sweep.verify`).
        device: torch device, ``"auto"`` to shard the model over every visible GPU, or None for
            the GPU when there is one (else the CPU).
        backend: ``"local"`` or ``"ray"``; ``address`` is the Ray cluster address.
        gpus_per_worker: GPUs each Ray worker (one model replica) holds on a GPU device; above
            1 the replica is sharded over them (``device="auto"``).
    """

    model: str = DEFAULT_MODEL
    tasks: Sequence[str] = ("all",)
    task_file: str | None = None
    interventions: Sequence[InterventionSpec | str] = ("patch", "mean")
    method: str = AUTO
    verify: int = 0
    n_prompts: int = 16
    seed: int = 0
    batch_size: int | None = None
    screen_prompts: int = 2
    refine_heads: int = 120
    refine_prompts: int = 4
    max_verify: int = 40
    audit: int = 8
    measure_all_if_none: bool = True
    device: str | None = None
    dtype: str = "float32"
    probes: bool = True
    probe_prompts: int = 32
    backend: str = "local"
    address: str | None = None
    n_workers: int = 2
    gpus_per_worker: int = 1

    def __post_init__(self) -> None:
        self.tasks = _names(self.tasks, "tasks", "['ioi', 'capitals'] or ['all']")
        self.interventions = tuple(_spec(v) for v in self.interventions)
        if not self.interventions:
            raise CortexmapError("no intervention given: e.g. interventions=['zero', 'mean']")
        if self.method not in METHODS:
            raise CortexmapError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.verify < 0 or (self.verify and self.method != ATTRIBUTION):
            raise CortexmapError("verify (exact heads per unit) applies to method 'attribution' only, and is >= 0")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise CortexmapError(f"impossible batch size {self.batch_size!r}: use None (automatic) or a positive integer")
        if self.n_prompts < 1:
            raise CortexmapError(f"n_prompts must be at least 1, got {self.n_prompts}")
        if self.backend not in ("local", "ray"):
            raise CortexmapError(f"unknown backend {self.backend!r}: use local or ray")
        if self.screen_prompts < 2 or self.max_verify < 1 or self.audit < 0 or min(self.refine_heads,
                                                                                  self.refine_prompts) < 0:
            raise CortexmapError("screen_prompts must be at least 2, max_verify at least 1, and audit, refine_heads "
                                 "and refine_prompts at least 0")
        if self.gpus_per_worker < 1:
            raise CortexmapError(f"gpus_per_worker must be at least 1, got {self.gpus_per_worker}")

    @property
    def specs(self) -> list[InterventionSpec]:
        return list(self.interventions)

    @property
    def labels(self) -> list[str]:
        """The interventions' labels, as the ``intervention`` column of the effects table writes them."""
        return [spec.label for spec in self.interventions]

    @property
    def resolved_device(self) -> str:
        """``device``, with None read as ``cuda`` when a GPU is visible and ``cpu`` otherwise."""
        if self.device is not None:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_method(self, on_gpu: bool) -> str:
        """The method a unit runs: ``auto`` is ``exact`` on a GPU and ``screen`` elsewhere."""
        base = self.method
        if base == AUTO:
            base = EXACT if on_gpu else SCREEN
        if base == SCREEN and self.n_prompts <= 2 * (self.screen_prompts + self.refine_prompts):
            return EXACT  # the screen would cost about as much as measuring every head
        return base

    @property
    def policy(self) -> Any:
        """The ``screen`` method's :class:`~cortexmap.sweep.verify.VerifyPolicy`."""
        from cortexmap.sweep.verify import VerifyPolicy

        return VerifyPolicy(screen_prompts=self.screen_prompts, refine_heads=self.refine_heads,
                            refine_prompts=self.refine_prompts, min_heads=min(VerifyPolicy.min_heads, self.max_verify),
                            max_heads=self.max_verify, audit=self.audit, measure_all_if_none=self.measure_all_if_none)

    def rows_per_pass(self, default: int = 256) -> int:
        """Rows per forward pass: ``batch_size``, or ``default`` when it is None (automatic)."""
        return default if self.batch_size is None else self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready arguments (interventions as labels), as the manifest records them."""
        data = asdict(self)
        data.update(tasks=list(self.tasks), interventions=self.labels)
        return json.loads(json.dumps(data))

    def identity(self) -> dict[str, Any]:
        """The arguments that change results (a resumed run must match them)."""
        data = self.to_dict()
        for key in ("batch_size", "backend", "address", "n_workers", "gpus_per_worker", "device"):
            data.pop(key)
        return data
