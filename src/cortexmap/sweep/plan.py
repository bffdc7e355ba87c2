"""Sizing a sweep: rows per forward pass, and the forward passes, time and memory of a planned run.

Conventions fixed here:

* a *forward-pass equivalent* (FPE) is the compute of one full forward pass of one batch of
  prompts with last-position logits; running blocks ``l..L-1`` counts ``(L - l) / L``, a backward
  pass counts 2 (so attribution's forward + backward is 3);
* one FPE of ``tokens`` tokens is ``2 * n_params * tokens`` FLOPs (the usual dense estimate);
* tasks are encoded in batches of at most :data:`MAX_BATCH` prompts of one length (as the local
  backend does), and all batches of the task being mapped stay cached;
* memory figures are estimates in bytes: weights + that task's clean caches + one pass's
  activations, plus 10% for the allocator.

:func:`plan_run` answers ``cortexmap plan``; :func:`require_fit` turns a plan that cannot fit
into a one-line :class:`~cortexmap.errors.CortexmapError`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from cortexmap.errors import CortexmapError
from cortexmap.sweep.config import SweepConfig

MAX_BATCH = 64  # prompts per equal-length batch (LocalBackend encodes tasks with this)
OVERHEAD = 1.10  # allocator slack on top of the estimated tensors

# Dense bf16 tensor-core peaks (FLOP/s) by device-name substring, from the vendors' data sheets.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


@dataclass(frozen=True)
class ModelFacts:
    """What sizing needs to know about a model, with or without its weights loaded."""

    name: str
    n_layers: int
    n_heads: int
    d_model: int
    d_ff: int
    vocab: int
    n_params: int
    dtype_bytes: int

    @classmethod
    def from_handle(cls, handle: Any) -> ModelFacts:
        config = handle.model.config
        return cls(handle.spec, handle.n_layers, handle.n_heads, _d_model(config), _d_ff(config),
                   int(config.vocab_size), handle.n_params, torch.finfo(handle.dtype).bits // 8)

    @classmethod
    def from_config(cls, config: Any, dtype: torch.dtype = torch.float32, name: str | None = None) -> ModelFacts:
        """Facts of a transformers config; parameters are counted on the meta device (no memory)."""
        from transformers import AutoModelForCausalLM

        from cortexmap.models.geometry import geometry_for, head_counts

        n_layers, n_heads, _, _ = head_counts(config, geometry_for(config))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        n_params = sum(p.numel() for p in model.parameters())
        return cls(name or str(config.model_type), n_layers, n_heads, _d_model(config), _d_ff(config),
                   int(config.vocab_size), n_params, torch.finfo(dtype).bits // 8)


def _d_model(config: Any) -> int:
    return int(getattr(config, "hidden_size", None) or config.n_embd)


def _d_ff(config: Any) -> int:
    for key in ("intermediate_size", "ffn_dim", "n_inner"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return 4 * _d_model(config)


def _facts(model: Any) -> ModelFacts:
    if isinstance(model, ModelFacts):
        return model
    if hasattr(model, "model") and hasattr(model, "n_heads"):
        return ModelFacts.from_handle(model)
    return ModelFacts.from_config(model)


def bytes_per_row(handle: Any, seq: int) -> int:
    """Rough peak activation bytes of one prompt row through one block (attention scores + MLP).

    Args:
        handle: a model handle or :class:`ModelFacts`.
    """
    f = _facts(handle)
    width = 8 * f.d_model + 3 * f.d_ff + 2 * f.n_heads * seq
    return seq * width * f.dtype_bytes


CPU_TOKENS = 2048


def cpu_rows(seq: int) -> int:
    """Rows per pass on a CPU: about ``CPU_TOKENS`` prompt tokens, 16 to 512 rows."""
    return max(16, min(512, CPU_TOKENS // max(1, seq)))


def auto_rows(handle: Any, seq: int, budget_bytes: int | None = None) -> int:
    """Rows (prompts x heads) per forward pass for ``--batch-size auto``.

    On a GPU a quarter of the free memory goes to activations; on a CPU about ``CPU_TOKENS``
    prompt tokens per pass (16 to 512 rows), where larger passes stop paying off
    (``bench/engine_fill.py``).
    """
    if budget_bytes is None:
        if handle.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(handle.device)
            budget_bytes = free // 4
        else:
            return cpu_rows(seq)
    return max(1, min(8192, budget_bytes // max(1, bytes_per_row(handle, seq))))


def forward_equivalents(n_layers: int, n_heads: int, n_prompts: int, rows_per_pass: int, *,
                        method: str = "exact", verify: int = 0) -> float:
    """Full forward passes (of one batch of prompts) one unit costs, plus the clean pass.

    Head ``(l, h)`` runs ``n_layers - l`` of ``n_layers`` blocks, so an exact unit costs
    ``n_heads * (n_layers + 1) / 2`` passes; attribution costs a forward and a backward (3),
    plus ``verify`` exactly re-run heads of average depth. The count does not depend on how
    many rows share a pass (``n_prompts`` and ``rows_per_pass`` only change the speed per pass).
    """
    del rows_per_pass
    per_head = (n_layers + 1) / (2 * n_layers)
    if method == "exact":
        return n_heads * n_layers * per_head + 1
    if method == "screen":  # every head on the screen's prompts, then the verified and audited heads
        from cortexmap.sweep.verify import VerifyPolicy

        policy = VerifyPolicy()
        heads = n_heads * n_layers
        return (policy.screen_heads(heads, n_prompts) + policy.expected_heads(heads)) * per_head + 1
    if method == "attribution":
        return 3 + verify * per_head + 1
    raise CortexmapError(f"unknown method {method!r}: use exact, screen or attribution")


def peak_flops(device: str | torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA device from :data:`BF16_PEAK`, or None (CPU, unknown GPU)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def host_available_bytes() -> int:
    """Host RAM available to a new allocation (``MemAvailable``), in bytes."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _device_budget(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return host_available_bytes()


def shard_devices(model: Any, device: str | torch.device | None) -> list[torch.device]:
    """The GPUs a run is spread over: a sharded handle's, or every visible GPU for ``device="auto"``."""
    placed = getattr(model, "device_map", None) if hasattr(model, "n_heads") else None
    if placed:
        gpus = {torch.device(f"cuda:{v}" if v.isdigit() else v) for v in placed.values()}
        return sorted((d for d in gpus if d.type == "cuda"), key=str)
    if str(device) == "auto" and torch.cuda.is_available():
        return [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    return []


@torch.no_grad()
def calibrate(handle: Any, batch: int, seq: int, rows_per_pass: int, attribution: bool = False,
              seed: int = 0) -> dict[str, float]:
    """Time the sweep's building blocks on the real model with random prompts.

    Returns:
        ``clean_s`` (one clean pass of ``batch`` prompts), ``block_row_s`` (one block over one
        row of ``seq`` tokens inside a ``run_from_layer`` chunk of ``rows_per_pass`` rows) and,
        when asked, ``attribution_s`` (forward + backward of the batch).
    """
    from cortexmap.sweep.compute import TaskBatch, attribution_matrix, prepare
    from cortexmap.sweep.engine import head_block_edit, run_from_layer

    g = torch.Generator().manual_seed(seed)
    vocab = int(handle.model.config.vocab_size)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    answers = torch.randint(0, vocab, (2, batch), generator=g)
    tb0 = TaskBatch(ids, None, answers[0], answers[1], list(range(batch)))
    handle.model(input_ids=ids[:1].to(handle.device), use_cache=False, logits_to_keep=1)  # warm-up

    def best_of_two(fn: Any) -> tuple[float, Any]:  # the first call pays one-time costs (allocator, autograd)
        times, value = [], None
        for _ in range(2):
            _sync(handle.device)
            start = time.perf_counter()
            value = fn()
            _sync(handle.device)
            times.append(time.perf_counter() - start)
        return min(times), value

    clean_s, (tb,) = best_of_two(lambda: prepare(handle, [tb0], need_corrupt=False))
    out = {"clean_s": clean_s}
    k = max(1, min(handle.n_heads, rows_per_pass // batch))
    depth = min(handle.n_layers, 4)
    layer = handle.n_layers - depth
    edit = head_block_edit(handle.n_heads, list(range(k)), batch, "zero")
    block_s, _ = best_of_two(lambda: run_from_layer(handle, tb.cache, layer, edit, k))
    out["block_row_s"] = block_s / (depth * k * batch)
    if attribution:
        out["attribution_s"], _ = best_of_two(lambda: attribution_matrix(handle, [tb], "zero"))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


@dataclass(frozen=True)
class PlanMemory:
    """Bytes: ``weights`` + ``caches`` (every task's clean caches) + one ``pass`` -> ``peak``, of ``budget``."""

    weights: float
    caches: float
    pass_: float
    peak: float
    budget: float


@dataclass(frozen=True)
class Plan:
    """What :func:`plan_run` expects of a map: work, time, memory, and whether it fits (``message`` says why)."""

    model: str
    device: str
    n_layers: int
    n_heads: int
    n_params: int
    dtype_bytes: int
    n_tasks: int
    n_prompts: int
    seq: int
    interventions: list[str]
    method: str
    units: int
    head_interventions: int
    batches_per_task: int
    rows_per_pass: int
    forward_equivalents: float
    flops: float
    time_s: float | None  # None when unknown (not calibrated, and no known peak)
    time_source: str
    calibration: dict[str, float] | None
    memory: PlanMemory
    fits: bool
    message: str


def plan_run(model: Any, config: SweepConfig, n_tasks: int, seq: int, *, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None, rows_per_pass: int | None = None, calibrated: bool = True,
             utilization: float = 0.35, memory_bytes: int | None = None, host_bytes: int | None = None) -> Plan:
    """Forward passes, expected time and peak memory of mapping ``model``, and whether it fits.

    Args:
        model: a loaded model handle (calibrated timings), a transformers config, or
            :class:`ModelFacts` (FLOP-based time on GPUs with a known peak; none on CPU).
        config: the run's :class:`~cortexmap.sweep.config.SweepConfig` (prompts per task,
            interventions, method; ``auto`` is resolved for ``device``).
        n_tasks: tasks mapped.
        seq: prompt length in tokens (the longest bucket).
        device: where the run goes (default: the handle's device, else ``cpu``).
        dtype: weight dtype when ``model`` is a config (default float32).
        rows_per_pass: rows (prompts x heads) per pass; default as ``--batch-size auto``.
        calibrated: time one clean pass and one ``run_from_layer`` chunk on a loaded model.
        utilization: assumed fraction of the GPU's bf16 peak for FLOP-based times.
        memory_bytes: device memory to plan against (default: the GPU's total, or host RAM available).
        host_bytes: host RAM to plan against (default: ``MemAvailable``).

    Returns:
        A :class:`Plan`: forward-pass equivalents, FLOPs, time (None when unknown) and its source,
        memory by part, rows per pass, whether it fits and a one-line ``message`` (why it cannot
        fit or what was adjusted).
    """
    is_handle = hasattr(model, "model") and hasattr(model, "n_heads")
    if isinstance(model, ModelFacts) or is_handle:
        facts = _facts(model)
    else:
        facts = ModelFacts.from_config(model, dtype or torch.float32)
    shards = shard_devices(model, device)
    if str(device) == "auto":
        device = shards[0] if shards else "cpu"
    device = torch.device(device if device is not None else (model.device if is_handle else "cpu"))
    n_prompts, verify = config.n_prompts, config.verify
    base = config.resolved_method(device.type == "cuda")
    kinds = [spec.kind for spec in config.specs]
    patch = "patch" in kinds
    L, H = facts.n_layers, facts.n_heads
    batch = min(n_prompts, MAX_BATCH)
    n_batches = math.ceil(n_prompts / MAX_BATCH)
    units = n_tasks * len(kinds)

    # Compute: clean passes per task (a second clean + the corrupt pass once patching needs them).
    prep_fpe = 1 + (2 if patch else 0)
    unit_fpe = forward_equivalents(L, H, n_prompts, 0, method=base, verify=verify) - 1
    fpe = n_tasks * n_batches * (prep_fpe + len(kinds) * unit_fpe)
    flops = fpe * 2 * facts.n_params * batch * seq

    # Memory.
    b = facts.dtype_bytes
    weights = facts.n_params * b
    cache = n_prompts * seq * L * facts.d_model * b * (3 if patch else 2) + n_prompts * facts.vocab * b
    if memory_bytes is not None:
        budget = memory_bytes
    else:  # a sharded model holds its weights and activations on all its GPUs together
        budget = sum(_device_budget(d) for d in shards) if len(shards) > 1 else _device_budget(device)
    resident = weights if is_handle and model.device == device and device.type == "cpu" and memory_bytes is None else 0
    per_row = bytes_per_row(facts, seq) + 2 * seq * facts.d_model * b + facts.vocab * (b + 4)
    if rows_per_pass is None:
        if device.type == "cuda":
            rows_per_pass = max(batch, min(8192, int((budget - weights - cache) / 4) // max(1, per_row)))
        else:
            rows_per_pass = cpu_rows(seq)
    attribution_pass = batch * L * bytes_per_row(facts, seq) if base == "attribution" else 0
    exact_rows = max(batch, rows_per_pass) if base in ("exact", "screen") or verify else 0
    fixed = weights + cache
    peak = (fixed + max(exact_rows * per_row, attribution_pass)) * OVERHEAD
    minimum = (fixed + max(batch * per_row if exact_rows else 0, attribution_pass)) * OVERHEAD
    message, fits = "", True
    where = "host RAM" if device.type == "cpu" else (f"{len(shards)} GPUs" if len(shards) > 1 else str(device))
    if weights * OVERHEAD > budget + resident:
        fits = False
        smaller = "bfloat16, " if b > 2 else ""
        advice = (f"use {smaller}a larger GPU, or shard it over several (--device auto)" if device.type == "cuda"
                  else f"use {smaller}a machine with more RAM, or GPUs (--device auto shards over them)")
        message = (f"{facts.name} needs {_gb(weights)} for its weights alone in {b * 8}-bit floats but {where} has "
                   f"{_gb(budget + resident)}; {advice}")
    elif minimum > budget + resident:
        fits = False
        message = (f"one task's clean caches and a pass of {batch} prompts x {seq} tokens need {_gb(minimum)} "
                   f"but {where} has {_gb(budget + resident)}; use fewer --prompts or shorter prompts")
    elif peak > budget + resident:
        spare = (budget + resident) / OVERHEAD - fixed
        rows_per_pass = max(batch, int(spare // per_row))
        peak = (fixed + max(rows_per_pass * per_row, attribution_pass)) * OVERHEAD
        message = f"{rows_per_pass} rows per pass fit in {where} ({_gb(budget + resident)})"
    else:
        message = f"fits: about {_gb(peak)} at peak of the {_gb(budget + resident)} in {where}"
    host = host_bytes if host_bytes is not None else host_available_bytes()
    if fits and device.type == "cuda" and not is_handle and weights > host:
        fits = False
        message = (f"loading {facts.name} puts its {_gb(weights)} of weights in host RAM first but only "
                   f"{_gb(host)} is available; use a machine with more RAM")

    # Time.
    time_s, source, calibration = None, "unknown: calibrate on the loaded model", None
    if is_handle and calibrated and model.device == device:
        calibration = calibrate(model, batch, seq, rows_per_pass, attribution=base == "attribution")
        row_blocks = H * batch * L * (L + 1) / 2  # every head of one batch of one exact unit
        exact_s = row_blocks * calibration["block_row_s"]
        verify_s = verify * batch * (L + 1) / 2 * calibration["block_row_s"]
        if base == "screen":
            policy = config.policy
            unit_s = exact_s * policy.screen_heads(L * H, n_prompts) / (L * H) + policy.expected_heads(L * H) * batch * (L + 1) / 2 * calibration["block_row_s"]
        else:
            unit_s = exact_s if base == "exact" else calibration["attribution_s"] + verify_s
        time_s = n_tasks * n_batches * (prep_fpe * calibration["clean_s"] + len(kinds) * unit_s)
        source = f"calibrated on {device}"
    elif peak_flops(device) is not None:
        time_s = flops / (peak_flops(device) * utilization)
        source = f"estimate: FLOPs at {utilization:.0%} of the bf16 peak"
    return Plan(
        model=facts.name, device=", ".join(map(str, shards)) if len(shards) > 1 else str(device), n_layers=L,
        n_heads=H, n_params=facts.n_params, dtype_bytes=b, n_tasks=n_tasks, n_prompts=n_prompts, seq=seq,
        interventions=config.labels, method=base, units=units, head_interventions=units * L * H,
        batches_per_task=n_batches, rows_per_pass=rows_per_pass, forward_equivalents=fpe, flops=flops, time_s=time_s,
        time_source=source, calibration=calibration,
        memory=PlanMemory(weights=weights, caches=cache, pass_=peak / OVERHEAD - fixed, peak=peak, budget=budget + resident),
        fits=fits, message=message,
    )


def require_fit(plan: Plan) -> Plan:
    """Return ``plan`` when it fits, else raise its one-line reason.

    Raises:
        CortexmapError: the run cannot fit in the device memory or host RAM it was planned for.
    """
    if not plan.fits:
        raise CortexmapError(plan.message)
    return plan
