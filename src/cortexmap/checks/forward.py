"""Invariants of whole forward passes: hooks that change nothing, identity interventions,
batching and padding, and the attention implementation.

Each function takes the model handle and the :class:`~cortexmap.checks.inputs.CheckInputs` and
returns an :class:`~cortexmap.checks.report.InvariantResult`.
"""

from __future__ import annotations

from typing import Any

import torch

from cortexmap.checks.inputs import CheckInputs, plain_logits, relative
from cortexmap.checks.report import InvariantResult, measured, unchecked
from cortexmap.interventions import intervene
from cortexmap.models.hooks import eager_attention, head_hooks


def hooks_noop(handle: Any, inputs: CheckInputs) -> InvariantResult:
    """Head hooks on every layer that read, or hand back what they got, leave the logits bit-identical."""
    claim = "hooks installed, nothing intervened: logits equal the plain forward bit for bit"
    plain = plain_logits(handle, inputs.ids)
    layers = range(handle.n_layers)
    with head_hooks(handle, {layer: (lambda z: None) for layer in layers}):
        reading = plain_logits(handle, inputs.ids)
    with head_hooks(handle, {layer: (lambda z: z) for layer in layers}):
        passing = plain_logits(handle, inputs.ids)
    deviations = {"reading hooks": relative(reading, plain), "pass-through hooks": relative(passing, plain)}
    worst = max(deviations, key=deviations.get)
    return measured("hooks_noop", claim, deviations[worst], 0.0, f"largest with {worst}")


def identity_interventions(handle: Any, inputs: CheckInputs) -> InvariantResult:
    """No head ablated, every head amplified by 0, and every head patched from its own prompt change nothing."""
    claim = "identity interventions (ablate none, amplify by 0, patch a prompt into itself) change nothing"
    plain = plain_logits(handle, inputs.ids)
    every = handle.heads()
    deviations = {}
    with intervene(handle, ablate=[]):
        deviations["ablate none"] = relative(plain_logits(handle, inputs.ids), plain)
    with intervene(handle, amplify={h: 0.0 for h in every}):
        deviations["amplify every head by 0"] = relative(plain_logits(handle, inputs.ids), plain)
    with intervene(handle, patch=every, source=inputs.ids):
        deviations["patch every head from its own prompt"] = relative(plain_logits(handle, inputs.ids), plain)
    worst = max(deviations, key=deviations.get)
    return measured("identity", claim, deviations[worst], inputs.tolerance, f"largest: {worst}")


def batch_vs_single(handle: Any, inputs: CheckInputs) -> InvariantResult:
    """A batch's logits equal its prompts run one at a time."""
    claim = "a batch equals its prompts run one at a time"
    batch = plain_logits(handle, inputs.ids)
    deviation = max(relative(batch[i:i + 1], plain_logits(handle, inputs.ids[i:i + 1])) for i in range(len(batch)))
    return measured("batching", claim, deviation, inputs.tolerance)


def _padded(ids: torch.Tensor, pad: int, side: str, value: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ids`` with ``pad`` pad tokens on every other row's ``side``: ids, attention mask, position ids."""
    rows, seq = ids.shape
    width = seq + pad
    out = torch.full((rows, width), value, dtype=ids.dtype, device=ids.device)
    mask = torch.zeros(rows, width, dtype=torch.long, device=ids.device)
    for r in range(rows):
        start = pad if (side == "left" and r % 2 == 0) else 0
        out[r, start:start + seq] = ids[r]
        mask[r, start:start + seq] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return out, mask, positions


def padding(handle: Any, inputs: CheckInputs) -> InvariantResult:
    """Left and right padding, with the attention mask and position ids a padded batch needs, change no real token's logits.

    Checked plainly and with one head ablated (the intervention hooks see the padded batch).
    """
    claim = "left and right padding (attention mask, position ids) change no real token's logits"
    tokenizer = handle.tokenizer
    value = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    value = 0 if value is None else int(value)
    ids, pad = inputs.ids, 3
    head = handle.heads()[len(handle.heads()) // 2]
    worst, where = 0.0, ""
    for ablated in (False, True):
        context = intervene(handle, ablate=[head] if ablated else [])
        with context:
            alone = plain_logits(handle, ids)
            for side in ("left", "right"):
                padded, mask, positions = _padded(ids, pad, side, value)
                logits = plain_logits(handle, padded, attention_mask=mask, position_ids=positions)
                real = logits[mask.bool()].view(ids.shape[0], ids.shape[1], -1)
                deviation = relative(real, alone)
                if deviation >= worst:
                    worst, where = deviation, f"{side} padding" + (f", {head} ablated" if ablated else "")
    return measured("padding", claim, worst, inputs.tolerance, f"largest with {where}")


def attention_implementations(handle: Any, inputs: CheckInputs) -> InvariantResult:
    """Eager attention (what probes read weights from) and the model's default implementation agree."""
    claim = "eager attention and the default implementation give the same logits"
    model = handle.model
    default = getattr(model.config, "_attn_implementation", None) or "sdpa"
    other = default if default != "eager" else "sdpa"
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation(other)
    except (ValueError, ImportError) as exc:
        return unchecked("attention_impl", claim, f"{other} attention unavailable: {str(exc).splitlines()[0][:120]}")
    try:
        fast = plain_logits(handle, inputs.ids)
    finally:
        if previous is not None:  # unset: transformers' default, which is what ``other`` is
            model.set_attn_implementation(previous)
    with eager_attention(model):
        eager = plain_logits(handle, inputs.ids)
    return measured("attention_impl", claim, relative(fast, eager), inputs.tolerance, f"eager vs {other}")


def attention_rows(handle: Any, inputs: CheckInputs) -> InvariantResult:
    """Every head's attention row (what probes and evidence read) is a distribution: one ``[batch, n_heads, seq, seq]`` map per layer, rows summing to 1."""
    claim = "probe attention: one map per layer of n_heads rows each summing to 1"
    with torch.no_grad(), eager_attention(handle.model):
        out = handle.model(input_ids=inputs.ids, use_cache=False, output_attentions=True)
    maps = [a for a in (out.attentions or ()) if a is not None]
    seq = inputs.ids.shape[1]
    expected = (inputs.ids.shape[0], handle.n_heads, seq, seq)
    if len(maps) != handle.n_layers or any(tuple(a.shape) != expected for a in maps):
        shapes = sorted({tuple(a.shape) for a in maps})
        return InvariantResult("attention_rows", claim, float("inf"), 0.0, False,
                               f"{len(maps)} maps of shapes {shapes}, expected {handle.n_layers} of {expected}")
    deviation = max(float((a.double().sum(-1) - 1).abs().max()) for a in maps)
    return measured("attention_rows", claim, deviation, max(inputs.tolerance, 1e-6), "largest |row sum - 1|")
