"""Invariants of the sweep engine on the user's model: its exact effects against a plain hooked
loop (one ``intervene`` block per head), and how well the attribution screen's sign follows them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cortexmap.checks.inputs import CheckInputs, plain_logits
from cortexmap.checks.report import InvariantResult, measured
from cortexmap.checks.weights import sample_heads
from cortexmap.interventions import intervene
from cortexmap.tasks.core import EncodedBatch

KINDS = ("patch", "mean", "zero")


def _batches(handle: Any, inputs: CheckInputs) -> list[Any]:
    from cortexmap.sweep.compute import prepare

    batch = EncodedBatch(inputs.ids, inputs.corrupt, inputs.target, inputs.foil, list(range(len(inputs.ids))))
    return prepare(handle, [batch], need_corrupt=True)


def _metric(handle: Any, inputs: CheckInputs) -> np.ndarray:
    last = plain_logits(handle, inputs.ids, logits_to_keep=1)[:, -1].float()
    rows = torch.arange(len(last), device=last.device)
    return (last[rows, inputs.target.to(last.device)] - last[rows, inputs.foil.to(last.device)]).cpu().numpy()


def _scale(handle: Any, inputs: CheckInputs) -> float:
    return float(plain_logits(handle, inputs.ids, logits_to_keep=1)[:, -1].abs().max())


def exact_sweep(handle: Any, inputs: CheckInputs) -> InvariantResult:
    """The exact engine's per-prompt metrics (prefix reuse, heads of several layers per pass) equal one
    ``intervene`` block per head, for patching, mean and zero ablation on sampled heads."""
    from cortexmap.sweep.compute import exact_matrix

    claim = "the exact sweep engine equals a plain hooked loop, head by head"
    sampled = sample_heads(handle)
    heads = list(dict.fromkeys([sampled[0], sampled[1], sampled[len(sampled) // 2], sampled[-1]]))
    batches = _batches(handle, inputs)
    scale = _scale(handle, inputs)
    worst, where = 0.0, ""
    for kind in KINDS:
        engine = exact_matrix(handle, batches, kind, heads=[(h.layer, h.head) for h in heads], rows_per_pass=4)
        for h in heads:
            options: dict[str, Any] = {"patch": {"patch": [h], "source": inputs.corrupt},
                                       "mean": {"mean_ablate": [h], "reference": inputs.ids},
                                       "zero": {"ablate": [h]}}[kind]
            with intervene(handle, **options):
                loop = _metric(handle, inputs)
            deviation = float(np.max(np.abs(engine[:, h.layer * handle.n_heads + h.head] - loop))) / scale
            if not deviation <= worst:
                worst, where = deviation, f"{kind} on {h}"
    return measured("exact_sweep", claim, worst, inputs.tolerance,
                    f"{len(heads)} heads x {', '.join(KINDS)}; largest: {where or 'none'}")


def attribution_sign(handle: Any, inputs: CheckInputs) -> InvariantResult:
    """Where patching a head moves the metric by at least a quarter of the largest move, the attribution
    screen's estimate has the same sign: reported, never failed (it is a property of the model)."""
    from cortexmap.sweep.compute import attribution_matrix, clean_metrics, exact_matrix

    claim = "attribution's sign agrees with exact patching effects where they are large (reported)"
    batches = _batches(handle, inputs)
    clean = clean_metrics(batches)[:, None]
    exact = exact_matrix(handle, batches, "patch") - clean
    estimate = attribution_matrix(handle, batches, "patch") - clean
    large = np.abs(exact) >= 0.25 * np.nanmax(np.abs(exact))
    agree = float(np.mean(np.sign(exact[large]) == np.sign(estimate[large]))) if large.any() else float("nan")
    disagree = 1.0 - agree
    return InvariantResult("attribution_sign", claim, disagree, 0.2, bool(disagree <= 0.2),
                           f"sign agrees on {agree:.0%} of {int(large.sum())} large (prompt, head) effects", gate=False)
