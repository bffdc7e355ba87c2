"""Peer benchmark: per-head activation patching on SmolLM2-135M, cortexmap vs transformer-lens vs a plain loop.

Usage::

    python bench/sweep_vs_transformerlens.py --prompts 16 --reps 3 --threads 2 --sample-layers 6 --json /tmp/peer.json

The workload is TransformerLens's ``get_act_patch_attn_head_out_all_pos``: run the model on the
*corrupt* IOI prompts and patch in each head's output (every position) from the *clean* prompts;
the metric is the logit difference target - foil at the last position, per prompt. Contenders:

* ``cortexmap``: :func:`~cortexmap.sweep.compute.exact_matrix` with kind ``patch``, the base
  run being the corrupt prompts and the source the clean ones (a ``TaskBatch`` with
  ``input_ids`` = corrupt ids and ``corrupt_ids`` = clean ids);
* ``transformer-lens``: ``TransformerBridge.boot_transformers`` on the same safetensors directory
  (raw HF weights: no folding, no compatibility mode, since ``blocks.{l}.attn.hook_z`` is a
  native bridge hook), ``run_with_cache`` for the clean ``hook_z`` and
  ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` with ``reduce="none"``,
  all under ``torch.no_grad()``;
* ``full-sequence``: the same cortexmap sweep with the shared-prefix saving switched off (every
  position of every block after the patched layer is rerun), to show what that saving is worth;
* ``plain-loop``: one full forward pass per head with the out-projection pre-hook that
  ``cortexmap.intervene(patch=...)`` installs, the clean head outputs recorded once.

``--sample-layers N`` runs transformer-lens and the plain loop on every head of ``N`` evenly spaced
layers only and scales their times by ``n_layers / N``: each of their head interventions is one
full forward pass, so the cost per head does not depend on its layer. cortexmap always sweeps
every head.

Each contender's time includes its own clean / corrupt caching passes. The contenders run
alternately in one process, ``--reps`` times, and the table reports medians of wall time and of
process CPU time; with ``--threads 1`` CPU time is the work done, whatever other jobs share the
CPU, so the speed-ups are taken from it. transformer-lens forces ``eager`` attention, so cortexmap is loaded with ``eager``
too (``--attn sdpa`` to time the default kernel; agreement then drifts to ~1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformer-lens draws a progress bar per sweep

import numpy as np
import torch

import cortexmap
from cortexmap.interventions.capture import head_outputs
from cortexmap.interventions.edit import LayerEdit, register_edits
from cortexmap.models.bundled import cache_dir
from cortexmap.sweep.compute import TaskBatch, exact_matrix, prepare
from cortexmap.sweep.engine import shared_prefix_length
from cortexmap.tasks import build_task, encode_task


@dataclass
class Workload:
    """Equal-length IOI pairs: ``[n, seq]`` ids and ``[n]`` answer ids."""

    clean: torch.Tensor
    corrupt: torch.Tensor
    target: torch.Tensor
    foil: torch.Tensor

    def metric(self, last_logits: torch.Tensor) -> torch.Tensor:
        """Logit difference ``[rows]`` from ``[rows, vocab]`` last-position logits (rows tile the prompts)."""
        k = last_logits.shape[0] // len(self.target)
        logits = last_logits.float()
        return logits.gather(1, self.target.repeat(k)[:, None])[:, 0] - logits.gather(1, self.foil.repeat(k)[:, None])[:, 0]


def ioi_workload(handle: Any, n_prompts: int, seed: int = 0) -> Workload:
    """The first ``n_prompts`` pairs of the largest equal-length IOI batch."""
    task = build_task("ioi", handle.tokenizer, n=max(128, 4 * n_prompts), seed=seed)
    batch = max(encode_task(task, handle.tokenizer), key=len)
    if len(batch) < n_prompts:
        raise SystemExit(f"the largest equal-length IOI batch has {len(batch)} pairs; ask for fewer --prompts")
    take = slice(0, n_prompts)
    device = handle.device
    return Workload(batch.input_ids[take].to(device), batch.corrupt_ids[take].to(device),
                    batch.target_ids[take].to(device), batch.foil_ids[take].to(device))


def run_cortexmap(handle: Any, w: Workload, rows: int, shared_prefix: bool = True) -> np.ndarray:
    """``[n_prompts, n_layers * n_heads]`` patched metric, cortexmap's exact sweep."""
    noising = TaskBatch(input_ids=w.corrupt, corrupt_ids=w.clean, target_ids=w.target, foil_ids=w.foil,
                        indices=list(range(len(w.target))))
    prepared = prepare(handle, [noising], need_corrupt=True)
    if not shared_prefix:
        prepared[0].suffix = None
    return exact_matrix(handle, prepared, "patch", rows_per_pass=rows)


@torch.no_grad()
def run_plain_loop(handle: Any, w: Workload, layers: list[int]) -> np.ndarray:
    """One hooked full forward pass of the corrupt prompts per head of ``layers`` (other columns NaN)."""
    clean_z = head_outputs(handle, w.clean)  # {layer: [n, seq, n_heads, d_head]}
    n_h = handle.n_heads
    out = np.full((len(w.target), handle.n_layers * n_h), np.nan)
    for layer in layers:
        for head in range(n_h):
            mask = torch.zeros(1, n_h, dtype=torch.bool, device=handle.device)
            mask[0, head] = True
            hooks = register_edits(handle, {layer: LayerEdit(replace=clean_z[layer], replace_mask=mask)})
            try:
                logits = handle.model(input_ids=w.corrupt, use_cache=False, logits_to_keep=1).logits[:, -1]
            finally:
                for h in hooks:
                    h.remove()
            out[:, layer * n_h + head] = w.metric(logits).cpu().numpy()
    return out


def converted_dir(handle: Any) -> Path:
    """The safetensors directory of the model: its own when loaded from one, else the bundled GGUF's conversion."""
    if (Path(handle.spec) / "config.json").exists():
        return Path(handle.spec)
    directory = cache_dir() / "converted" / handle.model_hash[:16]
    if not (directory / "config.json").exists():
        raise SystemExit(f"no converted model at {directory}; run cortexmap once to create it")
    return directory


def boot_bridge(handle: Any, dtype: torch.dtype) -> Any:
    """A transformer-lens 4.x ``TransformerBridge`` over its own copy of the same weights."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(converted_dir(handle)), device=str(handle.device), dtype=dtype,
                                                 tokenizer=handle.tokenizer)
    bridge.eval()
    return bridge


@torch.no_grad()
def run_transformer_lens(bridge: Any, w: Workload, layers: list[int]) -> np.ndarray:
    """transformer-lens's own head-output patching sweep, per prompt (heads of ``layers``; other columns NaN).

    All layers: ``get_act_patch_attn_head_out_all_pos``. A subset: the same
    ``generic_activation_patch`` with the same patch setter and an ``index_df`` of those heads.
    """
    import pandas as pd
    from transformer_lens.patching import (
        generic_activation_patch,
        get_act_patch_attn_head_out_all_pos,
        layer_head_vector_patch_setter,
    )

    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    _, clean_cache = bridge.run_with_cache(w.clean, names_filter=lambda name: name.endswith("attn.hook_z"))
    metric = lambda logits: w.metric(logits[:, -1])
    out = np.full((len(w.target), n_layers * n_heads), np.nan)
    if len(layers) == n_layers:
        values = get_act_patch_attn_head_out_all_pos(bridge, w.corrupt, clean_cache, metric, reduce="none").values
        out[:] = values.permute(2, 0, 1).reshape(values.shape[2], -1).double().cpu().numpy()  # from [L, H, n]
        return out
    index = pd.DataFrame([(l, h) for l in layers for h in range(n_heads)], columns=["layer", "head"])
    values = generic_activation_patch(bridge, w.corrupt, clean_cache, metric, layer_head_vector_patch_setter, "z",
                                      index_df=index, reduce="none").values  # [rows, n]
    columns = [l * n_heads + h for l, h in index.itertuples(index=False)]
    out[:, columns] = values.T.double().cpu().numpy()
    return out


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
    """``(wall seconds, process CPU seconds, result)``; CPU time is robust to other jobs' load."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box; 0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rows", type=int, default=256, help="cortexmap rows (prompts x heads) per pass")
    parser.add_argument("--attn", default="eager", choices=["eager", "sdpa"])
    parser.add_argument("--contenders", default="cortexmap,transformer-lens,plain-loop,full-sequence")
    parser.add_argument("--sample-layers", type=int, default=0,
                        help="run transformer-lens and the plain loop on every head of this many evenly spaced "
                             "layers and scale their times to all heads (their cost per head is one full pass)")
    parser.add_argument("--json", default=None, help="also write the timings and differences here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    handle = cortexmap.load_model(args.model, attn_implementation=args.attn, device=args.device, dtype=args.dtype)
    w = ioi_workload(handle, args.prompts)
    if args.sample_layers:
        sampled = sorted({round(float(x)) for x in np.linspace(0, handle.n_layers - 1, args.sample_layers)})
    else:
        sampled = list(range(handle.n_layers))
    contenders: dict[str, Callable[[], np.ndarray]] = {
        "cortexmap": lambda: run_cortexmap(handle, w, args.rows),
        "plain-loop": lambda: run_plain_loop(handle, w, sampled),
        "full-sequence": lambda: run_cortexmap(handle, w, args.rows, shared_prefix=False),
    }
    if "transformer-lens" in args.contenders:
        bridge = boot_bridge(handle, handle.dtype)
        contenders["transformer-lens"] = lambda: run_transformer_lens(bridge, w, sampled)
    names = [n for n in args.contenders.split(",") if n in contenders]
    print(f"{args.model}: {handle.n_layers} layers x {handle.n_heads} heads, {len(w.target)} IOI prompts of "
          f"{w.clean.shape[1]} tokens (clean and corrupt agree on the first {shared_prefix_length(w.clean, w.corrupt)}), "
          f"attn={args.attn}, torch threads={torch.get_num_threads()}", flush=True)

    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, np.ndarray] = {}
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[: rep % len(names)]  # rotate who goes first
        for name in order:
            seconds, cpu_seconds, value = timed(contenders[name])
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
            results[name] = value
            print(f"  rep {rep + 1}: {name:<17} wall {seconds:8.2f} s   cpu {cpu_seconds:8.2f} s", flush=True)

    factor = handle.n_layers / len(sampled)  # one full forward per head, whatever its layer
    for name in ("transformer-lens", "plain-loop"):
        if name in wall and factor != 1:
            wall[name] = [t * factor for t in wall[name]]
            cpu[name] = [t * factor for t in cpu[name]]
    if factor != 1:
        print(f"transformer-lens and plain-loop ran the {len(sampled) * handle.n_heads} heads of layers {sampled}; "
              f"their times below are scaled x{factor:g} to all heads")
    med_wall = {n: statistics.median(t) for n, t in wall.items()}
    med_cpu = {n: statistics.median(t) for n, t in cpu.items()}
    n_heads = handle.n_layers * handle.n_heads
    print("\n| contender | median CPU s | CPU runs (s) | median wall s | wall runs (s) | heads per CPU s |")
    print("|---|---:|---|---:|---|---:|")
    for n in names:
        print(f"| {n} | {med_cpu[n]:.1f} | {', '.join(f'{t:.1f}' for t in cpu[n])} | {med_wall[n]:.1f} "
              f"| {', '.join(f'{t:.1f}' for t in wall[n])} | {n_heads / med_cpu[n]:.2f} |")
    print("\ndifferences are over the heads both contenders ran")
    print("| pair | speed-up (CPU) | speed-up (wall) | max abs diff, per-head mean | max abs diff, per prompt |")
    print("|---|---:|---:|---:|---:|")
    report: dict[str, Any] = {"wall": wall, "cpu": cpu, "pairs": {}}
    pairs = [("cortexmap", "transformer-lens"), ("cortexmap", "plain-loop"), ("plain-loop", "transformer-lens"),
             ("full-sequence", "transformer-lens"), ("cortexmap", "full-sequence")]
    for a, b in pairs:
        if a in results and b in results:
            mean_diff = float(np.nanmax(np.abs(results[a].mean(0) - results[b].mean(0))))
            prompt_diff = float(np.nanmax(np.abs(results[a] - results[b])))
            by_cpu, by_wall = med_cpu[b] / med_cpu[a], med_wall[b] / med_wall[a]
            print(f"| {a} vs {b} | {by_cpu:.2f}x | {by_wall:.2f}x | {mean_diff:.2e} | {prompt_diff:.2e} |")
            report["pairs"][f"{a} vs {b}"] = {"speedup_cpu": by_cpu, "speedup_wall": by_wall,
                                               "max_abs_diff_mean": mean_diff, "max_abs_diff_prompt": prompt_diff}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
