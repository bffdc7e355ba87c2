"""Sweep configuration: what to map, parsed and validated before any model loads."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cortexmap.errors import CortexmapError
from cortexmap.interventions.specs import InterventionSpec, parse_interventions
from cortexmap.models.bundled import DEFAULT_MODEL

METHODS = ("auto", "exact", "screen", "attribution")


@dataclass
class SweepConfig:
    """Arguments of ``cortexmap map`` / :func:`run_sweep` (recorded verbatim in the manifest).

    Attributes:
        model: model spec (bundled name, .gguf path, HF directory or hub id).
        tasks: task names, level names, a comma list of those, or ``all``.
        task_file: a JSONL file of user pairs (replaces ``tasks`` when given).
        interventions: ``zero,mean,resample,patch,amplify:ALPHA`` (any subset).
        method: ``auto`` (``exact`` on a GPU, ``screen`` otherwise), ``exact`` (every head on every
            prompt), ``screen`` (every head exactly on ``screen_prompts`` prompts, then adaptive
            verification and an audit: :mod:`cortexmap.sweep.verify`), ``attribution`` (the
            first-order estimate only) or ``attribution+verify:K`` (exact on its top K heads).
        n_prompts: pairs generated per built-in task.
        batch_size: ``auto`` or rows (prompts x heads) per forward pass.
        probes: also score the mechanistic attention probes (``patterns.parquet``).
        screen_prompts, max_verify, audit: the ``screen`` method's subsample, most heads verified
            per unit, and unverified heads audited per unit.
        device: torch device, ``auto`` to shard the model over every visible GPU, or None for the
            GPU when there is one (else the CPU).
        backend: ``local`` or ``ray``; ``address`` is the Ray cluster address.
        gpus_per_worker: GPUs each Ray worker (one model replica) holds on a GPU device; above
            1 the replica is sharded over them (``device`` ``auto``).
    """

    model: str = DEFAULT_MODEL
    tasks: str = "all"
    task_file: str | None = None
    interventions: str = "zero"
    method: str = "auto"
    n_prompts: int = 32
    seed: int = 0
    batch_size: str = "auto"
    screen_prompts: int = 4
    max_verify: int = 64
    audit: int = 16
    device: str | None = None
    dtype: str = "float32"
    probes: bool = True
    probe_prompts: int = 32
    backend: str = "local"
    address: str | None = None
    n_workers: int = 2
    gpus_per_worker: int = 1

    def __post_init__(self) -> None:
        self.specs  # noqa: B018 - validates
        self.method_parts  # noqa: B018
        self.rows_per_pass()
        if self.n_prompts < 1:
            raise CortexmapError(f"--prompts must be at least 1, got {self.n_prompts}")
        if self.backend not in ("local", "ray"):
            raise CortexmapError(f"unknown backend {self.backend!r}: use local or ray")
        if self.screen_prompts < 2 or self.max_verify < 1 or self.audit < 0:
            raise CortexmapError("--screen-prompts must be at least 2, --max-verify at least 1 and --audit at least 0")
        if self.gpus_per_worker < 1:
            raise CortexmapError(f"--gpus-per-worker must be at least 1, got {self.gpus_per_worker}")

    @property
    def specs(self) -> list[InterventionSpec]:
        return parse_interventions(self.interventions)

    @property
    def method_parts(self) -> tuple[str, int]:
        """``(base method, K)``: K = 0 unless ``attribution+verify:K``."""
        if self.method in METHODS:
            return self.method, 0
        base, _, k = self.method.partition("+verify:")
        if base == "attribution" and k.isdigit() and int(k) > 0:
            return "attribution", int(k)
        raise CortexmapError(f"unknown method {self.method!r}: use auto, exact, screen, attribution or attribution+verify:K (K > 0)")

    @property
    def resolved_device(self) -> str:
        """``device``, with None read as ``cuda`` when a GPU is visible and ``cpu`` otherwise."""
        if self.device is not None:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_method(self, on_gpu: bool) -> str:
        """The base method a unit runs: ``auto`` is ``exact`` on a GPU and ``screen`` elsewhere."""
        base, _ = self.method_parts
        if base == "auto":
            base = "exact" if on_gpu else "screen"
        if base == "screen" and self.n_prompts <= 2 * self.screen_prompts:
            return "exact"  # the screen would cost about as much as measuring every head
        return base

    @property
    def policy(self) -> Any:
        """The ``screen`` method's :class:`~cortexmap.sweep.verify.VerifyPolicy`."""
        from cortexmap.sweep.verify import VerifyPolicy

        return VerifyPolicy(screen_prompts=self.screen_prompts, max_heads=self.max_verify, audit=self.audit)

    def rows_per_pass(self, default: int = 256) -> int:
        """Rows per forward pass: ``auto`` gives ``default``; else a positive integer."""
        if str(self.batch_size) == "auto":
            return default
        try:
            value = int(self.batch_size)
        except ValueError:
            value = 0
        if value < 1:
            raise CortexmapError(f"impossible batch size {self.batch_size!r}: use auto or a positive integer")
        return value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The arguments that change results (a resumed run must match them)."""
        data = self.to_dict()
        for key in ("batch_size", "backend", "address", "n_workers", "gpus_per_worker", "device"):
            data.pop(key)
        return data
