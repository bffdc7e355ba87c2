"""Sweep configuration: what to map, parsed and validated before any model loads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cortexmap.errors import CortexmapError
from cortexmap.interventions.specs import InterventionSpec, parse_interventions
from cortexmap.models.bundled import DEFAULT_MODEL

METHODS = ("exact", "attribution")


@dataclass
class SweepConfig:
    """Arguments of ``cortexmap map`` / :func:`run_sweep` (recorded verbatim in the manifest).

    Attributes:
        model: model spec (bundled name, .gguf path, HF directory or hub id).
        tasks: task names, level names, a comma list of those, or ``all``.
        task_file: a JSONL file of user pairs (replaces ``tasks`` when given).
        interventions: ``zero,mean,resample,patch,amplify:ALPHA`` (any subset).
        method: ``exact``, ``attribution`` or ``attribution+verify:K`` (exact on the top K heads
            per task and intervention, with the rank correlation recorded).
        n_prompts: pairs generated per built-in task.
        batch_size: ``auto`` or rows (prompts x heads) per forward pass.
        probes: also score the mechanistic attention probes (``patterns.parquet``).
        device: torch device, or ``auto`` to shard the model over every visible GPU.
        backend: ``local`` or ``ray``; ``address`` is the Ray cluster address.
        gpus_per_worker: GPUs each Ray worker (one model replica) holds on a GPU device; above
            1 the replica is sharded over them (``device`` ``auto``).
    """

    model: str = DEFAULT_MODEL
    tasks: str = "all"
    task_file: str | None = None
    interventions: str = "zero"
    method: str = "exact"
    n_prompts: int = 64
    seed: int = 0
    batch_size: str = "auto"
    device: str = "cpu"
    dtype: str = "float32"
    probes: bool = True
    probe_prompts: int = 32
    backend: str = "local"
    address: str | None = None
    n_workers: int = 2
    gpus_per_worker: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.specs  # noqa: B018 - validates
        self.method_parts  # noqa: B018
        self.rows_per_pass()
        if self.n_prompts < 1:
            raise CortexmapError(f"--prompts must be at least 1, got {self.n_prompts}")
        if self.backend not in ("local", "ray"):
            raise CortexmapError(f"unknown backend {self.backend!r}: use local or ray")
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
        raise CortexmapError(f"unknown method {self.method!r}: use exact, attribution or attribution+verify:K (K > 0)")

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
