"""The causal test of why the model errs: patch a head from right prompts into wrong ones and see if the answer flips.

For one task, a prompt is wrong when its clean margin (the task's metric: the logit difference
target - foil, or its multi-token / answer-set form) is at most 0. For every candidate head and
every wrong prompt, the head's output at *all* positions is replaced by its output on a right prompt
of the *same template* (``Pair.variant``) and the same token length, and the wrong prompt's margin
is measured again (its own target and foil). Same template keeps the comparison inside one prompt
shape; same length is what position-wise patching needs, so a same-template right prompt of another
length is skipped and counted (``unaligned``). Each wrong prompt gets up to ``max_sources`` such
right prompts (drawn without replacement, seeded by ``seed`` and the task's name).

Controls: for every candidate, ``n_controls`` random heads of the *same layer* (not candidates
themselves where the layer allows) are patched the same way on the same pairs, so a head's flip
rate is judged against what patching an arbitrary head of its depth does.

Rows (:data:`FLIP_ROWS`): ``task, variant, head_id, layer, head, role`` (``candidate`` /
``control``), ``control_of`` (the candidate a control is matched to; a candidate's own id),
``wrong`` and ``source`` (prompt indices into ``task.pairs``, the run's ``prompt`` column),
``aligned`` / ``unaligned`` (same-template right prompts of the wrong prompt's length / of another
length), ``clean`` (the wrong prompt's margin) and ``patched``. A wrong prompt without any aligned
right prompt has one row per head with ``source = -1`` and ``patched`` NaN, so it is counted, not
lost. The statistics are :func:`cortexmap.analysis.mistakes.flip_tests`.

The patched runs use the exact sweep engine (:func:`~cortexmap.sweep.compute.exact_matrix` with the
right prompt as the "corrupt" source of each row), so they inherit its batching and prefix reuse, and
score multi-token answers and answer sets as the map does (the right prompt followed by the wrong
prompt's own answer tokens is the source of a teacher-forced answer position).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from cortexmap.heads import HeadId, as_heads
from cortexmap.sweep.compute import clean_metrics, exact_matrix, prepare
from cortexmap.tasks.core import EncodedBatch, Task, encode_task, prompt_ids

log = logging.getLogger(__name__)

FLIP_ROWS = ["task", "variant", "head_id", "layer", "head", "role", "control_of", "wrong", "source", "aligned",
             "unaligned", "clean", "patched"]


def patched_margins(handle: Any, base: torch.Tensor, source: torch.Tensor, target_ids: torch.Tensor,
                    foil_ids: torch.Tensor, heads: Sequence[tuple[int, int]], *,
                    rows_per_pass: int = 256) -> np.ndarray:
    """Margin of each ``base`` row with one head's output (all positions) taken from the same row of ``source``.

    Args:
        handle: the model handle.
        base: ``[rows, seq]`` token ids run.
        source: ``[rows, seq]`` token ids the head outputs come from (row-aligned with ``base``).
        target_ids: ``[rows]`` each base row's target.
        foil_ids: ``[rows]`` each base row's foil.
        heads: ``(layer, head)`` pairs, one patched at a time.
        rows_per_pass: rows (pairs x heads) per forward pass.

    Returns:
        ``[rows, len(heads)]`` margins target - foil.
    """
    batch = EncodedBatch(input_ids=base, corrupt_ids=source, target_ids=target_ids, foil_ids=foil_ids,
                         indices=list(range(len(base))))
    prepared = prepare(handle, [batch], need_corrupt=True)
    matrix = exact_matrix(handle, prepared, "patch", heads=list(heads), rows_per_pass=rows_per_pass)
    return matrix[:, [layer * handle.n_heads + head for layer, head in heads]]


def layer_controls(heads: Sequence[HeadId], n_heads: int, n_controls: int,
                   rng: np.random.Generator) -> dict[HeadId, list[HeadId]]:
    """Per candidate, ``n_controls`` random other heads of its layer, non-candidates first."""
    taken = set(heads)
    out = {}
    for h in heads:
        others = [HeadId(h.layer, j) for j in range(n_heads) if j != h.head]
        free = [o for o in others if o not in taken]
        pool = free if len(free) >= n_controls else others
        pick = rng.choice(len(pool), size=min(n_controls, len(pool)), replace=False) if pool else []
        out[h] = [pool[int(i)] for i in sorted(pick)]
    return out


def measure_flips(handle: Any, task: Task, heads: Sequence[Any], *, max_sources: int = 4, n_controls: int = 1,
                  seed: int = 0, max_batch: int = 64, rows_per_pass: int = 256,
                  note: Callable[[str], None] = lambda m: None) -> pd.DataFrame:
    """Patch each candidate head (and its layer-matched controls) from right into wrong prompts of one task.

    Args:
        handle: the model handle the task was built for.
        task: the task (its pairs' ``variant`` is the template; 0 when a pair has none).
        heads: candidate heads (``HeadId``, ``"L3H5"`` or ``(layer, head)``).
        max_sources: right prompts patched into each wrong prompt, at most.
        n_controls: random heads of the same layer per candidate.
        seed: seed of the source and control draws (combined with the task's name).
        max_batch: prompts per clean batch.
        rows_per_pass: rows per patched forward pass.
        note: progress messages.

    Returns:
        :data:`FLIP_ROWS` rows (module docstring); empty when the task has no wrong prompt or no head.
    """
    candidates = [handle.head(h) for h in as_heads(list(heads))]
    rng = np.random.default_rng(seed + zlib.crc32(task.name.encode()) % 100_000)
    clean = clean_metrics(prepare(handle, encode_task(task, handle.tokenizer, max_batch=max_batch), need_corrupt=False))
    variant = np.array([int(getattr(p, "variant", 0)) for p in task.pairs])
    length = np.array([len(prompt_ids(handle.tokenizer, p.prompt)) for p in task.pairs])
    right = clean > 0
    pairs, info = [], []  # (wrong, source); per wrong prompt (wrong, aligned, unaligned)
    for w in np.flatnonzero(~right):
        same = np.flatnonzero(right & (variant == variant[w]))
        aligned = same[length[same] == length[w]]
        info.append((int(w), len(aligned), len(same) - len(aligned)))
        if len(aligned):
            chosen = np.sort(rng.choice(aligned, size=min(max_sources, len(aligned)), replace=False))
            pairs += [(int(w), int(s)) for s in chosen]
    controls = layer_controls(candidates, handle.n_heads, n_controls, rng)
    measured = sorted({(h.layer, h.head) for h in candidates}
                      | {(c.layer, c.head) for cs in controls.values() for c in cs})
    if not info or not candidates:
        return pd.DataFrame(columns=FLIP_ROWS)
    n_heads, n_controls = len(candidates), len(measured) - len(candidates)
    note(f"{task.name}: patching {n_heads} head{'s' * (n_heads != 1)} and {n_controls} "
         f"control{'s' * (n_controls != 1)} into {len(info)} wrong prompt{'s' * (len(info) != 1)} "
         f"({len(pairs)} pairs)")
    patched = np.empty((len(pairs), len(measured)))
    if pairs:  # each wrong prompt patched from a right one: a task whose corrupt prompts are the right prompts
        sourced = replace(task, pairs=[replace(task.pairs[w], corrupt=task.pairs[s].prompt) for w, s in pairs])
        batches = prepare(handle, encode_task(sourced, handle.tokenizer, max_batch=max_batch), need_corrupt=True)
        matrix = exact_matrix(handle, batches, "patch", heads=measured, rows_per_pass=rows_per_pass)
        patched = matrix[:, [layer * handle.n_heads + head for layer, head in measured]]
    col = {h: j for j, h in enumerate(measured)}
    counts = {w: (a, u) for w, a, u in info}
    roles = [(h, "candidate", h) for h in candidates] + [(c, "control", h) for h in candidates for c in controls[h]]
    frames = []
    for head, role, of in roles:
        done = [(w, s, patched[k, col[(head.layer, head.head)]]) for k, (w, s) in enumerate(pairs)]
        done += [(w, -1, np.nan) for w, a, _ in info if a == 0]
        w_, s_, p_ = (list(x) for x in zip(*done)) if done else ([], [], [])
        frames.append(pd.DataFrame({
            "task": task.name, "variant": variant[w_].astype(int), "head_id": str(head), "layer": head.layer,
            "head": head.head, "role": role, "control_of": str(of), "wrong": np.asarray(w_, dtype=int),
            "source": np.asarray(s_, dtype=int), "aligned": [counts[w][0] for w in w_],
            "unaligned": [counts[w][1] for w in w_], "clean": clean[w_].astype(float),
            "patched": np.asarray(p_, dtype=float)}))
    out = pd.concat(frames, ignore_index=True)[FLIP_ROWS]
    return out.sort_values(["role", "control_of", "head_id", "wrong", "source"], ignore_index=True)


def measure_error_flips(results: Any, handle: Any, candidates: Mapping[str, Sequence[Any]], *, max_sources: int = 4,
                        n_controls: int = 1, seed: int = 0,
                        note: Callable[[str], None] = lambda m: None) -> pd.DataFrame:
    """:func:`measure_flips` for each task of a run with candidates, tasks rebuilt as the run built them.

    Args:
        results: the loaded run (its manifest's ``n_prompts`` and ``seed`` rebuild each task, so
            prompt indices match the run's ``prompt`` column).
        handle: the model the run mapped.
        candidates: task -> heads (:func:`cortexmap.analysis.mistakes.flip_candidates`).
        max_sources, n_controls, seed, note: as in :func:`measure_flips`.

    Returns:
        Every task's rows, concatenated (:data:`FLIP_ROWS`); user tasks from files are skipped.
    """
    from cortexmap.tasks import build_task

    args = results.manifest["arguments"]
    frames = []
    for name, heads in candidates.items():
        if not heads or name not in results.manifest.get("tasks", {}):
            continue
        try:
            task = build_task(name, handle.tokenizer, n=int(args["n_prompts"]), seed=int(args["seed"]))
        except Exception:  # noqa: BLE001 - user tasks from files are not rebuilt here
            log.info("flip test: task %s is not a built-in task; skipped", name)
            continue
        frames.append(measure_flips(handle, task, heads, max_sources=max_sources, n_controls=n_controls, seed=seed,
                                    note=note))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FLIP_ROWS)
