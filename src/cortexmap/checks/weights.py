"""Invariants that tie the head hooks to the weights: the geometry table's facts, ablation and
amplification against the same edit made in the output projection, the projection's linearity
over heads, and each head's output against its own attention weights times values.

Weight edits are made in place on the loaded model and undone from a saved copy of the edited
slice (the model is never copied, so a 7B model needs no second copy of itself).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from cortexmap.checks.inputs import CheckInputs, plain_logits, relative
from cortexmap.checks.report import InvariantResult, measured, unchecked
from cortexmap.heads import HeadId
from cortexmap.interventions import intervene
from cortexmap.interventions.capture import recording
from cortexmap.models.hooks import eager_attention


def sample_heads(handle: Any, per_layer: int = 3) -> list[HeadId]:
    """Heads spread over the first, middle and last layers: the first head, its KV-group neighbour, the last head."""
    group = handle.n_heads // handle.n_kv_heads
    heads = [0, 1 if group > 1 else handle.n_heads // 2, handle.n_heads - 1][:per_layer]
    layers = sorted({0, handle.n_layers // 2, handle.n_layers - 1})
    return [HeadId(layer, head) for layer in layers for head in dict.fromkeys(heads)]


def _width(module: Any, conv1d: bool, axis: str) -> int | None:
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        return None
    rows, cols = weight.shape
    if axis == "out":
        return cols if conv1d else rows
    return rows if conv1d else cols


def geometry_facts(handle: Any, inputs: CheckInputs) -> InvariantResult:
    """The geometry table's facts (layers, heads, KV heads, head dim, sliding windows) match the loaded modules."""
    claim = "the geometry table's facts match the loaded modules"
    geometry, config = handle.geometry, handle.model.config
    n, kv, d = handle.n_heads, handle.n_kv_heads, handle.d_head
    conv = geometry.out_proj_is_conv1d
    wrong: list[str] = []
    compared = 0

    def expect(what: str, found: Any, wanted: Any) -> None:
        nonlocal compared
        if found is None:
            return
        compared += 1
        if found != wanted:
            wrong.append(f"{what} is {found}, the table says {wanted}")

    expect("number of blocks", len(handle.blocks()), handle.n_layers)
    types = getattr(config, "layer_types", None)
    for layer, block in enumerate(handle.blocks()):
        attn = getattr(block, geometry.attn)
        expect(f"L{layer} output projection input width", _width(handle.out_proj(layer), conv, "in"), n * d)
        if geometry.q_proj:
            expect(f"L{layer} query width", _width(getattr(attn, geometry.q_proj, None), conv, "out"), n * d)
            k_name = geometry.block.k_proj if geometry.block else "k_proj"
            expect(f"L{layer} key width (n_kv_heads x d_head)", _width(getattr(attn, k_name, None), conv, "out"), kv * d)
        elif geometry.qkv_fused:
            expect(f"L{layer} fused q/k/v width", _width(getattr(attn, geometry.qkv_fused, None), conv, "out"), 3 * n * d)
        expect(f"L{layer} head_dim attribute", getattr(attn, "head_dim", None), d)
        groups = getattr(attn, "num_key_value_groups", None)
        expect(f"L{layer} query heads per KV head", groups, n // kv)
        if types is not None and layer < len(types):
            sliding = getattr(attn, "sliding_window", None)
            expect(f"L{layer} sliding window ({types[layer]})", sliding is not None,
                   types[layer] == "sliding_attention")
    if n % kv:
        wrong.append(f"{n} query heads do not split into {kv} KV groups")
    detail = "; ".join(wrong[:3]) + (f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else "") if wrong \
        else f"{compared} facts compared"
    return measured("geometry", claim, float(len(wrong)), 0.0, detail)


@contextmanager
def scaled_columns(handle: Any, heads: Sequence[HeadId], factor: float) -> Iterator[None]:
    """Multiply ``heads``' output-projection columns by ``factor`` in place for a ``with`` block, then restore them."""
    saved = []
    d = handle.d_head
    try:
        with torch.no_grad():
            for h in heads:
                weight = handle.out_proj(h.layer).weight
                view = weight[h.head * d:(h.head + 1) * d, :] if handle.geometry.out_proj_is_conv1d \
                    else weight[:, h.head * d:(h.head + 1) * d]
                saved.append((view, view.clone()))
                view.mul_(factor)
        yield
    finally:
        with torch.no_grad():
            for view, copy in saved:
                view.copy_(copy)


def _editable(handle: Any) -> str | None:
    weight = getattr(handle.out_proj(0), "weight", None)
    if weight is None or not weight.is_floating_point() or weight.dim() != 2:
        kind = "absent" if weight is None else f"{weight.dtype}, {tuple(weight.shape)}"
        return f"the output projection's weight ({kind}) is not a dense float matrix (quantized?) and cannot be edited"
    return None


def weight_edit(handle: Any, inputs: CheckInputs, heads: Sequence[HeadId] | None = None) -> InvariantResult:
    """Zero ablation and amplification of sampled heads, and of one whole KV group, equal the same scaling of the
    heads' output-projection columns in the weights; and the ablation moves the logits."""
    claim = "ablating / amplifying a head equals scaling its output-projection columns in the weights"
    why = _editable(handle)
    if why:
        return unchecked("weight_edit", claim, why)
    heads = list(heads) if heads is not None else sample_heads(handle)
    sets = [[h] for h in heads]
    group = handle.n_heads // handle.n_kv_heads
    if group > 1:
        mid = handle.n_layers // 2
        sets.append([HeadId(mid, h) for h in range(group)])  # every query head of KV head 0
    amplified = {heads[0], heads[-1]}  # amplification on two single heads and the KV group; ablation on all
    last = {"logits_to_keep": 1}  # an edit upstream of the last position shows there; the 262k-row unembedding is costly
    plain = plain_logits(handle, inputs.ids, **last)
    worst, where, inert = 0.0, "", []
    for chosen in sets:
        name = "+".join(str(h) for h in chosen)
        edits = [("ablation", 0.0, intervene(handle, ablate=chosen))]
        if len(chosen) > 1 or chosen[0] in amplified:
            edits.append(("amplification by 0.5", 1.5, intervene(handle, amplify={h: 0.5 for h in chosen})))
        for label, factor, context in edits:
            with context:
                hooked = plain_logits(handle, inputs.ids, **last)
            with scaled_columns(handle, chosen, factor):
                edited = plain_logits(handle, inputs.ids, **last)
            deviation = relative(hooked, edited)
            if deviation >= worst:
                worst, where = deviation, f"{label} of {name}"
            if factor == 0.0 and relative(edited, plain) > 10 * inputs.tolerance and relative(hooked, plain) == 0.0:
                inert.append(name)
    if inert:
        return InvariantResult("weight_edit", claim, worst, inputs.tolerance, False,
                               f"ablating {', '.join(inert)} left the logits untouched while the weight edit moved them: "
                               "the intervention hook was not applied")
    return measured("weight_edit", claim, worst, inputs.tolerance, f"{len(sets)} head sets; largest: {where}")


def projection_sum(handle: Any, inputs: CheckInputs) -> InvariantResult:
    """Each layer's attention output equals its heads' outputs, each through its own projection columns, summed with the bias."""
    claim = "heads' outputs, projected one by one and summed with the bias, equal the attention output"
    why = _editable(handle)
    if why:
        return unchecked("projection_sum", claim, why)
    outputs: dict[int, torch.Tensor] = {}
    hooks = [handle.out_proj(layer).register_forward_hook(
        lambda module, args, out, layer=layer: outputs.__setitem__(layer, out[0] if isinstance(out, tuple) else out))
        for layer in range(handle.n_layers)]
    try:
        with recording(handle) as z:
            plain_logits(handle, inputs.ids)
    finally:
        for hook in hooks:
            hook.remove()
    worst, where = 0.0, ""
    for layer in range(handle.n_layers):
        module = handle.out_proj(layer)
        weight = module.weight.t() if handle.geometry.out_proj_is_conv1d else module.weight  # [d_model, n * d]
        per_head = weight.reshape(weight.shape[0], handle.n_heads, handle.d_head).double()
        total = torch.einsum("bshd,mhd->bsm", z[layer].double(), per_head)
        if getattr(module, "bias", None) is not None:
            total = total + module.bias.double()
        deviation = relative(total, outputs[layer])
        if deviation >= worst:
            worst, where = deviation, f"L{layer}"
    return measured("projection_sum", claim, worst, inputs.tolerance, f"largest at {where}")


def head_values(handle: Any, inputs: CheckInputs) -> InvariantResult:
    """Head ``h``'s output (the slice the hooks edit) equals its own attention weights times the values of its
    KV head: the head order and the GQA mapping the tool assumes are the model's."""
    claim = "each head's output slice equals its attention weights times its KV head's values"
    geometry = handle.geometry
    v_name = geometry.block.v_proj if geometry.block else "v_proj"
    if not geometry.q_proj or getattr(handle.attention(0), v_name, None) is None:
        return unchecked("head_values", claim, f"{handle.model_type} has no separate value projection to read values from")
    values: dict[int, torch.Tensor] = {}
    hooks = [getattr(handle.attention(layer), v_name).register_forward_hook(
        lambda module, args, out, layer=layer: values.__setitem__(layer, out)) for layer in range(handle.n_layers)]
    try:
        with torch.no_grad(), eager_attention(handle.model), recording(handle) as z:
            out = handle.model(input_ids=inputs.ids, use_cache=False, output_attentions=True)
    finally:
        for hook in hooks:
            hook.remove()
    worst, where = 0.0, ""
    for layer, weights in enumerate(out.attentions):
        batch, seq = inputs.ids.shape
        v = values[layer].double().view(batch, seq, handle.n_kv_heads, handle.d_head)
        groups = torch.tensor([handle.kv_head(h) for h in range(handle.n_heads)], device=v.device)
        rebuilt = torch.einsum("bhst,bthd->bshd", weights.double(), v[:, :, groups])
        deviation = relative(rebuilt, z[layer])
        if deviation >= worst:
            worst, where = deviation, f"L{layer}"
    return measured("head_values", claim, worst, inputs.tolerance, f"largest at {where}")
