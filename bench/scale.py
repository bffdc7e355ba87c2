"""Sweep throughput on random-weight models with the exact shapes of GPT-2, Pythia and LLaMA-2.

Usage::

    python bench/scale.py --models gpt2-small,pythia-160m --device cpu --dtype float32 --max-heads 24
    python bench/scale.py --models gpt2-small,gpt2-medium,gpt2-large,pythia-1.4b,pythia-2.8b,pythia-6.9b,\\
        pythia-12b,llama-2-7b,llama-2-13b --device cuda --dtype bfloat16 --json scale.json

Weights do not change timings, so each model is built with ``AutoModelForCausalLM.from_config``
directly on the device. The workload is one task-shaped unit: ``--prompts`` random prompts of
``--seq`` tokens (batches of at most 64, as the local backend encodes tasks) with random
target / foil ids, a full exact zero-ablation sweep of every head
(:func:`~cortexmap.sweep.compute.exact_matrix`) and the attribution screen
(:func:`~cortexmap.sweep.compute.attribution_matrix`).

``--max-heads N`` times every head of ``ceil(N / n_heads)`` evenly spaced layers and extrapolates
to all heads, weighting each head by the blocks it reruns (``n_layers - layer``); such rows are
marked ``extrapolated``. On a CPU the process CPU time is reported beside wall time (with
``--threads 1`` it does not depend on other jobs sharing the machine); rates use wall time. Forward-pass equivalents (FPE) and FLOPs follow
:mod:`cortexmap.sweep.plan`: an FPE is one forward of one batch, ``2 * n_params * tokens`` FLOPs.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cortexmap.models import wrap_model
from cortexmap.sweep.compute import TaskBatch, attribution_matrix, exact_matrix, prepare
from cortexmap.sweep.config import SweepConfig
from cortexmap.sweep.plan import (
    MAX_BATCH,
    auto_rows,
    forward_equivalents,
    peak_flops,
    plan_run,
)

_GPT2 = {"model_type": "gpt2", "n_positions": 1024, "vocab_size": 50257, "activation_function": "gelu_new",
         "tie_word_embeddings": True}
_PYTHIA = {"model_type": "gpt_neox", "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": True,
           "max_position_embeddings": 2048, "hidden_act": "gelu", "tie_word_embeddings": False}
_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False}

# Shapes from the published config.json of each checkpoint.
CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2-small": {**_GPT2, "n_layer": 12, "n_head": 12, "n_embd": 768, "n_inner": 3072},
    "gpt2-medium": {**_GPT2, "n_layer": 24, "n_head": 16, "n_embd": 1024, "n_inner": 4096},
    "gpt2-large": {**_GPT2, "n_layer": 36, "n_head": 20, "n_embd": 1280, "n_inner": 5120},
    "pythia-160m": {**_PYTHIA, "num_hidden_layers": 12, "num_attention_heads": 12, "hidden_size": 768,
                    "intermediate_size": 3072, "vocab_size": 50304},
    "pythia-1.4b": {**_PYTHIA, "num_hidden_layers": 24, "num_attention_heads": 16, "hidden_size": 2048,
                    "intermediate_size": 8192, "vocab_size": 50304},
    "pythia-2.8b": {**_PYTHIA, "num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 2560,
                    "intermediate_size": 10240, "vocab_size": 50304},
    "pythia-6.9b": {**_PYTHIA, "num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 4096,
                    "intermediate_size": 16384, "vocab_size": 50432},
    "pythia-12b": {**_PYTHIA, "num_hidden_layers": 36, "num_attention_heads": 40, "hidden_size": 5120,
                   "intermediate_size": 20480, "vocab_size": 50688},
    "llama-2-7b": {**_LLAMA2, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                   "hidden_size": 4096, "intermediate_size": 11008},
    "llama-2-13b": {**_LLAMA2, "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 40,
                    "hidden_size": 5120, "intermediate_size": 13824},
    "llama-2-70b": {**_LLAMA2, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
                    "hidden_size": 8192, "intermediate_size": 28672},
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_config(name: str) -> Any:
    """A transformers config with the shape of ``name`` (see :data:`CONFIGS`)."""
    from transformers import AutoConfig

    spec = dict(CONFIGS[name])
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


def build_handle(name: str, device: str, dtype: torch.dtype) -> Any:
    """A random-weight model of that shape, initialised directly on ``device``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(build_config(name), dtype=dtype)
    return wrap_model(model, None, spec=f"random {name}")


def workload(handle: Any, n_prompts: int, seq: int, seed: int = 0) -> list[TaskBatch]:
    """Random prompts in batches of at most 64, with random target / foil ids."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(handle.model.config.vocab_size)
    batches = []
    for start in range(0, n_prompts, MAX_BATCH):
        n = min(MAX_BATCH, n_prompts - start)
        ids = torch.randint(0, vocab, (n, seq), generator=g)
        answers = torch.randint(0, vocab, (2, n), generator=g)
        batches.append(TaskBatch(ids, None, answers[0], answers[1], list(range(start, start + n))))
    return batches


def sampled_heads(n_layers: int, n_heads: int, max_heads: int) -> list[tuple[int, int]]:
    """Every head of ``ceil(max_heads / n_heads)`` evenly spaced layers (all heads when 0 or enough)."""
    n_sel = n_layers if max_heads <= 0 else min(n_layers, math.ceil(max_heads / n_heads))
    layers = sorted({round(float(x)) for x in np.linspace(0, n_layers - 1, n_sel)})
    return [(layer, head) for layer in layers for head in range(n_heads)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # process peak RSS (KiB -> GB)


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time one model's exact sweep and attribution screen; free it afterwards."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    handle = build_handle(name, args.device, dtype)
    L, H = handle.n_layers, handle.n_heads
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batches = workload(handle, args.prompts, args.seq)
    rows = args.rows or auto_rows(handle, args.seq)
    predicted = None
    if args.plan:
        predicted = plan_run(handle, SweepConfig(n_prompts=args.prompts, method="exact"), 1, args.seq, rows_per_pass=rows).time_s

    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    prepared = prepare(handle, batches, need_corrupt=False)
    _sync(device)
    clean_s, clean_cpu = time.perf_counter() - start, time.process_time() - cpu_start

    heads = sampled_heads(L, H, args.max_heads)
    start, cpu_start = time.perf_counter(), time.process_time()
    exact_matrix(handle, prepared, "zero", rows_per_pass=rows, heads=heads)
    _sync(device)
    sampled_s, sampled_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    scale = (H * L * (L + 1) / 2) / sum(L - layer for layer, _ in heads)  # depth-weighted extrapolation
    exact_s = clean_s + sampled_s * scale
    exact_cpu_s = clean_cpu + sampled_cpu * scale

    attribution_s = attribution_cpu_s = None
    if not args.skip_attribution:
        start, cpu_start = time.perf_counter(), time.process_time()
        attribution_matrix(handle, prepared, "zero")
        _sync(device)
        attribution_s, attribution_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start

    n_batches = len(batches)
    fpe = forward_equivalents(L, H, args.prompts, rows) * n_batches
    tokens = min(args.prompts, MAX_BATCH) * args.seq
    flops = fpe * 2 * handle.n_params * tokens
    peak = peak_flops(device)
    result = {
        "model": name, "device": str(device), "dtype": args.dtype, "n_layers": L, "n_heads": H,
        "n_params": handle.n_params, "prompts": args.prompts, "seq": args.seq, "rows_per_pass": rows,
        "timed_heads": len(heads), "extrapolated": len(heads) < L * H, "clean_s": clean_s, "exact_s": exact_s,
        "exact_cpu_s": exact_cpu_s if device.type == "cpu" else None,
        "attribution_s": attribution_s,
        "attribution_cpu_s": attribution_cpu_s if device.type == "cpu" else None, "heads_per_s": L * H / exact_s, "fpe": fpe, "fpe_per_s": fpe / exact_s,
        "tflop_per_s": flops / exact_s / 1e12, "peak_fraction": None if peak is None else flops / exact_s / peak,
        "peak_memory_gb": _peak_memory(device), "plan_time_s": predicted,
    }
    del handle, prepared
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def table(results: list[dict[str, Any]]) -> str:
    lines = [("| model | params | heads | timed heads | exact sweep s | CPU s | heads/s | FPE/s | TFLOP/s "
              "| % bf16 peak | attribution s | CPU s | exact / attribution | plan estimate s | peak mem GB |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        timed = f"{r['timed_heads']} (extrapolated)" if r["extrapolated"] else str(r["timed_heads"])
        fraction = "n/a" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.1f}%"
        attr = "-" if r["attribution_s"] is None else f"{r['attribution_s']:.1f}"
        attr_cpu = "-" if r["attribution_cpu_s"] is None else f"{r['attribution_cpu_s']:.1f}"
        exact_cpu = "-" if r["exact_cpu_s"] is None else f"{r['exact_cpu_s']:.1f}"
        ratio = "-" if r["attribution_s"] is None else f"{r['exact_s'] / r['attribution_s']:.0f}x"
        plan = "-" if r["plan_time_s"] is None else f"{r['plan_time_s']:.0f}"
        lines.append(f"| {r['model']} | {r['n_params'] / 1e6:.0f}M | {r['n_layers'] * r['n_heads']} | {timed} "
                     f"| {r['exact_s']:.1f} | {exact_cpu} | {r['heads_per_s']:.2f} | {r['fpe_per_s']:.3f} "
                     f"| {r['tflop_per_s']:.3f} | {fraction} | {attr} | {attr_cpu} | {ratio} | {plan} "
                     f"| {r['peak_memory_gb']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2-small,pythia-160m", help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32", choices=list(DTYPES))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--max-heads", type=int, default=0, help="time this many heads and extrapolate (0: all)")
    parser.add_argument("--rows", type=int, default=0, help="rows per pass (0: auto, as --batch-size auto)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip-attribution", action="store_true")
    parser.add_argument("--plan", action="store_true", help="also print plan_run's calibrated time estimate")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [m for m in args.models.split(",") if m not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]!r}: use one of {', '.join(CONFIGS)}")
    print(f"device={args.device} dtype={args.dtype} prompts={args.prompts} seq={args.seq} "
          f"torch threads={torch.get_num_threads()}", flush=True)
    results = []
    for name in args.models.split(","):
        results.append(measure(name, args))
        print(table(results[-1:]).splitlines()[-1], flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
